//! The response a handler builds: status and headers, then a body it writes (streamed by the
//! host past 64 KiB or at `flush`).

use crate::error::{Error, ErrorKind, Result};
use crate::host::Call;
use crate::status::Status;
use crate::stream::Stream;
use ngx_pool_abi::{self as abi, ngx_pool_header, ngx_pool_str};
use std::cell::RefCell;
use std::io::{self, Write};

/// A response's header text and the spans that cut it into (name, value) pairs.
type HeaderBuffers = (Vec<u8>, Vec<(u32, u32, u32)>);

thread_local! {
    /// Header buffers kept from one response to the next (a worker runs one at a time), so a
    /// response allocates nothing for its headers once the worker has warmed up.
    static SPARE: RefCell<HeaderBuffers> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// What a kept buffer may hold on to between responses.
const KEEP: usize = 16 << 10;

/// The response of one request. Status and headers may change until the first body byte is
/// written (or `flush`/`start` is called); then the host has them. Writes are buffered by the
/// host up to 64 KiB; past that, or after `flush`, the head goes out and the body streams as it
/// is written (with a `Content-Length` if the handler set that header, chunked otherwise).
pub struct Response<'r> {
    call: Call<'r>,
    status: Status,
    /// Header names and values back to back; `spans` cuts them apart. Two allocations per
    /// response however many headers.
    text: Vec<u8>,
    spans: Vec<(u32, u32, u32)>,
    started: bool,
}

impl<'r> Response<'r> {
    pub(crate) fn new(call: Call<'r>) -> Response<'r> {
        let (text, spans) = SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
        Response {
            call,
            status: Status::OK,
            text,
            spans,
            started: false,
        }
    }

    /// Sets the status (200 unless set). Ignored once the head went to the host.
    pub fn set_status(&mut self, status: Status) {
        self.status = status;
    }
    pub fn status(&self) -> Status {
        self.status
    }
    /// Adds a header (repeatable). Ignored once the head went to the host; the host refuses a
    /// name or value HTTP does not allow when the head goes out.
    pub fn add_header(&mut self, name: &str, value: &str) {
        self.add_header_bytes(name.as_bytes(), value.as_bytes());
    }
    pub fn add_header_bytes(&mut self, name: &[u8], value: &[u8]) {
        let at = self.text.len() as u32;
        self.text.extend_from_slice(name);
        self.text.extend_from_slice(value);
        self.spans.push((at, name.len() as u32, value.len() as u32));
    }
    /// True once the status and headers were handed to the host.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Hands status and headers to the host now (otherwise done at the first write).
    pub fn start(&mut self) -> Result {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let entry = |&(at, n, v): &(u32, u32, u32)| {
            let (at, n, v) = (at as usize, n as usize, v as usize);
            ngx_pool_header {
                name: ngx_pool_str {
                    data: self.text[at..].as_ptr(),
                    len: n,
                },
                value: ngx_pool_str {
                    data: self.text[at + n..].as_ptr(),
                    len: v,
                },
            }
        };
        const ON_STACK: usize = 8;
        let rc = if self.spans.len() <= ON_STACK {
            let mut list = [ngx_pool_header {
                name: ngx_pool_str::ABSENT,
                value: ngx_pool_str::ABSENT,
            }; ON_STACK];
            for (slot, span) in list.iter_mut().zip(&self.spans) {
                *slot = entry(span);
            }
            self.call
                .start(self.status.code(), &list[..self.spans.len()])
        } else {
            let list: Vec<ngx_pool_header> = self.spans.iter().map(entry).collect();
            self.call.start(self.status.code(), &list)
        };
        check(rc, "starting the response")
    }

    /// Writes body bytes; see the type's docs for buffering and streaming.
    pub fn send(&mut self, data: &[u8]) -> Result {
        self.start()?;
        check(self.call.write(data), "writing the response")
    }

    /// Sends the head, and every byte written so far, to the client now (server-sent events,
    /// long polls); later writes stream.
    pub fn flush(&mut self) -> Result {
        self.start()?;
        check(self.call.flush(), "flushing the response")
    }

    /// Hands the whole response over to a [`Stream`], an owned handle for code that cannot hold
    /// this borrow (an embedded interpreter's objects). Status and headers set here are not
    /// sent: the stream's [`Stream::start`] sends its own. From now on this `Response` writes
    /// nothing, not even at the end of `handle`.
    pub fn into_stream(&mut self) -> Stream {
        self.started = true;
        Stream::new(self.call.detached())
    }

    /// Called by the SDK when `handle` returned `Ok`: a response that wrote nothing still has
    /// its head handed over.
    pub(crate) fn finish(&mut self) -> Result {
        self.start()
    }
}

fn check(rc: i32, what: &str) -> Result {
    if rc == abi::NGX_POOL_OK {
        Ok(())
    } else {
        Err(Error::from_status(rc, what))
    }
}

impl Write for Response<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf).map_err(Error::into_io)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.start().map_err(Error::into_io)?;
        check(self.call.flush(), "flushing the response").map_err(Error::into_io)
    }
}

impl Drop for Response<'_> {
    fn drop(&mut self) {
        let (mut text, mut spans) = (
            std::mem::take(&mut self.text),
            std::mem::take(&mut self.spans),
        );
        if text.capacity() <= KEEP && spans.capacity() <= KEEP / 16 {
            text.clear();
            spans.clear();
            SPARE.with(|s| *s.borrow_mut() = (text, spans));
        }
    }
}

impl Response<'_> {
    /// True if `e` says the client is gone (so a handler can stop quietly).
    pub fn is_gone(e: &Error) -> bool {
        e.kind() == ErrorKind::Gone
    }
}
