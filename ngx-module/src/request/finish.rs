//! Finishing a request: exactly once, with its answer handed to nginx, with a failure's status
//! ([`Failure`]), or by closing a connection whose answer was already under way; its slot back,
//! its timers gone, and its context dropped with the request's pool.

use super::*;

/// Logs why request `r` (of pool `pool`, when it is known) failed, where the failure's lines
/// go, and adds the retry hint to its answer; nothing is logged for an empty `msg`.
pub(super) fn log_failure(r: *mut ngx_http_request_t, pool: Option<usize>, f: Failure, msg: &str) {
    match pool {
        Some(pool) if f.is_rejection() && !msg.is_empty() => note_rejection(pool, r, msg),
        _ if !msg.is_empty() => log_request(r, msg),
        _ => {}
    }
    if f.is_rejection() {
        add_retry_after(r);
    }
}

/// Answers request `r`, which has no context yet, for failure `f`.
pub(super) fn refuse(r: *mut ngx_http_request_t, pool: Option<usize>, f: Failure, msg: &str) {
    log_failure(r, pool, f, msg);
    finish(r, f.http_status());
}

/// Gives the slot back now (the request still lives) and forgets it.
pub(super) fn forget_slot(ctx: CtxRef) {
    let c = ctx.get();
    if let Some(id) = c.slot.take() {
        runtime::forget_inflight(c.pool, id.index, id.gen, c.r);
        // Usually the answer was read (Done or Failed): free it at once; otherwise abandon.
        if !slot::release(c.region.nginx_side(), id) {
            slot::abandon(c.region.nginx_side(), id);
        }
    }
}

/// Marks the context finished and stops its timers. Returns false if it already was.
pub(super) fn deactivate(ctx: CtxRef) -> bool {
    let c = ctx.get();
    if !c.active {
        return false;
    }
    c.active = false;
    // SAFETY: deleting our own timers, in the live context.
    unsafe {
        for ev in [
            ptr::addr_of_mut!((*ctx.raw()).timer),
            ptr::addr_of_mut!((*ctx.raw()).retry),
        ] {
            if (*ev).timer_set() != 0 {
                nginx_sys::ngx_del_timer(ev);
            }
        }
        true
    }
}

/// Ends the request for `failure`: with its status, or by closing the connection if the
/// response header is already out. `msg` goes to the error log (unless empty).
pub(super) fn fail(ctx: CtxRef, failure: Failure, msg: String) {
    let c = ctx.get();
    let (r, streaming, pool) = (c.r, c.download.is_some() || c.buffered.is_some(), c.pool);
    if !deactivate(ctx) {
        return;
    }
    release_unless_sending(ctx);
    if failure.may_mean_corruption() {
        runtime::suspect_corruption(pool);
    }
    ctx.get().outcome.end(failure.pool_status());
    if streaming {
        if !msg.is_empty() {
            log_request(r, &msg);
        }
        return finish(r, NGX_ERROR as ngx_int_t);
    }
    log_failure(r, Some(pool), failure, &msg);
    finish(r, failure.http_status());
}

/// The response is handed to nginx whole: finalize (nginx sends what is still buffered).
pub(super) fn complete(ctx: CtxRef, rc: ngx_int_t) {
    let r = ctx.get().r;
    ctx.get().outcome.end("ok");
    if deactivate(ctx) {
        finish(r, rc);
    }
}

/// The connection failed mid-response: close it.
pub(super) fn terminate(ctx: CtxRef) {
    let r = ctx.get().r;
    ctx.get().outcome.end("cancelled");
    if deactivate(ctx) {
        release_unless_sending(ctx);
        finish(r, NGX_ERROR as ngx_int_t);
    }
}

/// A request that ends early gives its slot back now, unless nginx may still be sending bytes
/// that point into the region (a streamed answer): the request itself may live on for a while
/// (nginx's lingering close of an unread body lasts up to `lingering_time`), and a slot held
/// that long by a failed request would count against the pool's queue.
pub(super) fn release_unless_sending(ctx: CtxRef) {
    if ctx.get().download.is_none() {
        forget_slot(ctx);
    }
}

/// Finalizes `r` with `rc` and runs the connection's posted requests.
pub(super) fn finish(r: *mut ngx_http_request_t, rc: ngx_int_t) {
    // SAFETY: `r` is live and suspended by us; finalize drops our reference exactly once; the
    // connection outlives the request's finalization call.
    unsafe {
        let c = (*r).connection;
        nginx_sys::ngx_http_finalize_request(r, rc);
        nginx_sys::ngx_http_run_posted_requests(c);
    }
}

pub(super) unsafe extern "C" fn cleanup(data: *mut c_void) {
    // SAFETY: nginx runs the cleanup we registered, with our context, once.
    crate::edge::guard(
        "cleanup",
        || (),
        || {
            if let Some(p) = std::ptr::NonNull::new(data as *mut Ctx) {
                // SAFETY: as above.
                unsafe { clean(CtxRef(p)) }
            }
        },
    );
}

/// # Safety
/// `ctx` is the request's context, and this is its pool's cleanup (run once).
pub(super) unsafe fn clean(ctx: CtxRef) {
    deactivate(ctx);
    forget_slot(ctx);
    // SAFETY: `data` is the context written in `suspend`; this cleanup is its only owner's last
    // use, and nothing refers to it after the pool is gone.
    unsafe { ptr::drop_in_place(ctx.raw()) };
}
