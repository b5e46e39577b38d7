//! The `pool_pass` content handler: request into shared memory, suspend, stream the answer.
//!
//! Request lifecycle per the development guide ("Request finalization", "Request body"):
//! the handler starts reading the body (`ngx_http_read_client_request_body`, which takes a
//! reference on the request); once nginx has it (in memory or its temp file), the request gets
//! a context in its pool and is written into the pool's region ([`crate::upload`]) and queued.
//! From then on the request is suspended and driven by events: the eventfd (a pool worker made
//! progress: it read our body, published response bytes, or finished), write events (the client
//! took bytes, [`crate::download`]), the deadline and retry timers, and the loss of poold.
//! Exactly one of them finalizes the request (`ngx_http_finalize_request`), dropping that
//! reference. A cleanup on the request pool gives the slot back when the request is freed:
//! then nginx has sent every byte that pointed into the region.
//!
//! One role a file: [`head`] (the request's head encoded, its context made), [`waiting`] (for a
//! pool's attachment), [`body`] (the body in, whole or as it arrives), [`respond`] (the answer
//! out, buffered or streamed); this file holds the entry, the admission into the queue, the
//! events that drive a request and its finishing.

use crate::attach::State;
use crate::buffered::{Buffered, Feed, Turn};
use crate::directives::buffering::Effective;
use crate::directives::Module;
use crate::download::{self, Download, Pump, Started};
use crate::runtime::{self, with_pool, InFlight};
use crate::upload::{BodyPart, Pumped, Upload};
use crate::variables::Outcome;
use nginx_sys::{
    ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_str_t, NGX_DONE, NGX_ERROR,
    NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_ERR,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleServerConf, Request};
use ngx_pool_channel::message::{encode_request_head, RequestHead, ServerSide};
use ngx_pool_channel::outgoing::NotOpened;
use ngx_pool_channel::slot::{self, SlotId, SlotState};
use ngx_pool_channel::stream;
use ngx_pool_channel::Region;
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;

mod body;
mod failure;
mod head;
mod respond;
mod waiting;

use body::*;
pub(crate) use failure::Failure;
use head::*;
use respond::*;
use waiting::*;

/// How soon a request waiting for arena space looks again.
const ARENA_RETRY_MS: usize = 5;

/// Per-request state, in the request pool; dropped by its pool cleanup.
struct Ctx {
    pool: usize,
    /// The slot, once the request is queued.
    slot: Option<SlotId>,
    /// We still own finalizing the request.
    active: bool,
    r: *mut ngx_http_request_t,
    /// The deadline (first the queue deadline, while `queue_phase` is set).
    timer: ngx_event_t,
    /// Looks again when the arena was full.
    retry: ngx_event_t,
    queue_phase: Option<(u64, u64)>,
    /// The pool's mapping, held while buffers may point into it.
    region: Rc<Region>,
    upload: Option<Upload>,
    /// The response, once its head is out: streamed from the arena, or buffered.
    download: Option<Download>,
    buffered: Option<Buffered>,
    /// The location's buffering settings.
    buffering: Effective,
    timeout_ms: u64,
    /// The location's `pool_timeout`, passed on for poold to enforce too.
    own_timeout: Option<u64>,
    /// Its way through the pool, for the `$pool_*` variables.
    outcome: Outcome,
}

/// What request `r` recorded of its way through the pool, if it got that far.
pub fn outcome_of(r: *mut ngx_http_request_t) -> Option<Outcome> {
    // SAFETY: a live context (it lives until the request's pool goes, after the log phase).
    ctx_of(r).map(|c| unsafe { (*c).outcome })
}

fn now_ms() -> u64 {
    ngx_pool_channel::sys::monotonic_ms()
}

fn pool_index(r: *mut ngx_http_request_t) -> Option<usize> {
    // SAFETY: `r` is a live request nginx handed us.
    let req = unsafe { Request::from_ngx_http_request(r) };
    Module::location_conf(req).and_then(|c| c.pool)
}

pub fn log_request(r: *mut ngx_http_request_t, msg: &str) {
    log_request_at(r, NGX_LOG_ERR, msg);
}

/// Logs `msg` at `level` in the request's log (which names the client and the request).
pub fn log_request_at(r: *mut ngx_http_request_t, level: u32, msg: &str) {
    // SAFETY: a live request's connection log.
    let log = unsafe { (*(*r).connection).log };
    ngx::ngx_log_error!(level, log, "{}", msg);
}

