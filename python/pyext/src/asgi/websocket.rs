//! A WebSocket on its lane: the handshake answered as the app decides (101, a refusal, or an
//! HTTP response of its own), then frames both ways until either side closes.
//!
//! nginx tunnels the upgraded connection's bytes through the request's streams
//! (`ngx-module/src/request/tunnel.rs`); frames are parsed here, in the pool's unprivileged
//! process, by tungstenite (the protocol's rules: masking, fragmentation, control frames,
//! UTF-8, size limits, the close handshake) over an in-memory pipe the lane fills from the
//! request stream and drains into the response stream. The lane is the only thread that touches
//! the connection; it sleeps in `read_wait` on the slot's futex, which the client's bytes, nginx
//! giving up, a close order (reload, retirement) and the app's news (the call's waker) all end.
//! An idle WebSocket costs no CPU.

use super::call::{Call, ToApp, ToLane, WsMessage, BODY_AHEAD};
use super::ws_events::ABNORMAL;
use super::{internal_error, Asgi, WATCH};
use ngx_pool_sdk::{Error, ErrorKind, Level, Request, Result, Status, Stream};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

/// The largest message (and frame) a client may send: uvicorn's `--ws-max-size` default.
const MAX_MESSAGE: usize = 16 << 20;
/// How long a closing WebSocket waits for the client's close frame before the connection ends.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The close code of an app that failed (RFC 6455 1011, "internal error").
const INTERNAL: u16 = 1011;

/// Whether a handshake is one we can answer: the checks of RFC 6455 4.2.1 nginx left to us
/// (it offered the upgrade for a GET over HTTP/1.1 with `Upgrade: websocket` and `Connection:
/// upgrade`). `Err` is the answer instead: status, extra header, reason.
pub fn check_handshake(req: &Request<'_>) -> std::result::Result<(), (Status, bool, &'static str)> {
    let key = req.header("Sec-WebSocket-Key").unwrap_or_default();
    let version = req.header("Sec-WebSocket-Version").unwrap_or_default();
    if version.trim_ascii() != b"13" {
        // 426 with the version we speak (RFC 6455 4.4).
        return Err((
            Status::new(426).unwrap_or(Status::BAD_REQUEST),
            true,
            "WebSocket handshake: Sec-WebSocket-Version must be 13\n",
        ));
    }
    // A base64-encoded 16-byte nonce: 22 characters of the alphabet and "==".
    let key = key.trim_ascii();
    let base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    if key.len() != 24 || !key.ends_with(b"==") || !key[..22].iter().all(base64) {
        return Err((
            Status::BAD_REQUEST,
            false,
            "WebSocket handshake: Sec-WebSocket-Key is missing or malformed\n",
        ));
    }
    Ok(())
}

