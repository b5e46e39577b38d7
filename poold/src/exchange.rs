//! One request's exchange with a handler, on the host side: what the ABI's host functions do,
//! in safe Rust, with the response rules enforced (one head, before the body; no byte past a
//! declared `Content-Length`; a response at all).
//!
//! [`crate::host`] is the `extern "C"` table over this; the worker loop makes an `Exchange` per
//! request and turns its [`Outcome`] into a completed, streamed or failed slot.

use crate::wakers::{self, RequestWake};
use ngx_pool_channel::incoming::{BodyIn, Notify};
use ngx_pool_channel::message::{
    check_header, encode_response_head_iter, set_announced_length, Header, RequestView,
    UNKNOWN_LENGTH,
};
use ngx_pool_channel::slot::FailReason;
use ngx_pool_channel::{Region, SlotId};
use std::cell::OnceCell;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

// The ABI's open body is the channel's: nginx writes one, handlers read the other.
const _: () = assert!(ngx_pool_abi::NGX_POOL_BODY_OPEN == ngx_pool_channel::message::OPEN_BODY);

/// The request body as an exchange reads it: a `Read`, and a wait that another thread can end
/// (the channel's [`BodyIn`]).
pub trait BodySource: Read {
    /// See [`BodyIn::read_wait`].
    fn read_wait(
        &mut self,
        out: &mut [u8],
        limit: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> io::Result<Option<usize>>;
}

impl<N: Notify> BodySource for BodyIn<'_, N> {
    fn read_wait(
        &mut self,
        out: &mut [u8],
        limit: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> io::Result<Option<usize>> {
        BodyIn::read_wait(self, out, limit, interrupted)
    }
}

/// Responses up to this size are sent in one piece when the handler returns; past it (or at
/// `flush`) the head goes out and the body streams as the handler writes it.
pub const STREAM_AFTER: usize = 64 << 10;

/// Where a response goes once it streams (the worker's response stream in the region).
pub trait ResponseSink {
    /// Sends the encoded head; `declared` is the body length it announces, if any.
    fn start(&mut self, head: &[u8], declared: Option<u64>) -> io::Result<()>;
    /// Sends body bytes, waiting while the client (through nginx) is not keeping up.
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
}

/// Text for the default parameters that the request head does not hold as such (the protocol
/// and the two ports as decimal), made on first use: kept by the caller for the exchange's
/// life, since the parameters borrow from it.
#[derive(Default)]
pub struct DefaultsText {
    text: OnceCell<Texts>,
}

struct Texts {
    /// `HTTP/1.1`.
    protocol: [u8; 8],
    server_port: Decimal,
    client_port: Decimal,
}

/// A port as decimal text.
struct Decimal {
    digits: [u8; 5],
    len: usize,
}

impl Decimal {
    fn new(mut n: u16) -> Decimal {
        let mut digits = [0u8; 5];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        digits.copy_within(at.., 0);
        Decimal {
            digits,
            len: 5 - at,
        }
    }
    fn text(&self) -> &[u8] {
        &self.digits[..self.len]
    }
}

/// The default parameter set, in the order the ABI documents.
const DEFAULT_NAMES: [&[u8]; 9] = [
    b"SERVER_NAME",
    b"SERVER_PORT",
    b"SERVER_PROTOCOL",
    b"REQUEST_SCHEME",
    b"REMOTE_ADDR",
    b"REMOTE_PORT",
    b"DOCUMENT_URI",
    b"SCRIPT_NAME",
    b"SERVER_ADDR",
];

pub use ngx_pool_abi::HostStatus as Status;

/// How the request ended, for the worker to deliver.
#[derive(Debug)]
pub enum Outcome {
    /// Buffered whole: `head` (its length announced) and `body` go out in one piece.
    Whole,
    /// Streamed, and all of it has been sent.
    Streamed,
    /// Failed: the slot fails with this reason; the message (if any) goes to the error log.
    Failed(FailReason, Option<String>),
}

/// The request as the handler sees it, and the response it is building.
pub struct Exchange<'a> {
    pub view: RequestView<'a>,
    /// The default set and the location's `pool_param`s, made on first use (a malformed list
    /// of `pool_param`s reads as none).
    params: OnceCell<Vec<Header<'a>>>,
    defaults: &'a DefaultsText,
    /// `uri` without the query string, and the query string.
    path: &'a [u8],
    query: &'a [u8],
    body_len: u64,
    input: &'a mut dyn BodySource,
    cancelled: &'a dyn Fn() -> bool,
    sink: &'a mut dyn ResponseSink,
    /// The request's slot, for wake-ups from other threads ([`crate::wakers`]); none for a
    /// fan-out task.
    slot: Option<(&'a Region, SlotId)>,
    /// Made on the first `read_wait`, `waker` or `closing`.
    wake: OnceCell<Arc<RequestWake>>,
    /// The response head, encoded at `start` (its announced length set when known).
    pub head: &'a mut Vec<u8>,
    /// Body bytes not yet sent.
    pub body: &'a mut Vec<u8>,
    started: bool,
    streaming: bool,
    declared: Option<u64>,
    /// Body bytes the handler wrote, buffered or sent.
    written: u64,
    /// The first rule the handler broke in a way that spoils the response (bytes dropped, a
    /// second head refused after the first was sent): the request fails even if it returns OK.
    violation: Option<String>,
    /// The last call refused for an invalid argument: only an error value (the handler may
    /// retry correctly), named in the log if the request then fails.
    refused: Option<String>,
    /// The channel failed under a write (not the handler's doing).
    channel_error: Option<String>,
}

impl<'a> Exchange<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        view: RequestView<'a>,
        defaults: &'a DefaultsText,
        body_len: u64,
        input: &'a mut dyn BodySource,
        cancelled: &'a dyn Fn() -> bool,
        sink: &'a mut dyn ResponseSink,
        head: &'a mut Vec<u8>,
        body: &'a mut Vec<u8>,
    ) -> Exchange<'a> {
        let uri = view.uri;
        let (path, query) = match uri.iter().position(|b| *b == b'?') {
            Some(q) => (&uri[..q], &uri[q + 1..]),
            None => (uri, &uri[uri.len()..]),
        };
        head.clear();
        body.clear();
        Exchange {
            view,
            params: OnceCell::new(),
            defaults,
            path,
            query,
            body_len,
            input,
            cancelled,
            sink,
            slot: None,
            wake: OnceCell::new(),
            head,
            body,
            started: false,
            streaming: false,
            declared: None,
            written: 0,
            violation: None,
            refused: None,
            channel_error: None,
        }
    }

    pub fn path(&self) -> &'a [u8] {
        self.path
    }
    pub fn query(&self) -> &'a [u8] {
        self.query
    }
    pub fn body_len(&self) -> u64 {
        self.body_len
    }
    pub fn is_cancelled(&self) -> bool {
        (self.cancelled)()
    }

    /// The first header named `name`, case-insensitively.
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.view
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
    /// The per-request parameters: the default set, each replaced by a `pool_param` of the
    /// same name, then the other `pool_param`s.
    pub fn params(&self) -> &[Header<'a>] {
        self.params.get_or_init(|| {
            let v = &self.view;
            let t = self.defaults.text.get_or_init(|| {
                let mut protocol = *b"HTTP/0.0";
                protocol[5] = b'0' + v.version.0 % 10;
                protocol[7] = b'0' + v.version.1 % 10;
                Texts {
                    protocol,
                    server_port: Decimal::new(v.server.port),
                    client_port: Decimal::new(v.client_port),
                }
            });
            let scheme: &[u8] = if v.server.https { b"https" } else { b"http" };
            let values: [&'a [u8]; 9] = [
                v.server.name,
                t.server_port.text(),
                &t.protocol,
                scheme,
                v.client,
                t.client_port.text(),
                v.server.document_uri,
                b"",
                v.server.addr,
            ];
            let mut list: Vec<Header<'a>> = DEFAULT_NAMES.into_iter().zip(values).collect();
            for (name, value) in v.decode_params().unwrap_or_default() {
                match list[..DEFAULT_NAMES.len()]
                    .iter_mut()
                    .find(|(n, _)| *n == name)
                {
                    Some(default) => default.1 = value,
                    None => list.push((name, value)),
                }
            }
            list
        })
    }
    /// The parameter named `name`, exactly.
    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.params()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// Request `id` in `region` is what this exchange runs (wake-ups reach it there).
    pub fn set_slot(&mut self, region: &'a Region, id: SlotId) {
        self.slot = Some((region, id));
    }

    fn wake_state(&self) -> Option<&Arc<RequestWake>> {
        let (region, id) = self.slot?;
        Some(
            self.wake
                .get_or_init(|| Arc::new(RequestWake::new(region, id))),
        )
    }

    /// A token for [`wakers::wake`] (0 for a fan-out task, which cannot be woken).
    pub fn waker(&self) -> u64 {
        self.wake_state().map_or(0, wakers::token)
    }

    /// Why the request should end now (0: it need not).
    pub fn closing(&self) -> u32 {
        self.wake_state().map_or(0, |w| w.closing())
    }

    /// Reads body bytes, waiting at most `limit`: `Ok(None)` when none came (the limit passed,
    /// a wake-up, a new closing code).
    pub fn read_wait(
        &mut self,
        buf: &mut [u8],
        limit: Option<Duration>,
    ) -> Result<Option<usize>, Status> {
        let wake = self.wake_state().cloned();
        let interrupted = || wake.as_ref().is_some_and(|w| w.interrupted());
        let got = self.input.read_wait(buf, limit, &interrupted);
        match got {
            Ok(None) => {
                if let Some(w) = &wake {
                    w.take();
                }
                Ok(None)
            }
            Ok(n) => Ok(n),
            Err(_) if self.is_cancelled() => Err(Status::Gone),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Status::Gone),
            Err(_) => Err(Status::Io),
        }
    }

    /// Reads body bytes: the count, 0 at the end.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Status> {
        match self.input.read(buf) {
            Ok(n) => Ok(n),
            Err(_) if self.is_cancelled() => Err(Status::Gone),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Status::Gone),
            Err(_) => Err(Status::Io),
        }
    }

    fn broke(&mut self, rule: String, status: Status) -> Status {
        if self.violation.is_none() {
            self.violation = Some(rule);
        }
        status
    }

    fn refuse(&mut self, what: String) -> Status {
        self.refused = Some(what);
        Status::Invalid
    }

    /// Sets status and headers (once, before any body). `headers` is walked twice (checked,
    /// then encoded), so nothing is collected.
    pub fn start<'h, I>(&mut self, status: u16, headers: I) -> Result<(), Status>
    where
        I: ExactSizeIterator<Item = (&'h [u8], &'h [u8])> + Clone,
    {
        if self.started {
            let e = Status::State;
            return Err(self.broke("started its response twice".into(), e));
        }
        if !(100..=999).contains(&status) {
            return Err(self.refuse(format!("gave the status {status}")));
        }
        let mut declared = None;
        for (name, value) in headers.clone() {
            if check_header(name, value).is_err() {
                let what = format!(
                    "gave the header \"{}\" a name or value HTTP does not allow",
                    String::from_utf8_lossy(name).escape_debug()
                );
                return Err(self.refuse(what));
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                match std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    Some(n) => declared = Some(n),
                    None => return Err(self.refuse("gave an invalid Content-Length".into())),
                }
            }
        }
        self.head.clear();
        if encode_response_head_iter(&mut *self.head, status, headers, 0).is_err() {
            return Err(self.refuse("gave a header too long to send".into()));
        }
        self.started = true;
        self.declared = declared;
        Ok(())
    }

    fn sink_error(&mut self, e: io::Error) -> Status {
        if self.is_cancelled() || e.kind() == io::ErrorKind::BrokenPipe {
            return Status::Gone;
        }
        if self.channel_error.is_none() {
            self.channel_error = Some(e.to_string());
        }
        Status::Io
    }

    /// Sends the head and the buffered body, and streams from then on.
    fn start_streaming(&mut self) -> Result<(), Status> {
        if !self.streaming {
            set_announced_length(self.head, self.declared.unwrap_or(UNKNOWN_LENGTH));
            if let Err(e) = self.sink.start(self.head, self.declared) {
                return Err(self.sink_error(e));
            }
            self.streaming = true;
        }
        if !self.body.is_empty() {
            let res = self.sink.write(self.body);
            self.body.clear();
            res.map_err(|e| self.sink_error(e))?;
        }
        Ok(())
    }

    /// Appends body bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Status> {
        if !self.started {
            let e = Status::State;
            return Err(self.broke("wrote its body before starting the response".into(), e));
        }
        if let Some(d) = self.declared {
            if self.written + data.len() as u64 > d {
                let e = Status::TooLarge;
                let what = format!("wrote past its Content-Length of {d}");
                return Err(self.broke(what, e));
            }
        }
        self.written += data.len() as u64;
        if self.streaming {
            return self.sink.write(data).map_err(|e| self.sink_error(e));
        }
        self.body.extend_from_slice(data);
        if self.body.len() > STREAM_AFTER {
            self.start_streaming()?;
        }
        Ok(())
    }

    /// Sends what there is now.
    pub fn flush(&mut self) -> Result<(), Status> {
        if !self.started {
            let e = Status::State;
            return Err(self.broke("flushed before starting the response".into(), e));
        }
        self.start_streaming()
    }

    /// The handler returned `rc`: how the request ends. `handler` names it in log lines.
    pub fn conclude(&mut self, rc: i32, handler: &str) -> Outcome {
        // Only the failure lines below name it: built there, never on the common path.
        let view_uri = self.view.uri;
        let uri = || String::from_utf8_lossy(view_uri);
        if let Some(e) = self.channel_error.take() {
            return Outcome::Failed(
                FailReason::Undelivered,
                Some(format!("response to \"{}\" not delivered: {e}", uri())),
            );
        }
        if self.is_cancelled() {
            // nginx stopped waiting (client gone, deadline): nothing to deliver, nothing to say.
            return Outcome::Failed(FailReason::Other, None);
        }
        let cut = if self.streaming {
            "the response is cut short"
        } else {
            "502"
        };
        if rc == Status::Timeout.raw() && !self.streaming {
            // The handler ended the request at its deadline itself (an ASGI worker cancels the
            // app's task and goes on serving): 504, as when poold stops a worker for it.
            return Outcome::Failed(
                FailReason::Timeout,
                Some(format!(
                    "handler \"{handler}\" stopped \"{}\" at its deadline; 504",
                    uri()
                )),
            );
        }
        if rc != Status::Ok.raw() {
            let broke = self
                .violation
                .take()
                .or_else(|| self.refused.take())
                .map(|v| format!(" (it {v})"))
                .unwrap_or_default();
            let cut = if self.streaming { cut } else { "500" };
            return Outcome::Failed(
                FailReason::HandlerError,
                Some(format!(
                    "handler \"{handler}\" failed on \"{}\" with status {rc}{broke}; {cut}",
                    uri()
                )),
            );
        }
        // A refused call the handler went on after still leaves a response it did not mean.
        if let Some(v) = self.violation.take() {
            return Outcome::Failed(
                FailReason::BadResponse,
                Some(format!("handler \"{handler}\" {v} on \"{}\"; {cut}", uri())),
            );
        }
        if !self.started {
            let refused = self
                .refused
                .take()
                .map(|v| format!(" (it {v})"))
                .unwrap_or_default();
            return Outcome::Failed(
                FailReason::BadResponse,
                Some(format!(
                    "handler \"{handler}\" returned without a response to \"{}\"{refused}; 502",
                    uri()
                )),
            );
        }
        let head_only = self.view.method == b"HEAD";
        if let Some(d) = self.declared {
            if self.written != d && !(head_only && self.written == 0) {
                return Outcome::Failed(
                    FailReason::BadResponse,
                    Some(format!(
                        "handler \"{handler}\" declared a Content-Length of {d} for \"{}\" and wrote {} bytes; {cut}",
                        uri(),
                        self.written
                    )),
                );
            }
        }
        if self.streaming {
            return Outcome::Streamed;
        }
        // A HEAD answer announces the length the GET would have (RFC 9110 9.3.2), not its own.
        let announced = match self.declared {
            Some(d) if head_only => d,
            _ => self.body.len() as u64,
        };
        set_announced_length(self.head, announced);
        Outcome::Whole
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        // The request's tokens do nothing once it has ended.
        if let Some(w) = self.wake.get() {
            wakers::forget(w);
        }
    }
}