/// The location's `pool_log_level` (for 503s), nginx's `error` unless set.
fn rejection_level(r: *mut ngx_http_request_t) -> u32 {
    // SAFETY: `r` is a live request nginx handed us.
    let req = unsafe { Request::from_ngx_http_request(r) };
    Module::location_conf(req)
        .and_then(|c| c.log_level)
        .unwrap_or(NGX_LOG_ERR)
}

/// Answers-to-come of 503: logged at the location's level, summed up under load.
fn note_rejection(pool: usize, r: *mut ngx_http_request_t, msg: &str) {
    crate::rejections::note(pool, r, rejection_level(r), msg);
}

/// Adds `Retry-After: 1` to a 503 about to be sent.
fn add_retry_after(r: *mut ngx_http_request_t) {
    // SAFETY: a live request whose header is not sent yet.
    unsafe { download::push_header(r, b"Retry-After", b"1") };
}

fn pool_name(i: usize) -> String {
    with_pool(i, |p| p.name.clone()).unwrap_or_else(|_| "?".into())
}

/// The content handler of `pool_pass` locations.
///
/// # Safety
/// Called by nginx's content phase with a live request.
pub unsafe extern "C" fn pool_pass_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // Nothing is started for the request before body reading: a panic here is a plain 500.
    let ready = crate::edge::guard(
        "content",
        || Err(Failure::Internal.http_status()),
        || {
            let i = pool_index(r).ok_or(NGX_ERROR as ngx_int_t)?;
            if runtime::ensure_attached(i) == State::Down {
                let f = Failure::Unavailable;
                log_failure(r, Some(i), f, &unattached(i));
                return Err(f.http_status());
            }
            Ok(())
        },
    );
    if let Err(rc) = ready {
        return rc;
    }
    if !buffers_request_body(r) {
        // SAFETY: a live request whose body reading has not started.
        unsafe { (*r).set_request_body_no_buffering(1) };
    }
    // SAFETY: standard body reading; nginx calls `body_ready` once the body is in memory or in a
    // temporary file, holding a reference on the request until we finalize it.
    let rc = unsafe { nginx_sys::ngx_http_read_client_request_body(r, Some(body_ready)) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return rc;
    }
    NGX_DONE as ngx_int_t
}

unsafe extern "C" fn body_ready(r: *mut ngx_http_request_t) {
    crate::edge::guard("body", || recover(r), || start(r));
}

/// After a panic at an entry point of request `r`: the request is finalized once, with 500
/// (or its connection closed if the response head was out), whatever state it was left in.
fn recover(r: *mut ngx_http_request_t) {
    match ctx_of(r) {
        Some(ctx) => fail(ctx, Failure::Internal, String::new()),
        None => finish(r, Failure::Internal.http_status()),
    }
}

/// Recovery for an event whose data is a request context.
fn recover_ctx(ctx: *mut Ctx) {
    fail(ctx, Failure::Internal, String::new());
}

/// Why a request does not go to its pool now.
enum Refused {
    /// Answer it so, logging the line (none if empty: it is logged already).
    Failed(Failure, String),
    /// Its pool is attaching: wait (see [`park`]).
    Wait(usize),
}

impl From<Failure> for Refused {
    fn from(f: Failure) -> Refused {
        Refused::Failed(f, String::new())
    }
}

/// The line of a request refused because pool `i` has no poold attached.
fn unattached(i: usize) -> String {
    format!("pool \"{}\" has no poold attached; 503", pool_name(i))
}

