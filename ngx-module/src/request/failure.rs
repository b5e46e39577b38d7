//! Why a request does not get its pool's answer: for each reason, in one table, the HTTP status
//! it is answered with, its `$pool_status` value, where its error_log line goes and whether the
//! answer says when to retry.
//!
//! Everything that ends a request early names one of these; the statuses are nginx's own
//! choices for the same cases under `proxy_pass` (502 for a bad or lost upstream answer, 504 for
//! a deadline, 503 for a backend that is away or full, as `limit_req` and `max_conns` do).

use nginx_sys::ngx_int_t;
use ngx_pool_channel::slot::FailReason;

/// Why request handling stopped before the pool's answer was out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// nginx or this module could not do its part (no memory, a panic caught at an entry point,
    /// a request that could not be tracked, a body that could not be written to the arena).
    Internal,
    /// The request head cannot be encoded (nginx accepted something the channel refuses).
    BadHead,
    /// The request head is larger than the pool takes (a quarter of its arena).
    HeadTooLarge,
    /// Reading the body from the client ended with nginx's status (a timeout, a bad body).
    ClientBody(ngx_int_t),
    /// The client closed its connection before it sent its whole body (nginx's 499).
    ClientGone,
    /// No poold is attached to the pool (none answered, or it went away before the request
    /// was queued).
    Unavailable,
    /// Every slot of the pool is in use.
    Full,
    /// No worker took it, or no arena space came, within `queue_timeout` (or before the whole
    /// deadline, for a request never taken).
    QueueTimeout,
    /// It ran past its deadline (`timeout=`, `pool_timeout`).
    Timeout,
    /// The pool worker failed it this way.
    InPool(FailReason),
    /// The pool's answer is malformed, or the request lost its slot.
    BadAnswer,
    /// poold went away with the request in flight.
    PooldLost,
}

impl Failure {
    /// The status the client is answered with (while the response head is not out; after that
    /// the connection is closed).
    pub(crate) fn http_status(self) -> ngx_int_t {
        match self {
            Failure::Internal => 500,
            Failure::BadHead => 400,
            Failure::HeadTooLarge => 431,
            Failure::ClientBody(rc) => rc,
            Failure::ClientGone => nginx_sys::NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t,
            Failure::Unavailable | Failure::Full | Failure::QueueTimeout => 503,
            Failure::Timeout => 504,
            Failure::InPool(reason) => reason.http_status() as ngx_int_t,
            Failure::BadAnswer | Failure::PooldLost => 502,
        }
    }

    /// The `$pool_status` value it leaves (unless an earlier step of the request set one).
    pub(crate) fn pool_status(self) -> &'static str {
        match self {
            Failure::Unavailable => "unavailable",
            Failure::ClientGone => "cancelled",
            Failure::Full => "full",
            Failure::QueueTimeout => "queue_timeout",
            Failure::Timeout | Failure::InPool(FailReason::Timeout) => "timeout",
            Failure::InPool(FailReason::WorkerDied) => "crashed",
            _ => "error",
        }
    }

    /// A refusal under load: answered with `Retry-After`, its line logged at the location's
    /// `pool_log_level` and summed up per second when they come fast (`rejections.rs`).
    pub(crate) fn is_rejection(self) -> bool {
        self.http_status() == 503
    }

    /// What a region written over would also give (a broken answer, a lost slot, a full queue):
    /// the pool's region is checked after it.
    pub(crate) fn may_mean_corruption(self) -> bool {
        !matches!(
            self,
            Failure::Timeout
                | Failure::InPool(FailReason::Timeout)
                | Failure::ClientBody(_)
                | Failure::ClientGone
                | Failure::BadHead
                | Failure::HeadTooLarge
        ) && self.http_status() >= 500
    }
}
