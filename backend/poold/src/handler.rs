//! The handler interface: a borrowed view of the request, its body as a stream, and a
//! response writer that streams large bodies.
//!
//! Built-in handlers use exactly this interface; it is what a user's handler implements.

use ngx_pool_channel::message::RequestView;
use std::cell::{OnceCell, RefCell};
use std::io::{self, Read, Write};

/// Where a request's body comes from: the worker's request stream (or memory, in tests).
pub type BodySource<'a> = &'a mut dyn Read;

/// Where a response goes once it is too large to buffer or the handler flushes it.
pub trait ResponseSink {
    /// Sends the head; `declared` is the body length if the handler announced one.
    fn start(
        &mut self,
        status: u16,
        headers: &[(Vec<u8>, Vec<u8>)],
        declared: Option<u64>,
    ) -> io::Result<()>;
    /// Sends body bytes, waiting while the client (through nginx) is not keeping up.
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
}

/// A request as the handler sees it: the head borrowed from the worker's buffer, the body
/// read on demand from shared memory.
pub struct Request<'a> {
    view: RequestView<'a>,
    body_len: u64,
    cancelled: &'a dyn Fn() -> bool,
    source: RefCell<BodySource<'a>>,
    whole: OnceCell<Vec<u8>>,
}

impl<'a> Request<'a> {
    /// A request with a `body_len`-byte body read from `source`, whose cancellation
    /// `cancelled` reports (the worker passes a look at the slot).
    pub fn new(
        view: RequestView<'a>,
        body_len: u64,
        source: BodySource<'a>,
        cancelled: &'a dyn Fn() -> bool,
    ) -> Self {
        Request {
            view,
            body_len,
            cancelled,
            source: RefCell::new(source),
            whole: OnceCell::new(),
        }
    }
    /// True once nginx no longer wants the answer: the client went away, or the deadline
    /// passed. A long handler may check it and stop early; whatever it returns is dropped.
    pub fn is_cancelled(&self) -> bool {
        (self.cancelled)()
    }
    /// The method, as sent (`GET`, `POST`, ...).
    pub fn method(&self) -> &'a str {
        std::str::from_utf8(self.view.method).unwrap_or("")
    }
    /// The request target with its arguments, as sent (`/path?a=b`).
    pub fn uri(&self) -> &'a str {
        std::str::from_utf8(self.view.uri).unwrap_or("")
    }
    /// The URI without the query string.
    pub fn path(&self) -> &'a str {
        self.uri().split('?').next().unwrap_or("")
    }
    /// The query string, without `?`.
    pub fn query(&self) -> &'a str {
        self.uri().split_once('?').map_or("", |(_, q)| q)
    }
    /// The first value of query argument `name` (not percent-decoded).
    pub fn arg(&self, name: &str) -> Option<&'a str> {
        self.query()
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
    /// HTTP version as (major, minor).
    pub fn version(&self) -> (u8, u8) {
        self.view.version
    }
    /// The client's address as nginx saw it.
    pub fn client(&self) -> &'a str {
        std::str::from_utf8(self.view.client).unwrap_or("")
    }
    /// Every header in arrival order, repeated ones included.
    pub fn headers(&self) -> &[(&'a [u8], &'a [u8])] {
        &self.view.headers
    }
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.view
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| *v)
    }
    /// Length of the request body in bytes.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }
    /// The body as a stream, read from shared memory as nginx delivers it: a body of any size
    /// in constant memory. Reading fails if the request is cancelled meanwhile.
    pub fn body_reader(&self) -> BodyReader<'_, 'a> {
        BodyReader { req: self }
    }
    /// The whole body (what `body_reader` has not consumed), read into memory on first call.
    /// Convenient for small bodies; use [`body_reader`](Self::body_reader) for large ones.
    pub fn body(&self) -> &[u8] {
        self.whole.get_or_init(|| {
            let mut v = Vec::new();
            let _ = self.body_reader().read_to_end(&mut v);
            v
        })
    }
}

/// A reader over a request's body; see [`Request::body_reader`].
pub struct BodyReader<'r, 'a> {
    req: &'r Request<'a>,
}

impl Read for BodyReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.req.source.borrow_mut().read(buf)
    }
}

/// Responses up to this size are sent in one piece when the handler returns; past it (or at
/// `flush`) the head goes out and the body streams as the handler writes it.
pub const STREAM_AFTER: usize = 64 << 10;

/// The response a handler builds: status, headers (repeatable) and a body it writes to.
///
/// Writes are buffered in `body`; once it passes [`STREAM_AFTER`] bytes, or the handler calls
/// `flush`, the status and headers are sent and from then on every write goes to the client
/// (a `Content-Length` header set before that is announced; otherwise nginx sends it chunked).
/// Headers and status cannot change after that. A write fails once the client is gone.
pub struct Response<'a> {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body bytes not yet sent.
    pub body: Vec<u8>,
    sink: Option<&'a mut dyn ResponseSink>,
    streaming: bool,
}

impl Default for Response<'_> {
    fn default() -> Self {
        Response {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
            sink: None,
            streaming: false,
        }
    }
}

impl<'a> Response<'a> {
    /// A response that streams to `sink` when it grows large (the worker's).
    pub fn streaming_to(sink: &'a mut dyn ResponseSink) -> Self {
        Response {
            sink: Some(sink),
            ..Response::default()
        }
    }
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }
    pub fn add_header(&mut self, name: &str, value: &str) {
        self.headers
            .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    /// True once the head has been sent and the body streams.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }
    /// The body length announced by a `Content-Length` header, if the handler set one.
    pub fn declared_length(&self) -> Option<u64> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
    }
    /// Sends the head and what is buffered, and switches to streaming (no-op without a sink).
    fn start_streaming(&mut self) -> io::Result<()> {
        let declared = self.declared_length();
        let Some(sink) = self.sink.as_deref_mut() else {
            return Ok(());
        };
        if !self.streaming {
            sink.start(self.status, &self.headers, declared)?;
            self.streaming = true;
        }
        if !self.body.is_empty() {
            sink.write(&self.body)?;
            self.body.clear();
        }
        Ok(())
    }
    /// For the worker when the handler returned: true if the response streamed (and all of it
    /// has been sent), false if it is buffered whole in `status`, `headers` and `body`.
    pub fn conclude(&mut self) -> io::Result<bool> {
        if self.streaming || self.body.len() > STREAM_AFTER {
            self.start_streaming()?;
        }
        Ok(self.streaming)
    }
}

impl Write for Response<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.streaming {
            self.sink.as_deref_mut().map_or(Ok(()), |s| s.write(buf))?;
        } else {
            self.body.extend_from_slice(buf);
            if self.body.len() > STREAM_AFTER {
                self.start_streaming()?;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.start_streaming()
    }
}

/// Application code run by pool workers. Loaded once in poold, before it forks.
pub trait Handler: Send + Sync {
    /// Runs once in each pool worker after it is forked, before it takes requests (open
    /// per-process resources here, as with Gunicorn's `post_fork`).
    fn worker_init(&self) {}
    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>);
}
