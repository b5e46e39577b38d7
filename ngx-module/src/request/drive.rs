//! Driving a suspended request: the events that move it (the pool's eventfd through the
//! in-flight table, the client's write events, the retry and deadline timers) and the one step
//! each of them takes: more body in, the answer out, or its end.

use super::*;

/// Drives a suspended request after any event: more body in, response out, or its end.
pub(super) fn progress(ctx: CtxRef) {
    drive(ctx, false);
}

/// As [`progress`]; `client` when the event is the client's (it can take more bytes, or its
/// send timed out).
pub(super) fn drive(ctx: CtxRef, client: bool) {
    let c = ctx.get();
    if !c.active {
        return;
    }
    // SAFETY: the request's connection and its write event are live.
    if client && unsafe { (*(*(*c.r).connection).write).timedout() } != 0 {
        // `send_timeout` passed without the client taking a byte (armed while it had bytes to
        // take, as ngx_http_writer does): close, and the pool worker stops.
        // SAFETY: as above.
        unsafe {
            let conn = (*c.r).connection;
            (*conn).set_timedout(1);
            nginx_sys::ngx_connection_error(
                conn,
                libc::ETIMEDOUT as _,
                c"client timed out".as_ptr() as *mut _,
            );
        }
        return terminate(ctx);
    }
    let Some(id) = c.slot else {
        return;
    };
    let region = c.region.clone();
    let state = slot::state_of(&region, id);
    if !matches!(state, Some(SlotState::Queued)) {
        observe(&mut c.outcome, &region, id, state);
    }
    match state {
        Some(SlotState::Queued) | Some(SlotState::Running) | Some(SlotState::Streaming) => {
            if !pump_upload(ctx, &region, id, state == Some(SlotState::Queued)) {
                return;
            }
            if state == Some(SlotState::Streaming) {
                respond(ctx, &region, id, None, client);
            }
        }
        Some(SlotState::Done) => {
            c.upload = None;
            let total = slot::response(&region, id).map(|(_, t)| t);
            respond(ctx, &region, id, total, client);
        }
        Some(SlotState::Failed) => {
            let reason = slot::fail_reason(&region, id);
            fail(
                ctx,
                Failure::InPool(reason),
                format!(
                    "pool \"{}\": request failed in the pool: {reason:?}",
                    pool_name(c.pool)
                ),
            );
        }
        other => fail(
            ctx,
            Failure::BadAnswer,
            format!(
                "pool \"{}\": request lost its slot (state {other:?})",
                pool_name(c.pool)
            ),
        ),
    }
}

/// What the runtime tells a request in flight.
pub(super) static TELL: runtime::Tell = runtime::Tell {
    progress: on_pool_event,
    lost: on_pool_lost,
};

/// The pool made progress on request `r` (called from the eventfd handler).
pub(super) fn on_pool_event(r: *mut ngx_http_request_t) {
    if let Some(ctx) = ctx_of(r) {
        progress(ctx);
    }
}

/// The pool's poold went away with request `r` in flight.
pub(super) fn on_pool_lost(r: *mut ngx_http_request_t) {
    if let Some(ctx) = ctx_of(r) {
        fail(ctx, Failure::PooldLost, String::new());
    }
}

/// The client can take more bytes.
pub(super) unsafe extern "C" fn on_write(r: *mut ngx_http_request_t) {
    crate::edge::guard(
        "write",
        || recover(r),
        || {
            if let Some(ctx) = ctx_of(r) {
                drive(ctx, true);
            }
        },
    );
}

pub(super) unsafe extern "C" fn on_retry(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its context, alive while the timer is set.
    let ctx = unsafe { CtxRef::of_event(ev) };
    crate::edge::guard("timer", || recover_ctx(ctx), || retry(ctx));
}

pub(super) fn retry(ctx: CtxRef) {
    // SAFETY: as above.
    if ctx.get().slot.is_none() {
        submit(ctx);
    } else {
        progress(ctx);
    }
}

pub(super) unsafe extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its context, alive while the timer is set.
    let ctx = unsafe { CtxRef::of_event(ev) };
    crate::edge::guard("timer", || recover_ctx(ctx), || timeout(ev, ctx));
}

pub(super) fn timeout(ev: *mut ngx_event_t, ctx: CtxRef) {
    // SAFETY: as above.
    let c = ctx.get();
    if matches!(c.tunnel, Some(Tunnel::Open { .. })) {
        // An open tunnel has no deadline: its timer is a grace (see `tunnel`).
        return tunnel::grace_over(ctx);
    }
    let name = pool_name(c.pool);
    if let Some((waited, rest)) = c.queue_phase.take() {
        let Some(id) = c.slot else {
            return fail(
                ctx,
                Failure::QueueTimeout,
                format!("pool \"{name}\": no arena space for the request within queue_timeout ({waited} ms); 503"),
            );
        };
        if !slot::withdraw_queued(c.region.nginx_side(), id) {
            // A worker has it: the rest of the deadline applies.
            // SAFETY: re-arming our own timer, which just fired.
            unsafe { nginx_sys::ngx_add_timer(ev, rest as nginx_sys::ngx_msec_t) };
            return;
        }
        return fail(
            ctx,
            Failure::QueueTimeout,
            format!("pool \"{name}\": no worker took the request within queue_timeout ({waited} ms); 503"),
        );
    }
    // SAFETY: reading the URI of a live request.
    let uri = String::from_utf8_lossy(ngx_bytes(unsafe { &(*c.r).unparsed_uri })).into_owned();
    if let Some(id) = c.slot {
        if slot::withdraw_queued(c.region.nginx_side(), id) {
            // No worker ever took it: the pool was too busy, which is a 503 (retry later), not
            // a 504 (the handler was too slow).
            return fail(
                ctx,
                Failure::QueueTimeout,
                format!("pool \"{name}\": no worker took request \"{uri}\" within its timeout ({} ms); 503", c.timeout_ms),
            );
        }
    }
    // Never queued (it waited for arena space all along): the pool was too busy, as above.
    let failure = if c.slot.is_none() {
        Failure::QueueTimeout
    } else {
        Failure::Timeout
    };
    let what = if c.download.is_some() || c.buffered.is_some() {
        "; closing the response"
    } else {
        ""
    };
    fail(
        ctx,
        failure,
        format!(
            "pool \"{name}\": request \"{uri}\" timed out after {} ms (slot {}){what}",
            c.timeout_ms,
            c.slot.map_or(-1, |s| s.index as i64)
        ),
    );
}
