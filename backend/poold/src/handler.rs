//! The handler interface: a borrowed view of the request and a response writer.
//!
//! Built-in handlers use exactly this interface; it is what a user's handler implements.

use ngx_pool_channel::message::RequestView;
use std::io::Write;

/// A request as the handler sees it, borrowing from the message in the worker's buffer.
pub struct Request<'a> {
    view: RequestView<'a>,
    cancelled: &'a dyn Fn() -> bool,
}

impl<'a> Request<'a> {
    /// A request whose cancellation `cancelled` reports (the worker passes a look at the slot).
    pub fn new(view: RequestView<'a>, cancelled: &'a dyn Fn() -> bool) -> Self {
        Request { view, cancelled }
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
    pub fn body(&self) -> &'a [u8] {
        self.view.body
    }
}

/// The response a handler builds: status, headers (repeatable) and a body it writes to.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Default for Response {
    fn default() -> Self {
        Response {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

impl Response {
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }
    pub fn add_header(&mut self, name: &str, value: &str) {
        self.headers
            .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
}

impl Write for Response {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.body.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Application code run by pool workers. Loaded once in poold, before it forks.
pub trait Handler: Send + Sync {
    fn handle(&self, req: &Request<'_>, resp: &mut Response);
}
