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
use ngx_pool_channel::chain::ChainError;
use ngx_pool_channel::message::{encode_request_head, RequestHead, ServerSide};
use ngx_pool_channel::slot::{self, FailReason, SlotId, SlotState};
use ngx_pool_channel::stream;
use ngx_pool_channel::Region;
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;

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
        || Err(500),
        || {
            let i = pool_index(r).ok_or(NGX_ERROR as ngx_int_t)?;
            if runtime::ensure_attached(i) == State::Down {
                let msg = format!("pool \"{}\" has no poold attached; 503", pool_name(i));
                note_rejection(i, r, &msg);
                add_retry_after(r);
                return Err(503);
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

/// Whether request `r`'s body is read whole before it is queued: unless its location says
/// `pool_request_buffering off` and the body's length is known up front (a chunked body is
/// buffered whatever the setting: the pool is told the length with the head), as
/// `proxy_request_buffering` does for an HTTP/1.0 upstream.
fn buffers_request_body(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: `r` is a live request nginx handed us.
    let req = unsafe { Request::from_ngx_http_request(r) };
    let off = Module::location_conf(req)
        .and_then(|c| c.effective)
        .is_some_and(|e| !e.request);
    // SAFETY: reading the parsed headers of a live request.
    let known = unsafe { (*r).headers_in.content_length_n > 0 && (*r).headers_in.chunked() == 0 };
    !(off && known)
}

unsafe extern "C" fn body_ready(r: *mut ngx_http_request_t) {
    crate::edge::guard("body", || recover(r), || start(r));
}

/// After a panic at an entry point of request `r`: the request is finalized once, with 500
/// (or its connection closed if the response head was out), whatever state it was left in.
fn recover(r: *mut ngx_http_request_t) {
    match ctx_of(r) {
        Some(ctx) => fail(ctx, 500, String::new()),
        None => finish(r, 500),
    }
}

/// Recovery for an event whose data is a request context.
fn recover_ctx(ctx: *mut Ctx) {
    fail(ctx, 500, String::new());
}

/// Why a request does not go to its pool now.
enum Refused {
    /// Answer it with this status.
    Status(ngx_int_t),
    /// Its pool is attaching: wait (see [`park`]).
    Wait(usize),
}

impl From<ngx_int_t> for Refused {
    fn from(status: ngx_int_t) -> Refused {
        Refused::Status(status)
    }
}

/// The body is read: the request goes to the pool (or is answered now).
fn start(r: *mut ngx_http_request_t) {
    match begin(r) {
        Ok(ctx) => submit(ctx),
        Err(Refused::Wait(pool)) => park(r, pool),
        Err(Refused::Status(status)) => {
            if status == 503 {
                add_retry_after(r);
            }
            // SAFETY: finalizing drops the reference body reading took; exactly once.
            unsafe { nginx_sys::ngx_http_finalize_request(r, status) };
        }
    }
}

/// The request's headers, in order, repeated ones included (borrowed from the request pool).
fn request_headers(req: &Request) -> Vec<(&[u8], &[u8])> {
    req.headers_in_iterator()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect()
}

fn ngx_bytes(s: &ngx_str_t) -> &[u8] {
    if s.data.is_null() || s.len == 0 {
        return &[];
    }
    // SAFETY: an ngx_str_t with non-null data points at `len` readable bytes.
    unsafe { std::slice::from_raw_parts(s.data, s.len) }
}

/// The body nginx holds for `r`. While the body is still `arriving` (unbuffered), the buffers
/// are taken off the request (nginx appends the next ones to an empty chain) and each goes back
/// to nginx once its bytes are in the arena.
fn body_parts(r: *mut ngx_http_request_t, arriving: bool) -> Vec<BodyPart> {
    let mut parts = Vec::new();
    // SAFETY: after body reading completed (or returned with what has come, unbuffered),
    // `request_body->bufs` is a valid chain of buffers in the request pool; memory buffers span
    // [pos, last), file buffers [file_pos, file_last).
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            return parts;
        }
        let mut cl = (*rb).bufs;
        if arriving {
            (*rb).bufs = ptr::null_mut();
        }
        while !cl.is_null() {
            let b = (*cl).buf;
            if !b.is_null() {
                if (*b).in_file() != 0 && !(*b).file.is_null() {
                    parts.push(BodyPart::File {
                        fd: (*(*b).file).fd,
                        from: (*b).file_pos,
                        to: (*b).file_last,
                    });
                } else if !(*b).pos.is_null() && (*b).last > (*b).pos {
                    let len = (*b).last.offset_from((*b).pos) as usize;
                    parts.push(if arriving {
                        BodyPart::Arriving(b)
                    } else {
                        BodyPart::Memory((*b).pos, len)
                    });
                }
            }
            cl = (*cl).next;
        }
    }
    parts
}