/// Answers a handshake [`check_handshake`] refused.
pub fn refuse(stream: Stream, (status, version, why): (Status, bool, &'static str)) -> Result {
    let mut headers: Vec<(&[u8], &[u8])> = vec![(b"Content-Type", b"text/plain; charset=utf-8")];
    if version {
        headers.push((b"Sec-WebSocket-Version", b"13"));
    }
    stream.start(status, &headers)?;
    stream.write(why.as_bytes())
}

/// The bytes between tungstenite and the request's streams.
#[derive(Default)]
struct Pipe {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.input.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Asgi {
    /// Serves a WebSocket handshake's call: waits for the app's answer, then carries frames.
    pub(super) fn serve_websocket(
        &self,
        req: &Request<'_>,
        stream: Stream,
        call: &Arc<Call>,
    ) -> Result {
        let started = Instant::now();
        let deadline = (self.settings.timeout_ms > 0)
            .then(|| started + Duration::from_millis(self.settings.timeout_ms));
        let mut head: Option<super::Head> = None;
        let mut sent_head = false;
        loop {
            let mut st = call.lock();
            if let Some(msg) = st.to_lane.pop_front() {
                if let ToLane::Body { data, .. } = &msg {
                    st.to_lane_bytes -= data.len();
                }
                drop(st);
                match msg {
                    ToLane::Accept {
                        subprotocol,
                        headers,
                    } => {
                        return self.open(req, stream, call, subprotocol, &headers);
                    }
                    ToLane::Close { .. } => {
                        // Refused before it was accepted: 403, as uvicorn answers.
                        stream.start(Status::FORBIDDEN, &[(b"Content-Length", b"0")])?;
                        return Ok(());
                    }
                    ToLane::Start { status, headers } => head = Some((status, headers)),
                    ToLane::Body { data, more } => {
                        if !sent_head {
                            sent_head = true;
                            if let Some((status, headers)) = head.take() {
                                super::start(stream, status, &headers)?;
                            }
                        }
                        if !data.is_empty() {
                            stream.write(&data)?;
                        }
                        if !more {
                            return Ok(());
                        }
                    }
                    ToLane::Message(_) => {}
                    ToLane::Done(None) if head.is_none() && !sent_head => {
                        stream.log(
                            Level::Error,
                            &format!(
                                "the ASGI app {} returned without accepting or closing the WebSocket; 500",
                                self.app_name()
                            ),
                        );
                        return internal_error(stream);
                    }
                    ToLane::Done(error) => {
                        return self.ended(stream, error, head.take(), sent_head, started);
                    }
                }
                continue;
            }
            let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
            if stream.is_cancelled() || past_deadline {
                if past_deadline || self.deadline_near(started) {
                    if !st.cancel {
                        st.cancel = true;
                        call.tell_app(&mut st, true);
                    }
                    drop(call.lane_wait(st, WATCH));
                    continue;
                }
                st.disconnected = true;
                st.to_app
                    .push_back(ToApp::Disconnect(ABNORMAL, String::new()));
                call.tell_app(&mut st, false);
                return Err(Error::new(ErrorKind::Gone, "the client went away"));
            }
            drop(call.lane_wait(st, WATCH));
        }
    }

    /// The app accepted: the 101 goes out and frames flow until the WebSocket closes.
    fn open(
        &self,
        req: &Request<'_>,
        stream: Stream,
        call: &Arc<Call>,
        subprotocol: Option<String>,
        extra: &[(Vec<u8>, Vec<u8>)],
    ) -> Result {
        let key = req.header("Sec-WebSocket-Key").unwrap_or_default();
        let accept = tungstenite::handshake::derive_accept_key(key.trim_ascii());
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b"Upgrade", b"websocket"),
            (b"Sec-WebSocket-Accept", accept.as_bytes()),
        ];
        if let Some(p) = &subprotocol {
            headers.push((b"Sec-WebSocket-Protocol", p.as_bytes()));
        }
        // Ours to set; and what would frame a body a 101 has none of (RFC 9110 15.2: no
        // Content-Length or Transfer-Encoding on a 1xx), or is hop-by-hop.
        let ours = |n: &[u8]| {
            [
                &b"upgrade"[..],
                b"connection",
                b"sec-websocket-accept",
                b"sec-websocket-protocol",
                b"content-length",
                b"transfer-encoding",
                b"keep-alive",
                b"te",
                b"trailer",
            ]
            .iter()
            .any(|o| o.eq_ignore_ascii_case(n))
        };
        headers.extend(
            extra
                .iter()
                .filter(|(n, _)| !ours(n))
                .map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        stream.start(
            Status::new(101).unwrap_or(Status::INTERNAL_SERVER_ERROR),
            &headers,
        )?;
        stream.flush()?;
        call.lock().waker = stream.waker();
        let config = WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let mut link = Link {
            ws: WebSocket::from_raw_socket(Pipe::default(), Role::Server, Some(config)),
            stream,
            call,
            closing_since: None,
            ping: Duration::from_millis(self.settings.ws_ping_ms),
            heard: Instant::now(),
            pinged: None,
        };
        let out = link.run(self);
        let mut st = call.lock();
        st.waker = None;
        if out.is_err() && !st.disconnected {
            st.disconnected = true;
            st.to_app
                .push_back(ToApp::Disconnect(ABNORMAL, String::new()));
        }
        call.tell_app(&mut st, false);
        out
    }
}

/// An open WebSocket between the client (through the request's streams) and the app (the call).
struct Link<'c> {
    ws: WebSocket<Pipe>,
    stream: Stream,
    call: &'c Arc<Call>,
    /// Set once our close frame is out: the client's is awaited until [`CLOSE_WAIT`].
    closing_since: Option<Instant>,
    /// `ws_ping=`: a client silent this long is pinged, and closed if it stays silent as long
    /// again (a peer gone without a word holds a lane otherwise); zero: never.
    ping: Duration,
    /// When the client last sent anything.
    heard: Instant,
    /// When our unanswered ping went out.
    pinged: Option<Instant>,
}

