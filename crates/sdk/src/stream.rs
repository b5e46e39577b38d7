//! An owned handle on a request's body and response, for code that cannot hold the `handle`
//! call's borrow: objects of an embedded interpreter, which may outlive the call.

use crate::error::{Error, Result};
use crate::host::{Detached, Level};
use crate::status::Status;
use ngx_pool_abi::{self as abi, ngx_pool_header, ngx_pool_str};

/// Ends a request's [`Stream::read_wait`] from another thread (see [`Stream::waker`]).
#[derive(Clone, Copy)]
pub struct Waker(crate::host::WakeToken);

impl Waker {
    /// Wakes the request's reader; a request that has ended is not affected.
    pub fn wake(&self) {
        self.0.wake();
    }
}

/// The request's body and its response, from [`crate::Response::into_stream`]. It may be kept
/// past the end of `handle` (a Python app may hold on to `wsgi.input`): then every operation
/// fails with [`crate::ErrorKind::State`], because the host refuses a finished request's handle.
#[derive(Clone, Copy)]
pub struct Stream {
    handle: Detached,
}

fn check(rc: i32, what: &str) -> Result {
    if rc == abi::NGX_POOL_OK {
        Ok(())
    } else {
        Err(Error::from_status(rc, what))
    }
}

impl Stream {
    pub(crate) fn new(handle: Detached) -> Stream {
        Stream { handle }
    }

    /// Reads request body bytes as nginx delivers them: the count, 0 at the end.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        self.handle
            .read(buf)
            .map_err(|rc| Error::from_status(rc, "reading the request body"))
    }

    /// Reads request body bytes, waiting at most `timeout` (`None`: as long as it takes):
    /// `Ok(None)` when the wait ended without a byte (the timeout, a [`Waker::wake`], a new
    /// [`closing`](Stream::closing) code). Reads an open body (an upgraded connection's, see
    /// [`crate::Request::body_is_open`]) while the response streams.
    pub fn read_wait(
        &self,
        buf: &mut [u8],
        timeout: Option<std::time::Duration>,
    ) -> Result<Option<usize>> {
        self.handle
            .read_wait(
                buf,
                timeout.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64),
            )
            .map_err(|rc| Error::from_status(rc, "reading the request body"))
    }

    /// A waker that ends this request's [`read_wait`](Stream::read_wait) from any thread.
    pub fn waker(&self) -> Option<Waker> {
        self.handle.wake_token().map(Waker)
    }

    /// 0, or the WebSocket close code this long-lived request should end with now: 1001 (the
    /// worker retires), 1012 (the pool or nginx restarts).
    pub fn closing(&self) -> u32 {
        self.handle.closing()
    }

    /// Sends status and headers (once; a second call is refused).
    pub fn start(&self, status: Status, headers: &[(&[u8], &[u8])]) -> Result {
        let str_of = |b: &[u8]| ngx_pool_str {
            data: b.as_ptr(),
            len: b.len(),
        };
        let list: Vec<ngx_pool_header> = headers
            .iter()
            .map(|(n, v)| ngx_pool_header {
                name: str_of(n),
                value: str_of(v),
            })
            .collect();
        check(
            self.handle.start(status.code(), &list),
            "starting the response",
        )
    }

    /// Writes response body bytes (after [`start`](Stream::start)); buffered by the host up to
    /// 64 KiB, streamed past that.
    pub fn write(&self, data: &[u8]) -> Result {
        check(self.handle.write(data), "writing the response")
    }

    /// Sends what was written so far now (the head too, which makes the body stream).
    pub fn flush(&self) -> Result {
        check(self.handle.flush(), "flushing the response")
    }

    /// True once nginx no longer wants the answer.
    pub fn is_cancelled(&self) -> bool {
        self.handle.is_cancelled()
    }

    /// This request's fan-out ([`crate::Fanout`]).
    pub fn fanout(&self) -> crate::Fanout {
        crate::Fanout::new(self.handle)
    }

    /// Writes `msg` to nginx's error_log, tagged with this request's URI.
    pub fn log(&self, level: Level, msg: &str) {
        self.handle.log(level, msg);
    }
}