/// What the pool worker cannot know of request `r`: `$server_name`, `$server_port`, `$scheme`
/// and `$document_uri`, read from nginx's structures as those variables do.
fn server_side<'a>(r: *mut ngx_http_request_t, req: &'a Request) -> ServerSide<'a> {
    let name = ngx::http::NgxHttpCoreModule::server_conf(req)
        .map_or(&[][..], |cscf| ngx_bytes(&cscf.server_name));
    // SAFETY: a live request and its connection; nginx fills the local address on demand (a
    // getsockname only for a wildcard listener, then cached on the connection).
    let (port, https, document_uri) = unsafe {
        let c = (*r).connection;
        let port = if nginx_sys::ngx_connection_local_sockaddr(c, ptr::null_mut(), 0)
            == nginx_sys::NGX_OK as ngx_int_t
        {
            nginx_sys::ngx_inet_get_port((*c).local_sockaddr)
        } else {
            0
        };
        #[cfg(ngx_feature = "http_ssl")]
        let https = !(*c).ssl.is_null();
        #[cfg(not(ngx_feature = "http_ssl"))]
        let https = false;
        (port, https, ngx_bytes(&(*r).uri))
    };
    ServerSide {
        name,
        port,
        https,
        document_uri,
    }
}

/// Encodes the request head and makes the request's context. `Err(status)` to answer at once.
fn begin(r: *mut ngx_http_request_t) -> Result<*mut Ctx, Refused> {
    let i = pool_index(r).ok_or(500 as ngx_int_t)?;
    match runtime::ensure_attached(i) {
        State::Attached => {}
        State::Pending => return Err(Refused::Wait(i)),
        State::Down => return Err(Refused::Status(503)),
    }
    let (region, timeout_ms, queue_timeout_ms) = with_pool(i, |p| {
        let region = p.attached.as_ref()?.region.clone();
        Some((region, p.timeout_ms, p.queue_timeout_ms))
    })
    .ok()
    .flatten()
    .ok_or(503 as ngx_int_t)?;
    // SAFETY: `r` is a live request nginx handed us.
    let req = unsafe { Request::from_ngx_http_request(r) };
    let loc = Module::location_conf(req).ok_or(500 as ngx_int_t)?;
    let buffering = loc.effective.ok_or(500 as ngx_int_t)?;
    let own_timeout = loc.timeout_ms;
    let timeout_ms = own_timeout.unwrap_or(timeout_ms);
    // SAFETY: fields of a live request.
    let (method, uri, version, client, client_port) = unsafe {
        let v = (*r).http_version;
        let c = (*r).connection;
        (
            ngx_bytes(&(*r).method_name),
            ngx_bytes(&(*r).unparsed_uri),
            ((v / 1000) as u8, (v % 1000) as u8),
            ngx_bytes(&(*c).addr_text),
            nginx_sys::ngx_inet_get_port((*c).sockaddr),
        )
    };
    let headers = request_headers(req);
    let params = crate::params::evaluate(req, loc.params.as_deref().unwrap_or_default());
    let server = server_side(r, req);
    // SAFETY: reading flags and the parsed length of a live request.
    let (arriving, announced) =
        unsafe { ((*r).reading_body() != 0, (*r).headers_in.content_length_n) };
    let parts = body_parts(r, arriving);
    let body: u64 = if arriving {
        announced.max(0) as u64
    } else {
        parts.iter().map(BodyPart::len).sum()
    };
    let head = RequestHead {
        method,
        uri,
        version,
        client,
        client_port,
        server,
        headers: &headers,
        params: &params,
    };
    // Sized for the whole head, so encoding never grows it.
    let pairs = |l: &[(&[u8], &[u8])]| l.iter().map(|(n, v)| 6 + n.len() + v.len()).sum::<usize>();
    let mut bytes = Vec::with_capacity(
        64 + method.len()
            + uri.len()
            + client.len()
            + server.name.len()
            + server.document_uri.len()
            + pairs(&headers)
            + pairs(&params),
    );
    if let Err(e) = encode_request_head(&mut bytes, &head, body) {
        log_request(r, &format!("pool \"{}\": request head: {e}", pool_name(i)));
        return Err(Refused::Status(400));
    }
    if bytes.len() as u64 > region.geometry().message_limit() {
        log_request(
            r,
            &format!(
                "pool \"{}\": request head of {} bytes exceeds the pool's limit (a quarter of its arena)",
                pool_name(i),
                bytes.len()
            ),
        );
        return Err(Refused::Status(431));
    }
    suspend(
        r,
        Ctx {
            pool: i,
            slot: None,
            active: true,
            r,
            // SAFETY: an all-zero ngx_event_t is nginx's own initial state for events.
            timer: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            retry: unsafe { std::mem::zeroed() },
            queue_phase: queue_timeout_ms
                .filter(|q| *q < timeout_ms)
                .map(|q| (q, timeout_ms - q)),
            region,
            upload: Some(Upload::new(bytes, parts, body, arriving)),
            download: None,
            buffered: None,
            buffering,
            timeout_ms,
            own_timeout,
            outcome: Outcome::default(),
        },
    )
    .ok_or(Refused::Status(500))
}

