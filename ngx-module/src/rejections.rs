//! Overload must not flood the error log: a pool's 503s (queue full, `queue_timeout`, no poold)
//! are logged at the location's `pool_log_level` (as `limit_req_log_level` does for
//! `limit_req`), the first of each second as it happens and the rest summed up in one line per
//! second and pool. `pool_status` keeps the exact counts.

use nginx_sys::{ngx_event_t, ngx_http_request_t};
use std::cell::RefCell;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// One pool's rejections in this nginx worker.
pub struct Rejections {
    /// When the last line was written as it happened: until a second later, others are counted.
    logged_at: Option<Instant>,
    suppressed: u64,
    level: u32,
    last_reason: String,
    /// Fires at the end of the window to write the summary (leaked: lives as long as the
    /// worker; cancelable, so it never delays a graceful exit).
    timer: *mut ngx_event_t,
}

thread_local! {
    static POOLS: RefCell<Vec<Rejections>> = const { RefCell::new(Vec::new()) };
}

/// Sets up one entry per pool (the worker's `init_process`).
pub fn init(pools: &[String]) {
    let entries = pools
        .iter()
        .enumerate()
        .map(|(i, _)| {
            // SAFETY: an all-zero ngx_event_t is nginx's idle event; leaked, so its address stays
            // valid while it may sit in the timer tree.
            let ev: &'static mut ngx_event_t = Box::leak(Box::new(unsafe { std::mem::zeroed() }));
            ev.handler = Some(on_timer);
            ev.data = i as *mut std::ffi::c_void;
            ev.log = crate::log::cycle_log();
            ev.set_cancelable(1);
            Rejections {
                logged_at: None,
                suppressed: 0,
                level: nginx_sys::NGX_LOG_ERR,
                last_reason: String::new(),
                timer: ev,
            }
        })
        .collect();
    POOLS.with(|p| *p.borrow_mut() = entries);
}

/// Pool `i` answered request `r` with 503 for `reason`: logs it at `level`, or counts it for
/// the summary if a line was written less than a second ago.
pub fn note(i: usize, r: *mut ngx_http_request_t, level: u32, reason: &str) {
    let now = Instant::now();
    let write_now = POOLS.with(|p| {
        let mut pools = p.borrow_mut();
        let Some(e) = pools.get_mut(i) else {
            return true;
        };
        if e.logged_at.is_some_and(|t| now < t + WINDOW) {
            e.suppressed += 1;
            e.level = level;
            if e.last_reason != reason {
                e.last_reason = reason.to_string();
            }
            // SAFETY: our leaked timer event; arming it when not armed.
            unsafe {
                if (*e.timer).timer_set() == 0 {
                    let left = (e.logged_at.map_or(now, |t| t + WINDOW) - now).as_millis();
                    nginx_sys::ngx_add_timer(e.timer, left.max(1) as nginx_sys::ngx_msec_t);
                }
            }
            false
        } else {
            e.logged_at = Some(now);
            true
        }
    });
    if write_now {
        crate::log::log_request_at(r, level, reason);
    }
}

unsafe extern "C" fn on_timer(ev: *mut ngx_event_t) {
    // SAFETY: our timer; its data is the pool index.
    let i = unsafe { (*ev).data as usize };
    crate::edge::guard("timer", || (), || flush(i));
}

/// Writes pool `i`'s summary line, if it has rejections not yet logged.
fn flush(i: usize) {
    let summary = POOLS.with(|p| {
        let mut pools = p.borrow_mut();
        let e = pools.get_mut(i)?;
        let n = std::mem::take(&mut e.suppressed);
        // The next rejection is logged as it happens again.
        e.logged_at = None;
        (n > 0).then(|| (n, e.level, std::mem::take(&mut e.last_reason)))
    });
    if let Some((n, level, last)) = summary {
        crate::log::log(
            level,
            &format!("{n} more requests got 503 in the last second (the last: {last})"),
        );
    }
}
