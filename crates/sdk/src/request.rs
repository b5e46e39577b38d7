//! The request as a handler sees it: fields, headers, parameters, and the body as a stream.

use crate::error::{Error, Result};
use crate::host::{Call, Level};
use std::cell::OnceCell;
use std::io::{self, Read};

/// One request, borrowed from the host for the duration of `handle`.
pub struct Request<'r> {
    call: Call<'r>,
    whole: OnceCell<Vec<u8>>,
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

impl<'r> Request<'r> {
    pub(crate) fn new(call: Call<'r>) -> Request<'r> {
        Request {
            call,
            whole: OnceCell::new(),
        }
    }

    /// This request's fan-out: tasks for the pool's other workers ([`crate::Fanout`]).
    pub fn fanout(&self) -> crate::Fanout {
        crate::Fanout::new(self.call.detached())
    }

    /// The method as sent (`GET`, `POST`, ...).
    pub fn method(&self) -> &'r str {
        text(self.call.method())
    }
    /// The request target with its arguments, as sent (`/path?a=b`), not decoded.
    pub fn uri(&self) -> &'r str {
        text(self.call.uri())
    }
    /// The target without the query string.
    pub fn path(&self) -> &'r str {
        text(self.call.path())
    }
    /// The query string, without `?`.
    pub fn query(&self) -> &'r str {
        text(self.call.query())
    }
    /// The first value of query argument `name` (not percent-decoded).
    pub fn arg(&self, name: &str) -> Option<&'r str> {
        self.query()
            .split('&')
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
    /// The HTTP version as (major, minor).
    pub fn version(&self) -> (u8, u8) {
        let v = self.call.http_version();
        ((v / 1000) as u8, (v % 1000) as u8)
    }
    /// The client's address as nginx saw it (`$remote_addr`).
    pub fn client(&self) -> &'r str {
        text(self.call.client_addr())
    }
    /// The client's port (`$remote_port`).
    pub fn client_port(&self) -> u16 {
        self.call.client_port()
    }
    /// Every header in arrival order, repeated ones included.
    pub fn headers(&self) -> impl Iterator<Item = (&'r [u8], &'r [u8])> + 'r {
        self.call.headers()
    }
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'r [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
    /// Every per-request parameter: the `pool_param`s of the location and the default set
    /// (`SERVER_NAME`, `SERVER_PORT`, `REMOTE_ADDR`, ...).
    pub fn params(&self) -> impl Iterator<Item = (&'r [u8], &'r [u8])> + 'r {
        self.call.params()
    }
    /// The parameter named `name` (exact case).
    pub fn param(&self, name: &str) -> Option<&'r [u8]> {
        self.params()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }
    /// The parameter named `name` as text, if it is UTF-8.
    pub fn param_str(&self, name: &str) -> Option<&'r str> {
        self.param(name).and_then(|v| std::str::from_utf8(v).ok())
    }
    /// Length of the request body in bytes.
    pub fn body_len(&self) -> u64 {
        self.call.body_length()
    }
    /// Whether nginx is ready to upgrade this request (a WebSocket handshake over HTTP/1.1):
    /// answered 101, its body is what the client sends on the connection until it closes
    /// (`NGX_POOL_BODY_OPEN`, read with [`crate::Stream::read_wait`]).
    pub fn body_is_open(&self) -> bool {
        self.body_len() == crate::abi::NGX_POOL_BODY_OPEN
    }
    /// The body as a stream, read from shared memory as nginx delivers it: a body of any size
    /// in constant memory. A read fails (`ErrorKind::Gone`) once the request is cancelled.
    pub fn body_reader(&self) -> BodyReader<'_, 'r> {
        BodyReader { req: self }
    }
    /// The whole body (what `body_reader` has not consumed), read into memory on first call.
    /// For small bodies; use [`body_reader`](Self::body_reader) for large ones.
    pub fn body(&self) -> Result<&[u8]> {
        if let Some(b) = self.whole.get() {
            return Ok(b);
        }
        let mut v = Vec::with_capacity(self.body_len().min(1 << 20) as usize);
        self.body_reader().read_to_end(&mut v)?;
        Ok(self.whole.get_or_init(|| v))
    }
    /// True once nginx no longer wants the answer (the client went away, the deadline passed):
    /// a long handler may check it and stop early.
    pub fn is_cancelled(&self) -> bool {
        self.call.is_cancelled()
    }
    /// Writes `msg` to nginx's error_log at `level`, tagged with this request's URI.
    pub fn log(&self, level: Level, msg: &str) {
        self.call.log(level, msg);
    }
}

/// A reader over a request's body; see [`Request::body_reader`].
pub struct BodyReader<'a, 'r> {
    req: &'a Request<'r>,
}

impl Read for BodyReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.req
            .call
            .read(buf)
            .map_err(|status| Error::from_status(status, "reading the request body").into_io())
    }
}