/// How long a request waits for its pool's attachment (a handshake under way), and how often
/// it looks.
const ATTACH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
const ATTACH_LOOK_MS: nginx_sys::ngx_msec_t = 10;

/// A request waiting for its pool to attach, in its request pool.
struct Waiting {
    r: *mut ngx_http_request_t,
    pool: usize,
    until: std::time::Instant,
    ev: ngx_event_t,
}

/// Lets request `r` wait (up to [`ATTACH_WAIT`]) for pool `i`'s handshake, looking every few
/// milliseconds: the worker serves everything else meanwhile. Then it goes on, or gets 503.
fn park(r: *mut ngx_http_request_t, i: usize) {
    // SAFETY: allocations from the live request's pool; the cleanup, registered before the
    // value is written, deletes the timer if the request goes first (its client closed), and
    // the value needs no drop (plain data).
    unsafe {
        let rpool = (*r).pool;
        let cln = nginx_sys::ngx_pool_cleanup_add(rpool, 0);
        let w = nginx_sys::ngx_pcalloc(rpool, std::mem::size_of::<Waiting>()) as *mut Waiting;
        if cln.is_null() || w.is_null() {
            return finish(r, 500);
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

unsafe extern "C" fn waiting_cleanup(data: *mut c_void) {
    let w = data as *mut Waiting;
    // SAFETY: the Waiting this cleanup was registered with, freed with the pool after this.
    unsafe {
        let ev = ptr::addr_of_mut!((*w).ev);
        if (*ev).timer_set() != 0 {
            nginx_sys::ngx_del_timer(ev);
        }
    }
}

unsafe extern "C" fn on_waiting(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its Waiting, alive (in the request pool) while armed.
    let (r, pool, until) = unsafe {
        let w = (*ev).data as *mut Waiting;
        ((*w).r, (*w).pool, (*w).until)
    };
    crate::edge::guard(
        "timer",
        || finish(r, 500),
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
                note_rejection(pool, r, &msg);
                add_retry_after(r);
                finish(r, 503);
            }
        },
    );
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
        return fail(ctx, 503, format!("pool \"{}\": poold went away", name()));
    };
    // A request joins the queue only while the arena stays at most half full with it: waiting
    // requests hold just their head (see `Upload::pump`), and the other half is for running
    // requests' bodies (up to three quarters) and answers, so those can always finish and free
    // what the waiting ones need. Past that, wait in nginx for room (bounded by the queue
    // deadline, then 503), holding nothing of the arena.
    let g = region.geometry();
    let in_use = region
        .header()
        .stats
        .chunks_in_use
        .load(std::sync::atomic::Ordering::Relaxed);
    let head_chunks = c.upload.as_ref().map_or(1, |u| {
        u64::from(u.head_len()).div_ceil(u64::from(g.chunk_data()))
    });
    if (in_use + head_chunks) * 2 > u64::from(g.chunks) {
        return arm_retry(ctx);
    }
    let Some(id) = slot::alloc(region.nginx_side(), conn, conn_gen) else {
        region
            .header()
            .stats
            .rejected_full
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.outcome.end("full");
        return fail(
            ctx,
            503,
            format!("pool \"{}\": queue full (all slots in use)", name()),
        );
    };
    let Some(up) = c.upload.as_mut() else {
        slot::release(region.nginx_side(), id);
        return fail(ctx, 500, String::new());
    };
    match up.write_head(&region, id) {
        Ok(()) => {}
        Err(ChainError::ArenaFull) => {
            // Wait for space, bounded by the queue deadline (or the whole deadline).
            slot::release(region.nginx_side(), id);
            return arm_retry(ctx);
        }
        Err(e) => {
            slot::release(region.nginx_side(), id);
            return fail(ctx, 502, format!("pool \"{}\": {e}", name()));
        }
    }
    if let Pumped::Failed(e) = up.pump(&region, id, true) {
        slot::release(region.nginx_side(), id);
        return fail(ctx, 500, format!("pool \"{}\": {e}", name()));
    }
    let (head_len, total) = (up.head_len(), up.total());
    if let Some(ms) = c.own_timeout {
        slot::set_timeout(region.nginx_side(), id, ms);
    }
    if !slot::enqueue(region.nginx_side(), id, head_len, total) {
        slot::release(region.nginx_side(), id);
        c.outcome.end("full");
        return fail(
            ctx,
            503,
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
            500,
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
            c.outcome.end(match reason {
                FailReason::WorkerDied => "crashed",
                FailReason::Timeout => "timeout",
                _ => "error",
            });
            let status = reason.http_status() as ngx_int_t;
            fail(
                ctx,
                status,
                format!(
                    "pool \"{}\": request failed in the pool: {reason:?}",
                    pool_name(c.pool)
                ),
            );
        }
        other => fail(
            ctx,
            502,
            format!(
                "pool \"{}\": request lost its slot (state {other:?})",
                pool_name(c.pool)
            ),
        ),
    }
}

