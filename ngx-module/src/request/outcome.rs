//! What a request records of its way through the pool, for the `$pool_*` variables
//! ([`crate::variables`], which reads it in the log phase and knows nothing else of requests).

/// What a request's context records of its way through the pool (CLOCK_MONOTONIC µs, the
/// clock the slots' `started_us` use in every process).
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub queued_us: Option<u64>,
    pub started_us: Option<u64>,
    pub finished_us: Option<u64>,
    pub worker_pid: Option<u32>,
    /// `ok`, `crashed`, `timeout`, `full`, `queue_timeout`, `cancelled`, `error`,
    /// `unavailable`; none while it runs.
    pub status: Option<&'static str>,
}

impl Outcome {
    /// Sets the status unless one is set already (the first reason is the real one).
    pub fn end(&mut self, status: &'static str) {
        self.status.get_or_insert(status);
    }
}