/// Logs why request `r` (of pool `pool`, when it is known) failed, where the failure's lines
/// go, and adds the retry hint to its answer; nothing is logged for an empty `msg`.
fn log_failure(r: *mut ngx_http_request_t, pool: Option<usize>, f: Failure, msg: &str) {
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
fn refuse(r: *mut ngx_http_request_t, pool: Option<usize>, f: Failure, msg: &str) {
    log_failure(r, pool, f, msg);
    finish(r, f.http_status());
}

/// The body is read: the request goes to the pool (or is answered now).
fn start(r: *mut ngx_http_request_t) {
    match begin(r) {
        Ok(ctx) => submit(ctx),
        Err(Refused::Wait(pool)) => park(r, pool),
        Err(Refused::Failed(f, msg)) => {
            let pool = pool_index(r);
            log_failure(r, pool, f, &msg);
            // SAFETY: finalizing drops the reference body reading took; exactly once.
            unsafe { nginx_sys::ngx_http_finalize_request(r, f.http_status()) };
        }
    }
}

/// Moves `ctx` into the request pool with its cleanup, arms the deadline, and takes over the
/// request's event handlers.
fn suspend(r: *mut ngx_http_request_t, ctx: Ctx) -> Option<*mut Ctx> {
    let first = ctx.queue_phase.map_or(ctx.timeout_ms, |(q, _)| q);
    // SAFETY: allocations come from the live request's pool. The cleanup is registered before
    // the context is written, so the context is always dropped exactly once (by the cleanup,
    // which runs before the pool's memory goes); the timers it holds are deleted there too.
    unsafe {
        let rpool = (*r).pool;
        let cln = nginx_sys::ngx_pool_cleanup_add(rpool, 0);
        let p = nginx_sys::ngx_pcalloc(rpool, std::mem::size_of::<Ctx>()) as *mut Ctx;
        if cln.is_null() || p.is_null() {
            return None;
        }
        ptr::write(p, ctx);
        (*cln).handler = Some(cleanup);
        (*cln).data = p as *mut c_void;
        let req = Request::from_ngx_http_request(r);
        req.set_module_ctx(p as *mut c_void, Module::module());
        let log = (*(*r).connection).log;
        for (ev, handler) in [
            (
                ptr::addr_of_mut!((*p).timer),
                on_timeout as unsafe extern "C" fn(_),
            ),
            (ptr::addr_of_mut!((*p).retry), on_retry),
        ] {
            (*ev).handler = Some(handler);
            (*ev).data = p as *mut c_void;
            (*ev).log = log;
        }
        nginx_sys::ngx_add_timer(
            ptr::addr_of_mut!((*p).timer),
            first as nginx_sys::ngx_msec_t,
        );
        (*r).read_event_handler = Some(if (*r).reading_body() != 0 {
            on_body_read
        } else {
            nginx_sys::ngx_http_test_reading
        });
        (*r).write_event_handler = Some(on_write);
        Some(p)
    }
}

/// Takes a slot, writes the head and the first part of the body, queues the request.
fn submit(ctx: *mut Ctx) {
    // SAFETY: `ctx` is a live context (made by `suspend`, dropped only by the pool cleanup).
    let c = unsafe { &mut *ctx };
    // Only for error lines: the common path allocates nothing for it.
    let pool = c.pool;
    let name = || pool_name(pool);
    let region = c.region.clone();
    let attached = with_pool(c.pool, |p| {
        p.attached
            .as_ref()
            .filter(|a| Rc::ptr_eq(&a.region, &region))
            .map(|a| (a.conn, a.conn_gen))
    })
    .ok()
    .flatten();
    let Some((conn, conn_gen)) = attached else {
        return fail(
            ctx,
            Failure::Unavailable,
            format!("pool \"{}\": poold went away", name()),
        );
    };
    let Some(up) = c.upload.as_mut() else {
        return fail(ctx, Failure::Internal, String::new());
    };
    // Past the arena's rules for waiting requests (`outgoing::open`), the request waits in
    // nginx for room, holding nothing of the arena, bounded by the queue deadline (then 503).
    let id = match up.open(&region, conn, conn_gen) {
        Ok(id) => id,
        Err(NotOpened::ArenaFull) => return arm_retry(ctx),
        Err(NotOpened::Broken(e)) => {
            return fail(ctx, Failure::BadAnswer, format!("pool \"{}\": {e}", name()))
        }
        Err(NotOpened::NoSlot) => {
            let g = region.geometry();
            let stats = &region.header().stats;
            stats
                .rejected_full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A slot is counted in use just after it leaves the free list (and uncounted just
            // before it returns), so at most one per process (nginx workers, pool workers) is
            // in neither: a free list empty while far fewer are counted was emptied by a write
            // over it.
            let counted = stats
                .slots_in_use
                .load(std::sync::atomic::Ordering::Relaxed);
            let in_between = u64::from(g.max_conns) + u64::from(g.max_workers);
            if counted + in_between < u64::from(g.slots) {
                runtime::report_corruption(
                    c.pool,
                    Some(&format!(
                        "no free slot while {counted} of {} are in use",
                        g.slots
                    )),
                );
            }
            return fail(
                ctx,
                Failure::Full,
                format!("pool \"{}\": queue full (all slots in use)", name()),
            );
        }
    };
    if let Pumped::Failed(e) = up.pump(&region, true) {
        slot::release(region.nginx_side(), id);
        return fail(ctx, Failure::Internal, format!("pool \"{}\": {e}", name()));
    }
    if !up.enqueue(&region, c.own_timeout) {
        slot::release(region.nginx_side(), id);
        // The queue holds as many cells as there are slots: a request holding a fresh slot
        // always finds room, unless some process wrote over the queue.
        runtime::report_corruption(c.pool, Some("a request holding a slot could not be queued"));
        return fail(
            ctx,
            Failure::Full,
            format!("pool \"{}\": could not queue the request", name()),
        );
    }
    let r = c.r;
    let pool = c.pool;
    let track = || {
        with_pool(pool, |p| {
            p.inflight.insert(id.index, InFlight { gen: id.gen, r })
        })
    };
    let tracked = if crate::edge::injected("reenter") {
        // Test-only: the access nested in another, as a bug would make it.
        with_pool(pool, |_| track()).and_then(|inner| inner)
    } else {
        track()
    };
    if tracked.is_err() {
        // Untracked, no completion would reach it: take it back and answer now (a worker,
        // woken for it, frees the withdrawn slot it finds in the queue).
        slot::abandon(region.nginx_side(), id);
        crate::runtime::wake_workers_later(c.pool);
        return fail(
            ctx,
            Failure::Internal,
            format!("pool \"{}\": the request could not be tracked", name()),
        );
    }
    c.slot = Some(id);
    c.outcome.queued_ms = Some(now_ms());
    crate::runtime::wake_workers_later(c.pool);
    progress(ctx);
}

fn arm_retry(ctx: *mut Ctx) {
    // SAFETY: the context is live; its retry event was set up in `suspend`.
    unsafe {
        let ev = ptr::addr_of_mut!((*ctx).retry);
        if (*ev).timer_set() == 0 {
            nginx_sys::ngx_add_timer(ev, ARENA_RETRY_MS as nginx_sys::ngx_msec_t);
        }
    }
}

/// Drives a suspended request after any event: more body in, response out, or its end.
fn progress(ctx: *mut Ctx) {
    drive(ctx, false);
}

/// As [`progress`]; `client` when the event is the client's (it can take more bytes, or its
/// send timed out).
fn drive(ctx: *mut Ctx, client: bool) {
    // SAFETY: `ctx` is a live context.
    let c = unsafe { &mut *ctx };
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

/// Gives the slot back now (the request still lives) and forgets it.
fn forget_slot(ctx: *mut Ctx) {
    // SAFETY: `ctx` is a live context.
    let c = unsafe { &mut *ctx };
    if let Some(id) = c.slot.take() {
        runtime::forget_inflight(c.pool, id.index, id.gen, c.r);
        // Usually the answer was read (Done or Failed): free it at once; otherwise abandon.
        if !slot::release(c.region.nginx_side(), id) {
            slot::abandon(c.region.nginx_side(), id);
        }
    }
}

/// Marks the context finished and stops its timers. Returns false if it already was.
fn deactivate(ctx: *mut Ctx) -> bool {
    // SAFETY: `ctx` is a live context; deleting our own timers.
    unsafe {
        if !(*ctx).active {
            return false;
        }
        (*ctx).active = false;
        for ev in [
            ptr::addr_of_mut!((*ctx).timer),
            ptr::addr_of_mut!((*ctx).retry),
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
fn fail(ctx: *mut Ctx, failure: Failure, msg: String) {
    // SAFETY: `ctx` is a live context.
    let (r, streaming, pool) = unsafe {
        let c = &*ctx;
        (c.r, c.download.is_some() || c.buffered.is_some(), c.pool)
    };
    if !deactivate(ctx) {
        return;
    }
    release_unless_sending(ctx);
    if failure.may_mean_corruption() {
        runtime::suspect_corruption(pool);
    }
    // SAFETY: as above.
    unsafe { (*ctx).outcome.end(failure.pool_status()) };
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
fn complete(ctx: *mut Ctx, rc: ngx_int_t) {
    // SAFETY: `ctx` is a live context.
    let r = unsafe { (*ctx).r };
    // SAFETY: as above.
    unsafe { (*ctx).outcome.end("ok") };
    if deactivate(ctx) {
        finish(r, rc);
    }
}

/// The connection failed mid-response: close it.
fn terminate(ctx: *mut Ctx) {
    // SAFETY: `ctx` is a live context.
    let r = unsafe { (*ctx).r };
    // SAFETY: as above.
    unsafe { (*ctx).outcome.end("cancelled") };
    if deactivate(ctx) {
        release_unless_sending(ctx);
        finish(r, NGX_ERROR as ngx_int_t);
    }
}

/// A request that ends early gives its slot back now, unless nginx may still be sending bytes
/// that point into the region (a streamed answer): the request itself may live on for a while
/// (nginx's lingering close of an unread body lasts up to `lingering_time`), and a slot held
/// that long by a failed request would count against the pool's queue.
fn release_unless_sending(ctx: *mut Ctx) {
    // SAFETY: `ctx` is a live context.
    if unsafe { (*ctx).download.is_none() } {
        forget_slot(ctx);
    }
}

/// Finalizes `r` with `rc` and runs the connection's posted requests.
fn finish(r: *mut ngx_http_request_t, rc: ngx_int_t) {
    // SAFETY: `r` is live and suspended by us; finalize drops our reference exactly once; the
    // connection outlives the request's finalization call.
    unsafe {
        let c = (*r).connection;
        nginx_sys::ngx_http_finalize_request(r, rc);
        nginx_sys::ngx_http_run_posted_requests(c);
    }
}

unsafe extern "C" fn cleanup(data: *mut c_void) {
    // SAFETY: nginx runs the cleanup we registered, with our context, once.
    crate::edge::guard("cleanup", || (), || unsafe { clean(data as *mut Ctx) });
}

/// # Safety
/// `ctx` is the request's context, and this is its pool's cleanup (run once).
unsafe fn clean(ctx: *mut Ctx) {
    deactivate(ctx);
    forget_slot(ctx);
    // SAFETY: `data` is the context written in `suspend`; this cleanup is its only owner's last
    // use, and nothing refers to it after the pool is gone.
    unsafe { ptr::drop_in_place(ctx) };
}

/// The request's context, if it is one of ours.
fn ctx_of(r: *mut ngx_http_request_t) -> Option<*mut Ctx> {
    // SAFETY: `r` is a live request; our module's context slot holds a `Ctx` or nothing.
    unsafe {
        let req = Request::from_ngx_http_request(r);
        req.get_module_ctx::<Ctx>(Module::module())
            .map(|c| c as *const Ctx as *mut Ctx)
    }
}

/// The pool made progress on request `r` (called from the eventfd handler).
pub fn on_pool_event(r: *mut ngx_http_request_t) {
    if let Some(ctx) = ctx_of(r) {
        progress(ctx);
    }
}

/// The pool's poold went away with request `r` in flight.
pub fn on_pool_lost(r: *mut ngx_http_request_t) {
    if let Some(ctx) = ctx_of(r) {
        fail(ctx, Failure::PooldLost, String::new());
    }
}

/// The client can take more bytes.
unsafe extern "C" fn on_write(r: *mut ngx_http_request_t) {
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

unsafe extern "C" fn on_retry(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its context, alive while the timer is set.
    let ctx = unsafe { (*ev).data as *mut Ctx };
    crate::edge::guard("timer", || recover_ctx(ctx), || retry(ctx));
}

fn retry(ctx: *mut Ctx) {
    // SAFETY: as above.
    if unsafe { (*ctx).slot.is_none() } {
        submit(ctx);
    } else {
        progress(ctx);
    }
}

unsafe extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its context, alive while the timer is set.
    let ctx = unsafe { (*ev).data as *mut Ctx };
    crate::edge::guard("timer", || recover_ctx(ctx), || timeout(ev, ctx));
}

fn timeout(ev: *mut ngx_event_t, ctx: *mut Ctx) {
    // SAFETY: as above.
    let c = unsafe { &mut *ctx };
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