/// Records, once, which worker took the request and when, and when its answer was complete.
fn observe(o: &mut Outcome, region: &Region, id: SlotId, state: Option<SlotState>) {
    if o.worker_pid.is_none() {
        if let Some(s) = region.slot(id.index) {
            let worker = s.worker.load(std::sync::atomic::Ordering::Relaxed);
            o.started_ms = Some(s.started_ms.load(std::sync::atomic::Ordering::Relaxed));
            o.worker_pid = region
                .worker(worker)
                .map(|w| w.pid.load(std::sync::atomic::Ordering::Relaxed))
                .filter(|p| *p != 0);
        }
    }
    if o.finished_ms.is_none() && matches!(state, Some(SlotState::Done | SlotState::Failed)) {
        o.finished_ms = Some(now_ms());
    }
}

/// Writes what the window allows of the request body. Returns false if the request ended.
fn pump_upload(ctx: *mut Ctx, region: &Region, id: SlotId, queued: bool) -> bool {
    // SAFETY: `ctx` is a live context.
    let c = unsafe { &mut *ctx };
    let Some(up) = c.upload.as_mut() else {
        return true;
    };
    let mut asked = false;
    loop {
        let pumped = up.pump(region, id, queued);
        stream::notify_worker(region, id);
        match pumped {
            Pumped::Done => {
                c.upload = None;
                return true;
            }
            Pumped::Waiting if !asked => {
                // Ask to be told when the worker frees room, then look once more: it may have
                // freed it just before.
                stream::want_nginx_wake(region, id);
                asked = true;
            }
            Pumped::Waiting => return true,
            Pumped::ArenaFull => {
                arm_retry(ctx);
                return true;
            }
            Pumped::NeedBody => {
                // Everything nginx had is in the arena: its buffers are free again, so it may
                // read more from the client now (no new read event would say so).
                match read_more(ctx) {
                    Ok(true) => {}
                    Ok(false) => return true,
                    Err(()) => return false,
                }
            }
            Pumped::Failed(e) => {
                fail(ctx, 500, format!("pool \"{}\": {e}", pool_name(c.pool)));
                return false;
            }
        }
    }
}