/// How a link's step ended.
enum Step {
    Go,
    /// The close handshake is complete, or the wait for it is over.
    Closed,
}

impl Link<'_> {
    fn run(&mut self, asgi: &Asgi) -> Result {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            if let Step::Closed = self.carry_app(asgi)? {
                return Ok(());
            }
            let code = self.stream.closing();
            if code != 0 && self.closing_since.is_none() {
                // A reload (1012) or this worker's retirement (1001): the app hears of it as a
                // disconnect, the client gets a close frame.
                self.tell_app(ToApp::Disconnect(code as u16, String::new()));
                self.close(code as u16, "")?;
            }
            let full = self.call.lock().to_app_bytes >= BODY_AHEAD;
            if full && self.closing_since.is_none() {
                // The app has not taken what came: the client waits (its bytes stay in the
                // socket) until it does.
                let st = self.call.lock();
                if st.to_app_bytes >= BODY_AHEAD && st.to_lane.is_empty() {
                    drop(self.call.lane_wait(st, WATCH));
                }
                if self.stream.is_cancelled() {
                    return Err(Error::new(ErrorKind::Gone, "the client went away"));
                }
                continue;
            }
            let limit = self
                .closing_since
                .map(|t| CLOSE_WAIT.saturating_sub(t.elapsed()));
            if limit == Some(Duration::ZERO) {
                return Ok(());
            }
            let limit = match (limit, self.ping_due()) {
                (Some(l), _) => Some(l),
                (None, Some(due)) => Some(due.saturating_duration_since(Instant::now())),
                (None, None) => None,
            };
            if limit == Some(Duration::ZERO) {
                self.keepalive(asgi)?;
                continue;
            }
            match self.stream.read_wait(&mut buf, limit)? {
                None => continue,
                Some(0) => return Ok(()),
                Some(n) => {
                    self.heard = Instant::now();
                    self.pinged = None;
                    self.ws.get_mut().input.extend(&buf[..n]);
                    if let Step::Closed = self.carry_client()? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Hands the app's messages to tungstenite and what it makes of them to the client.
    fn carry_app(&mut self, asgi: &Asgi) -> Result<Step> {
        loop {
            let msg = {
                let mut st = self.call.lock();
                let m = st.to_lane.pop_front();
                if let Some(ToLane::Message(m)) = &m {
                    st.to_lane_bytes -= m.len();
                    if st.app_waiting && st.to_lane_bytes <= super::call::SEND_AHEAD / 2 {
                        self.call.tell_app(&mut st, false);
                    }
                }
                m
            };
            let Some(msg) = msg else {
                return Ok(Step::Go);
            };
            match msg {
                ToLane::Message(m) => {
                    if self.closing_since.is_some() {
                        continue;
                    }
                    let m = match m {
                        WsMessage::Text(t) => Message::text(t),
                        WsMessage::Binary(b) => Message::binary(b),
                    };
                    let _ = self.ws.write(m);
                    self.flush()?;
                }
                ToLane::Close { code, reason } => {
                    if self.closing_since.is_none() {
                        self.close(code, &reason)?;
                    }
                }
                ToLane::Done(error) => {
                    if let Some(why) = &error {
                        if why != "cancelled" {
                            self.stream.log(
                                Level::Error,
                                &format!("the ASGI app {} failed: {why}", asgi.app_name()),
                            );
                        }
                    }
                    if self.closing_since.is_none() {
                        // As uvicorn: an app that returns closes with 1000, one that raised
                        // with 1011.
                        let code = if error.is_some() { INTERNAL } else { 1000 };
                        self.close(code, "")?;
                    }
                }
                // Not taken on an open WebSocket (the loop's checks refuse them).
                ToLane::Accept { .. } | ToLane::Start { .. } | ToLane::Body { .. } => {}
            }
        }
    }

    /// Parses what the client sent: messages for the app, control frames answered.
    fn carry_client(&mut self) -> Result<Step> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    self.tell_app(ToApp::Message(WsMessage::Text(t.to_string())))
                }
                Ok(Message::Binary(b)) => {
                    self.tell_app(ToApp::Message(WsMessage::Binary(b.to_vec())))
                }
                Ok(Message::Close(frame)) => {
                    if self.closing_since.is_none() {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        self.tell_app(ToApp::Disconnect(code, reason));
                        // tungstenite queued the reply; once it is out the handshake is done.
                        self.flush()?;
                        return Ok(Step::Closed);
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush()?;
                    return Ok(Step::Go);
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.flush()?;
                    return Ok(Step::Closed);
                }
                Err(e) => {
                    // A broken frame, a message too large, text that is not UTF-8: closed with
                    // the code the RFC gives (tungstenite names the rule).
                    let code = match &e {
                        tungstenite::Error::Capacity(_) => 1009,
                        tungstenite::Error::Utf8(_) => 1007,
                        _ => 1002,
                    };
                    self.stream.log(
                        Level::Info,
                        &format!(
                            "the WebSocket client broke the protocol ({e}); closing with {code}"
                        ),
                    );
                    if self.closing_since.is_none() {
                        self.tell_app(ToApp::Disconnect(code, String::new()));
                        self.close(code, "")?;
                    }
                    return Ok(Step::Closed);
                }
            }
        }
    }

    /// When the next ping goes out, or the unanswered one times out (none while closing).
    fn ping_due(&self) -> Option<Instant> {
        if self.ping.is_zero() || self.closing_since.is_some() {
            return None;
        }
        Some(self.pinged.unwrap_or(self.heard) + self.ping)
    }

    /// The client has been silent for `ws_ping`: a ping; silent as long again after it: closed.
    fn keepalive(&mut self, asgi: &Asgi) -> Result {
        if self.pinged.is_none() {
            let _ = self.ws.write(Message::Ping(Vec::new().into()));
            self.pinged = Some(Instant::now());
            return self.flush();
        }
        self.stream.log(
            Level::Info,
            &format!(
                "the WebSocket client of the ASGI app {} did not answer a ping within {} ms; closing it (1011)",
                asgi.app_name(),
                self.ping.as_millis()
            ),
        );
        self.tell_app(ToApp::Disconnect(INTERNAL, String::new()));
        self.close(INTERNAL, "keepalive ping timeout")
    }

    fn tell_app(&self, event: ToApp) {
        let mut st = self.call.lock();
        if let ToApp::Message(m) = &event {
            st.to_app_bytes += m.len();
        }
        if matches!(event, ToApp::Disconnect(..)) {
            st.disconnected = true;
        }
        st.to_app.push_back(event);
        self.call.tell_app(&mut st, false);
    }

    /// Sends our close frame; the client's is awaited from now on.
    fn close(&mut self, code: u16, reason: &str) -> Result {
        let _ = self.ws.close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }));
        self.closing_since = Some(Instant::now());
        self.flush()
    }

    /// Writes what tungstenite has for the client (messages, pongs, close frames).
    fn flush(&mut self) -> Result {
        let _ = self.ws.flush();
        let out = std::mem::take(&mut self.ws.get_mut().output);
        if !out.is_empty() {
            self.stream.write(&out)?;
            self.stream.flush()?;
        }
        Ok(())
    }
}
