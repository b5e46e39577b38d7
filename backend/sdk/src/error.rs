//! Errors of the SDK: what the host said (its status codes, as a kind) or what a handler says.

use ngx_pool_abi as abi;
use std::fmt;
use std::io;

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client went away or the deadline passed: stop, nobody reads the answer.
    Gone,
    /// An argument the host refused (a bad header, a status out of range).
    Invalid,
    /// Not allowed now (e.g. headers after the head was sent).
    State,
    /// A write past the declared `Content-Length`.
    TooLarge,
    /// The shared-memory channel failed.
    Io,
    /// The handler's own failure.
    Handler,
    /// A fan-out task's worker died before it answered.
    Lost,
    /// A wait ran out of time.
    Timeout,
    /// No room to queue a fan-out task.
    Full,
}

/// An error: its kind and a message for the error log.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// The SDK's result type; `Result` alone is what `handle` returns.
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// A handler's own failure, with a message for the error log.
    pub fn msg(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Handler, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The error for a host status code (never `NGX_POOL_OK`).
    pub(crate) fn from_status(status: i32, what: &str) -> Error {
        let (kind, text) = match status {
            abi::NGX_POOL_ERR_GONE => {
                (ErrorKind::Gone, "the client is gone or the deadline passed")
            }
            abi::NGX_POOL_ERR_INVALID => (ErrorKind::Invalid, "invalid argument"),
            abi::NGX_POOL_ERR_STATE => (ErrorKind::State, "not allowed now"),
            abi::NGX_POOL_ERR_TOO_LARGE => {
                (ErrorKind::TooLarge, "past the declared Content-Length")
            }
            abi::NGX_POOL_ERR_IO => (ErrorKind::Io, "the channel failed"),
            _ => (ErrorKind::Handler, "failed"),
        };
        Error::new(kind, format!("{what}: {text} (status {status})"))
    }

    /// The status a trampoline returns to the host for this error.
    pub(crate) fn status(&self) -> i32 {
        match self.kind {
            ErrorKind::Gone => abi::NGX_POOL_ERR_GONE,
            ErrorKind::Invalid => abi::NGX_POOL_ERR_INVALID,
            ErrorKind::State => abi::NGX_POOL_ERR_STATE,
            ErrorKind::TooLarge => abi::NGX_POOL_ERR_TOO_LARGE,
            ErrorKind::Io => abi::NGX_POOL_ERR_IO,
            ErrorKind::Handler => abi::NGX_POOL_ERR,
            ErrorKind::Lost => abi::NGX_POOL_ERR_LOST,
            ErrorKind::Timeout => abi::NGX_POOL_ERR_TIMEOUT,
            ErrorKind::Full => abi::NGX_POOL_ERR_FULL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        // The SDK's own io::Errors carry an Error inside (see `into_io`): keep its kind.
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Ok(inner) = e.into_inner().expect("checked").downcast::<Error>() {
                return *inner;
            }
            unreachable!("checked the type above");
        }
        let kind = match e.kind() {
            io::ErrorKind::BrokenPipe => ErrorKind::Gone,
            _ => ErrorKind::Handler,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::msg(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::msg(message)
    }
}

impl Error {
    /// As an `io::Error` (for `Read`/`Write`), keeping the kind for a later `?` into `Error`.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match self.kind {
            ErrorKind::Gone => io::ErrorKind::BrokenPipe,
            ErrorKind::Invalid => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_survive_a_trip_through_io_error() {
        let e = Error::from_status(abi::NGX_POOL_ERR_GONE, "write");
        let back: Error = e.into_io().into();
        assert_eq!(back.kind(), ErrorKind::Gone);
        assert_eq!(back.status(), abi::NGX_POOL_ERR_GONE);
        let plain: Error = io::Error::other("disk").into();
        assert_eq!(plain.kind(), ErrorKind::Handler);
        assert_eq!(plain.status(), abi::NGX_POOL_ERR);
    }
}