/// Reads what the client has sent of an arriving body into nginx's buffers and hands them to
/// the upload. `Ok(true)` if any came; `Err` if the request ended (timed out, bad body).
fn read_more(ctx: *mut Ctx) -> Result<bool, ()> {
    // SAFETY: `ctx` is a live context.
    let c = unsafe { &mut *ctx };
    let r = c.r;
    // SAFETY: a live request reading its body unbuffered (it was queued with `reading_body`).
    let rc = unsafe { nginx_sys::ngx_http_read_unbuffered_request_body(r) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        let name = pool_name(c.pool);
        fail(
            ctx,
            rc,
            format!("pool \"{name}\": reading the request body: {rc}"),
        );
        return Err(());
    }
    // SAFETY: as above.
    let done = unsafe { (*r).reading_body() == 0 };
    if done {
        // SAFETY: our own request's handler; nothing more to read but the client's going away.
        unsafe { (*r).read_event_handler = Some(nginx_sys::ngx_http_test_reading) };
    }
    let parts = body_parts(r, true);
    let got = !parts.is_empty();
    if let Some(up) = c.upload.as_mut() {
        up.add(parts);
    }
    Ok(got)
}

/// The client sent more of a body that is read unbuffered.
unsafe extern "C" fn on_body_read(r: *mut ngx_http_request_t) {
    crate::edge::guard(
        "body",
        || recover(r),
        || {
            if let Some(ctx) = ctx_of(r) {
                if read_more(ctx).is_ok() {
                    progress(ctx);
                }
            }
        },
    );
}

/// Sends the response head once, then the body: buffered through nginx's event pipe, or
/// streamed from the arena as it comes; `total` once `Done`.
fn respond(ctx: *mut Ctx, region: &Region, id: SlotId, total: Option<u64>, client: bool) {
    // SAFETY: `ctx` is a live context.
    let c = unsafe { &mut *ctx };
    let r = c.r;
    if c.download.is_none() && c.buffered.is_none() {
        let head_len = slot::response(region, id).map_or(0, |(h, _)| h);
        let opts = download::Opts {
            buffering: c.buffering.response,
            copy_up_to: c.buffering.buffer_size as u64,
            max_head: c.buffering.max_header_size as u64,
        };
        match download::start(r, region, id, head_len, total, &opts) {
            Err(e) => {
                let (name, handler) =
                    with_pool(c.pool, |p| (p.name.clone(), p.handler.clone())).unwrap_or_default();
                return fail(
                    ctx,
                    502,
                    format!("pool \"{name}\" (handler \"{handler}\"): bad response from pool worker: {e}"),
                );
            }
            Ok(Started::Sent(rc)) => {
                // Nothing points into the region: the slot goes back now (a worker still
                // streaming, for a HEAD request, sees it abandoned and stops).
                forget_slot(ctx);
                return complete(ctx, rc);
            }
            Ok(Started::Streaming(d)) => c.download = Some(d),
            Ok(Started::Buffer {
                reader,
                head_len,
                declared,
            }) => {
                let feed = Feed::new(c.region.clone(), id, reader, head_len, declared);
                match Buffered::new(r, feed, &c.buffering) {
                    Some(b) => c.buffered = Some(b),
                    None => return terminate(ctx),
                }
            }
        }
    }
    if c.buffered.is_some() {
        return pump_buffered(ctx, client);
    }
    pump_download(ctx, region, id, total);
}

/// Turns the event pipe of a buffered response once.
fn pump_buffered(ctx: *mut Ctx, client: bool) {
    // SAFETY: `ctx` is a live context.
    let c = unsafe { &mut *ctx };
    let Some(b) = c.buffered.as_mut() else {
        return;
    };
    match b.turn(c.r, client) {
        Turn::Wait => {}
        Turn::Finished(rc) => {
            // Every byte is out of the arena and in nginx's hands (memory or temp file): the
            // slot goes back now, and the rest is nginx's to send at the client's pace.
            forget_slot(ctx);
            complete(ctx, rc);
        }
        Turn::Broken(why) => fail(ctx, 502, format!("pool \"{}\": {why}", pool_name(c.pool))),
        Turn::ClientGone => terminate(ctx),
    }
}

