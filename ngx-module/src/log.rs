//! Writing to nginx's error log: the cycle's log for what concerns a pool or the worker, the
//! request's connection log (which names the client and the request) for what concerns one
//! request. A leaf: every other module may log without importing the one that owns the state.

use nginx_sys::{ngx_http_request_t, ngx_log_t, NGX_LOG_ERR};

/// The cycle's log.
pub fn cycle_log() -> *mut ngx_log_t {
    // SAFETY: ngx_cycle is set for the worker's whole life.
    unsafe { (*nginx_sys::ngx_cycle).log }
}

/// Logs `msg` at `level` in the cycle's log.
pub fn log(level: u32, msg: &str) {
    ngx::ngx_log_error!(level, cycle_log(), "{}", msg);
}

/// Logs `msg` at `error` in request `r`'s log.
pub fn log_request(r: *mut ngx_http_request_t, msg: &str) {
    log_request_at(r, NGX_LOG_ERR, msg);
}

/// Logs `msg` at `level` in request `r`'s log (which names the client and the request).
pub fn log_request_at(r: *mut ngx_http_request_t, level: u32, msg: &str) {
    // SAFETY: a live request's connection log.
    let log = unsafe { (*(*r).connection).log };
    ngx::ngx_log_error!(level, log, "{}", msg);
}
