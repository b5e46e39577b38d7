//! Errors of the SDK: what the host said (its status codes, as a kind) or what a handler says.

use ngx_pool_abi::HostStatus;
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

    /// The error for a host status code (never `NGX_POOL_OK`); a value the ABI does not know
    /// is the handler kind.
    pub(crate) fn from_status(status: i32, what: &str) -> Error {
        let kind = HostStatus::try_from(status).map_or(ErrorKind::Handler, ErrorKind::of_status);
        let text = match kind {
            ErrorKind::Gone => "the client is gone or the deadline passed",
            ErrorKind::Invalid => "invalid argument",
            ErrorKind::State => "not allowed now",
            ErrorKind::TooLarge => "past the declared Content-Length",
            ErrorKind::Io => "the channel failed",
            ErrorKind::Handler => "failed",
            // A fan-out task's outcome: said without the number.
            ErrorKind::Lost => {
                return Error::new(kind, format!("{what}: the worker running the task died"))
            }
            ErrorKind::Timeout => return Error::new(kind, format!("{what}: timed out")),
            ErrorKind::Full => return Error::new(kind, format!("{what}: no room")),
        };
        Error::new(kind, format!("{what}: {text} (status {status})"))
    }

    /// The status a trampoline returns to the host for this error.
    pub(crate) fn status(&self) -> i32 {
        self.kind.status().raw()
    }
}

impl ErrorKind {
    /// The kind of a host status (the one table of the two, with [`ErrorKind::status`]); `Ok`,
    /// `TaskYours` and `NotFound` are no failure of their own: the handler kind.
    pub fn of_status(status: HostStatus) -> ErrorKind {
        match status {
            HostStatus::Gone => ErrorKind::Gone,
            HostStatus::Invalid => ErrorKind::Invalid,
            HostStatus::State => ErrorKind::State,
            HostStatus::TooLarge => ErrorKind::TooLarge,
            HostStatus::Io => ErrorKind::Io,
            HostStatus::Lost => ErrorKind::Lost,
            HostStatus::Timeout => ErrorKind::Timeout,
            HostStatus::Full => ErrorKind::Full,
            HostStatus::Ok
            | HostStatus::TaskYours
            | HostStatus::NotFound
            | HostStatus::Again
            | HostStatus::Error => ErrorKind::Handler,
        }
    }

    /// The host status of this kind (what the host, or Python's `ngx_pool`, is told).
    pub fn status(self) -> HostStatus {
        match self {
            ErrorKind::Gone => HostStatus::Gone,
            ErrorKind::Invalid => HostStatus::Invalid,
            ErrorKind::State => HostStatus::State,
            ErrorKind::TooLarge => HostStatus::TooLarge,
            ErrorKind::Io => HostStatus::Io,
            ErrorKind::Handler => HostStatus::Error,
            ErrorKind::Lost => HostStatus::Lost,
            ErrorKind::Timeout => HostStatus::Timeout,
            ErrorKind::Full => HostStatus::Full,
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
    use ngx_pool_abi as abi;

    #[test]
    fn every_kind_is_its_status_and_back() {
        let kinds = [
            ErrorKind::Gone,
            ErrorKind::Invalid,
            ErrorKind::State,
            ErrorKind::TooLarge,
            ErrorKind::Io,
            ErrorKind::Handler,
            ErrorKind::Lost,
            ErrorKind::Timeout,
            ErrorKind::Full,
        ];
        for k in kinds {
            assert_eq!(ErrorKind::of_status(k.status()), k);
            assert_eq!(Error::from_status(k.status().raw(), "x").kind(), k);
        }
        assert_eq!(Error::from_status(-12345, "x").kind(), ErrorKind::Handler);
    }

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