/// Streams body bytes from the arena as they come (`pool_buffering off`).
fn pump_download(ctx: *mut Ctx, region: &Region, id: SlotId, total: Option<u64>) {
    // SAFETY: `ctx` is a live context.
    let c = unsafe { &mut *ctx };
    let r = c.r;
    let Some(d) = c.download.as_mut() else {
        return;
    };
    let mut asked = false;
    loop {
        match d.pump(r, region, id, total) {
            Pump::Error => return terminate(ctx),
            Pump::Finished(rc) => return complete(ctx, rc),
            Pump::Wait { freed } => {
                if freed {
                    stream::notify_worker(region, id);
                }
                if total.is_some() || asked {
                    break;
                }
                // Ask to be told of more bytes, then look once more: they may have come
                // just before.
                stream::want_nginx_wake(region, id);
                asked = true;
            }
        }
    }
    // SAFETY: the request's connection and its write event are live.
    unsafe {
        let conn = (*r).connection;
        if (*conn).buffered() != 0 {
            nginx_sys::ngx_handle_write_event((*conn).write, 0);
        }
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

/// Ends the request with an error status, or by closing the connection if the response header
/// is already out. `msg` goes to the error log (unless empty).
fn fail(ctx: *mut Ctx, status: ngx_int_t, msg: String) {
    // SAFETY: `ctx` is a live context.
    let (r, streaming, pool) = unsafe {
        let c = &*ctx;
        (c.r, c.download.is_some() || c.buffered.is_some(), c.pool)
    };
    if !deactivate(ctx) {
        return;
    }
    // SAFETY: as above.
    unsafe { (*ctx).outcome.end("error") };
    if status == 503 && !msg.is_empty() {
        note_rejection(pool, r, &msg);
    } else if !msg.is_empty() {
        log_request(r, &msg);
    }
    if streaming {
        return finish(r, NGX_ERROR as ngx_int_t);
    }
    if status == 503 {
        add_retry_after(r);
    }
    finish(r, status);
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
        finish(r, NGX_ERROR as ngx_int_t);
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
        fail(ctx, 502, String::new());
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
            c.outcome.end("queue_timeout");
            return fail(
                ctx,
                503,
                format!("pool \"{name}\": no arena space for the request within queue_timeout ({waited} ms); 503"),
            );
        };
        if !slot::withdraw_queued(c.region.nginx_side(), id) {
            // A worker has it: the rest of the deadline applies.
            // SAFETY: re-arming our own timer, which just fired.
            unsafe { nginx_sys::ngx_add_timer(ev, rest as nginx_sys::ngx_msec_t) };
            return;
        }
        c.outcome.end("queue_timeout");
        return fail(
            ctx,
            503,
            format!("pool \"{name}\": no worker took the request within queue_timeout ({waited} ms); 503"),
        );
    }
    // SAFETY: reading the URI of a live request.
    let uri = String::from_utf8_lossy(ngx_bytes(unsafe { &(*c.r).unparsed_uri })).into_owned();
    if let Some(id) = c.slot {
        if slot::withdraw_queued(c.region.nginx_side(), id) {
            // No worker ever took it: the pool was too busy, which is a 503 (retry later), not
            // a 504 (the handler was too slow).
            c.outcome.end("queue_timeout");
            return fail(
                ctx,
                503,
                format!("pool \"{name}\": no worker took request \"{uri}\" within its timeout ({} ms); 503", c.timeout_ms),
            );
        }
    }
    let status = if c.slot.is_none() { 503 } else { 504 };
    c.outcome.end("timeout");
    let what = if c.download.is_some() || c.buffered.is_some() {
        "; closing the response"
    } else {
        ""
    };
    fail(
        ctx,
        status,
        format!(
            "pool \"{name}\": request \"{uri}\" timed out after {} ms (slot {}){what}",
            c.timeout_ms,
            c.slot.map_or(-1, |s| s.index as i64)
        ),
    );
}
