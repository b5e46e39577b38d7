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
//! One role a file, in the order a request meets them: this file (the entry, the context and
//! its handle, [`CtxRef`], whose doc states the lifetime rule every step relies on), [`head`](mod@head)
//! (the request's head encoded, its context made), [`waiting`](mod@waiting) (for a pool's attachment),
//! [`admit`](mod@admit) (a slot, the head into the region, the queue), [`body`](mod@body) (the body in, whole or as
//! it arrives), [`drive`](mod@drive) (the events that move a suspended request), [`respond`](mod@respond) (the answer
//! out, buffered or streamed), [`finish`](mod@finish) (its end, exactly once), with [`failure`](mod@failure) (every early
//! end's status, `$pool_status`, log level and Retry-After) and [`outcome`](mod@outcome) (what the `$pool_*`
//! variables read).

use crate::buffered::{Buffered, Feed, Turn};
use crate::directives::buffering::Effective;
use crate::directives::Module;
use crate::download::{self, Download, Pump, Started};
use crate::log::{log_request, log_request_at};
use crate::runtime::attach::State;
use crate::runtime::{self, with_pool, InFlight};
use crate::upload::{BodyPart, Pumped, Upload};
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

mod admit;
mod body;
mod drive;
mod failure;
mod finish;
mod head;
mod outcome;
mod respond;
mod tunnel;
mod waiting;

use admit::*;
use body::*;
use drive::*;
pub(crate) use failure::Failure;
use finish::*;
use head::*;
pub use outcome::Outcome;
use respond::*;
use tunnel::Tunnel;
use waiting::*;

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
    /// A WebSocket handshake the pool may upgrade, and then the upgraded connection.
    tunnel: Option<Tunnel>,
}

/// A request's context, by handle: what every step of a suspended request is given.
///
/// The lifetime rule, once: the context lives in the request's pool from [`suspend`] until the
/// pool's cleanup ([`clean`]) drops it, and a handle is only ever obtained from that context
/// (the module's context slot, or the data of an event `suspend` set up) and used by nginx's
/// handlers for that same request: its body, write and timer events, and the pool's eventfd
/// through the in-flight table. Before the context goes, `deactivate` deletes its timers and
/// `forget_slot` takes it out of the in-flight table, and nginx calls no handler of a request
/// whose pool is being freed. So wherever a handle is held, its context is live. nginx runs one
/// event handler at a time in a worker, so no two of them use a context at once.
#[derive(Clone, Copy)]
struct CtxRef(std::ptr::NonNull<Ctx>);

impl CtxRef {
    /// The context; borrowed for as long as the caller's step, which never outlives the
    /// handler nginx called.
    #[allow(clippy::mut_from_ref)]
    fn get<'a>(&self) -> &'a mut Ctx {
        // SAFETY: the lifetime rule above: the context is live while a handle is held, and one
        // handler at a time uses it.
        unsafe { &mut *self.0.as_ptr() }
    }

    /// The context's address, for nginx's event structures inside it.
    fn raw(self) -> *mut Ctx {
        self.0.as_ptr()
    }

    /// The context an event of it (set up in [`suspend`]) carries as its data.
    ///
    /// # Safety
    /// `ev` is the timer or retry event of a live context.
    unsafe fn of_event(ev: *mut ngx_event_t) -> CtxRef {
        // SAFETY: per the contract, the event's data is its context, set non-null in `suspend`.
        CtxRef(unsafe { std::ptr::NonNull::new_unchecked((*ev).data as *mut Ctx) })
    }
}

/// What request `r` recorded of its way through the pool, if it got that far.
pub fn outcome_of(r: *mut ngx_http_request_t) -> Option<Outcome> {
    // The context lives until the request's pool goes, after the log phase.
    ctx_of(r).map(|c| c.get().outcome)
}

fn pool_index(r: *mut ngx_http_request_t) -> Option<usize> {
    // SAFETY: `r` is a live request nginx handed us.
    let req = unsafe { Request::from_ngx_http_request(r) };
    Module::location_conf(req).and_then(|c| c.pool)
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
fn recover_ctx(ctx: CtxRef) {
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
fn suspend(r: *mut ngx_http_request_t, ctx: Ctx) -> Option<CtxRef> {
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
        std::ptr::NonNull::new(p).map(CtxRef)
    }
}

/// The request's context, if it is one of ours.
fn ctx_of(r: *mut ngx_http_request_t) -> Option<CtxRef> {
    // SAFETY: `r` is a live request; our module's context slot holds a `Ctx` or nothing.
    unsafe {
        let req = Request::from_ngx_http_request(r);
        req.get_module_ctx::<Ctx>(Module::module())
            .map(|c| CtxRef(std::ptr::NonNull::from(c)))
    }
}
