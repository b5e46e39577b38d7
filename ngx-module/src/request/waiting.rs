//! Requests that wait (briefly, in nginx) for their pool's attachment to finish.

use super::*;

/// How long a request waits for its pool's attachment (a handshake under way), and how often
/// it looks.
pub(super) const ATTACH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
pub(super) const ATTACH_LOOK_MS: nginx_sys::ngx_msec_t = 10;

/// A request waiting for its pool to attach, in its request pool.
pub(super) struct Waiting {
    r: *mut ngx_http_request_t,
    pool: usize,
    until: std::time::Instant,
    ev: ngx_event_t,
}

/// Lets request `r` wait (up to [`ATTACH_WAIT`]) for pool `i`'s handshake, looking every few
/// milliseconds: the worker serves everything else meanwhile. Then it goes on, or gets 503.
pub(super) fn park(r: *mut ngx_http_request_t, i: usize) {
    // SAFETY: allocations from the live request's pool; the cleanup, registered before the
    // value is written, deletes the timer if the request goes first (its client closed), and
    // the value needs no drop (plain data).
    unsafe {
        let rpool = (*r).pool;
        let cln = nginx_sys::ngx_pool_cleanup_add(rpool, 0);
        let w = nginx_sys::ngx_pcalloc(rpool, std::mem::size_of::<Waiting>()) as *mut Waiting;
        if cln.is_null() || w.is_null() {
            return finish(r, Failure::Internal.http_status());
        }
        ptr::write(
            w,
            Waiting {
                r,
                pool: i,
                until: std::time::Instant::now() + ATTACH_WAIT,
                ev: std::mem::zeroed(),
            },
        );
        (*cln).handler = Some(waiting_cleanup);
        (*cln).data = w as *mut c_void;
        let ev = ptr::addr_of_mut!((*w).ev);
        (*ev).handler = Some(on_waiting);
        (*ev).data = w as *mut c_void;
        (*ev).log = (*(*r).connection).log;
        nginx_sys::ngx_add_timer(ev, ATTACH_LOOK_MS);
    }
}

pub(super) unsafe extern "C" fn waiting_cleanup(data: *mut c_void) {
    let w = data as *mut Waiting;
    // SAFETY: the Waiting this cleanup was registered with, freed with the pool after this.
    unsafe {
        let ev = ptr::addr_of_mut!((*w).ev);
        if (*ev).timer_set() != 0 {
            nginx_sys::ngx_del_timer(ev);
        }
    }
}

pub(super) unsafe extern "C" fn on_waiting(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its Waiting, alive (in the request pool) while armed.
    let (r, pool, until) = unsafe {
        let w = (*ev).data as *mut Waiting;
        ((*w).r, (*w).pool, (*w).until)
    };
    crate::edge::guard(
        "timer",
        || finish(r, Failure::Internal.http_status()),
        || match runtime::ensure_attached(pool) {
            State::Attached => start(r),
            State::Pending if std::time::Instant::now() < until => {
                // SAFETY: re-arming our own timer, which just fired.
                unsafe { nginx_sys::ngx_add_timer(ev, ATTACH_LOOK_MS) }
            }
            _ => {
                let msg = format!(
                    "pool \"{}\": no poold answered within {} ms; 503",
                    pool_name(pool),
                    ATTACH_WAIT.as_millis()
                );
                refuse(r, Some(pool), Failure::Unavailable, &msg);
            }
        },
    );
}
