//! The `pool_pass` content handler: request into shared memory, suspend, respond on completion.
//!
//! Request lifecycle per the development guide ("Request finalization", "Request body"):
//! the handler starts reading the body (`ngx_http_read_client_request_body`, which takes a
//! reference on the request); the body callback writes the request into the pool's region and
//! returns with the request suspended; the eventfd handler (or the deadline timer, or the loss of
//! poold) later sends the response and calls `ngx_http_finalize_request` exactly once, dropping
//! that reference. A cleanup on the request pool abandons the slot if the request goes away
//! first (client closed the connection, noticed through `ngx_http_test_reading`).

use crate::directives::Module;
use crate::runtime::{self, with_pool, InFlight};
use nginx_sys::{
    ngx_chain_t, ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_str_t, ngx_table_elt_t, NGX_DONE,
    NGX_ERROR, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_ERR, NGX_OK,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, Request};
use ngx_pool_channel::chain::{ChainError, ChainWriter};
use ngx_pool_channel::message::{decode_response, encode_request_head, RequestHead};
use ngx_pool_channel::slot::{self, SlotId};
use std::ffi::c_void;
use std::ptr;

/// How a suspended request ends.
pub enum Outcome {
    /// A response message, copied into the request's pool.
    Response(*mut u8, usize),
    /// An error status, with a line for the error log (empty: already logged).
    Error(u16, String),
}

/// Per-request state, allocated in the request pool.
struct Ctx {
    pool: usize,
    slot: SlotId,
    active: bool,
    r: *mut ngx_http_request_t,
    timer: ngx_event_t,
    /// While set, the timer is the queue deadline; then it is re-armed for the rest of `timeout`.
    queue_phase: Option<(u64, u64)>,
}

fn pool_index(r: *mut ngx_http_request_t) -> Option<usize> {
    // SAFETY: `r` is a live request nginx handed us.
    let req = unsafe { Request::from_ngx_http_request(r) };
    Module::location_conf(req).and_then(|c| c.pool)
}

fn log_request(r: *mut ngx_http_request_t, msg: &str) {
    // SAFETY: a live request's connection log.
    let log = unsafe { (*(*r).connection).log };
    ngx::ngx_log_error!(NGX_LOG_ERR, log, "{}", msg);
}

/// Adds `Retry-After: 1` to a 503 about to be sent.
fn add_retry_after(r: *mut ngx_http_request_t) {
    // SAFETY: a live request; header values point at static bytes.
    unsafe { push_header(r, b"Retry-After", b"1") };
}

/// The content handler of `pool_pass` locations.
///
/// # Safety
/// Called by nginx's content phase with a live request.
pub unsafe extern "C" fn pool_pass_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let Some(i) = pool_index(r) else {
        return NGX_ERROR as ngx_int_t;
    };
    if !runtime::ensure_attached(i) {
        let name = with_pool(i, |p| p.name.clone()).unwrap_or_default();
        log_request(r, &format!("pool \"{name}\" has no poold attached; 503"));
        add_retry_after(r);
        return 503;
    }
    let limit = with_pool(i, |p| {
        p.attached
            .as_ref()
            .map(|a| a.region.geometry().message_limit())
    })
    .flatten()
    .unwrap_or(0);
    // SAFETY: reading a field of a live request.
    let declared = unsafe { (*r).headers_in.content_length_n };
    if declared > limit as i64 {
        let name = with_pool(i, |p| p.name.clone()).unwrap_or_default();
        log_request(
            r,
            &format!("pool \"{name}\": request body of {declared} bytes exceeds the pool's limit of {limit} bytes (a quarter of its arena)"),
        );
        return 413;
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
    if let Err(status) = submit(r) {
        if status == 503 {
            add_retry_after(r);
        }
        // SAFETY: finalizing drops the reference body reading took; exactly once per request.
        unsafe { nginx_sys::ngx_http_finalize_request(r, status) };
    }
}

/// The request's headers, in order, repeated ones included.
fn request_headers(r: *mut ngx_http_request_t) -> Vec<(&'static [u8], &'static [u8])> {
    // SAFETY: header strings live in the request pool, which outlives this call's use of them.
    let req = unsafe { Request::from_ngx_http_request(r) };
    req.headers_in_iterator()
        .map(|(k, v)| {
            // SAFETY: as above; the 'static is confined to `submit`, which copies them out.
            unsafe {
                (
                    std::mem::transmute::<&[u8], &'static [u8]>(k.as_bytes()),
                    std::mem::transmute::<&[u8], &'static [u8]>(v.as_bytes()),
                )
            }
        })
        .collect()
}

fn ngx_bytes(s: &ngx_str_t) -> &[u8] {
    if s.data.is_null() || s.len == 0 {
        return &[];
    }
    // SAFETY: an ngx_str_t with non-null data points at `len` readable bytes.
    unsafe { std::slice::from_raw_parts(s.data, s.len) }
}

/// One piece of the request body.
enum BodyPart {
    Memory(&'static [u8]),
    File { fd: i32, from: i64, to: i64 },
}

fn body_parts(r: *mut ngx_http_request_t) -> Vec<BodyPart> {
    let mut parts = Vec::new();
    // SAFETY: after body reading completed, `request_body->bufs` is a valid chain of buffers in
    // the request pool; memory buffers span [pos, last), file buffers [file_pos, file_last).
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            return parts;
        }
        let mut cl = (*rb).bufs;
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
                    parts.push(BodyPart::Memory(std::slice::from_raw_parts((*b).pos, len)));
                }
            }
            cl = (*cl).next;
        }
    }
    parts
}

fn body_len(parts: &[BodyPart]) -> u64 {
    parts
        .iter()
        .map(|p| match p {
            BodyPart::Memory(m) => m.len() as u64,
            BodyPart::File { from, to, .. } => (to - from).max(0) as u64,
        })
        .sum()
}

/// Copies a file range into the chain, 64 KiB at a time.
fn append_file(w: &mut ChainWriter<'_>, fd: i32, from: i64, to: i64) -> Result<(), String> {
    // SAFETY: nginx keeps the temp file open for the request's life.
    let file = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(buf.len());
        let n = nix::sys::uio::pread(file, &mut buf[..want], at)
            .map_err(|e| format!("reading the body's temp file: {e}"))?;
        if n == 0 {
            return Err("the body's temp file is shorter than nginx said".into());
        }
        w.append(&buf[..n]).map_err(|e| e.to_string())?;
        at += n as i64;
    }
    Ok(())
}

/// Writes the request into the region and queues it. `Err(status)` to answer at once.
fn submit(r: *mut ngx_http_request_t) -> Result<(), ngx_int_t> {
    let i = pool_index(r).ok_or(500 as ngx_int_t)?;
    if !runtime::ensure_attached(i) {
        return Err(503);
    }
    // SAFETY: fields of a live request.
    let (method, uri, version, client) = unsafe {
        let v = (*r).http_version;
        (
            ngx_bytes(&(*r).method_name).to_vec(),
            ngx_bytes(&(*r).unparsed_uri).to_vec(),
            ((v / 1000) as u8, (v % 1000) as u8),
            ngx_bytes(&(*(*r).connection).addr_text).to_vec(),
        )
    };
    let headers = request_headers(r);
    let parts = body_parts(r);
    let body = body_len(&parts);
    let head = RequestHead {
        method: &method,
        uri: &uri,
        version,
        client: &client,
        headers: &headers,
    };
    let submitted = with_pool(i, |p| -> Result<(SlotId, u64, Option<u64>), (ngx_int_t, String)> {
        let name = p.name.clone();
        let a = p.attached.as_ref().ok_or((503, String::new()))?;
        let limit = a.region.geometry().message_limit();
        let too_large = |n: u64| {
            (413, format!("pool \"{name}\": request of {n} bytes (with body) exceeds the pool's limit of {limit} bytes (a quarter of its arena)"))
        };
        let Some(id) = slot::alloc(&a.region, a.conn, a.conn_gen) else {
            a.region.header().stats.rejected_full.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err((503, format!("pool \"{name}\": queue full (all slots in use)")));
        };
        let Some(mut w) = slot::request_writer(&a.region, id) else {
            slot::release(&a.region, id);
            return Err((502, format!("pool \"{name}\": bad slot")));
        };
        let written = encode_request_head(&mut w, &head, body)
            .map_err(|e| e.to_string())
            .and_then(|_| if w.len() + body > limit { Err("too large".into()) } else { Ok(()) })
            .and_then(|_| {
                parts.iter().try_for_each(|part| match part {
                    BodyPart::Memory(m) => w.append(m).map_err(|e| e.to_string()),
                    BodyPart::File { fd, from, to } => append_file(&mut w, *fd, *from, *to),
                })
            });
        if let Err(e) = written {
            let total = w.len().max(body);
            drop(w);
            slot::release(&a.region, id);
            return Err(if e == "too large" || e == ChainError::TooLarge.to_string() {
                too_large(total + head_len_hint(&head))
            } else if e == ChainError::ArenaFull.to_string() {
                (503, format!("pool \"{name}\": shared-memory arena full"))
            } else {
                (502, format!("pool \"{name}\": {e}"))
            });
        }
        let (chain, len) = w.finish();
        if !slot::submit(&a.region, id, chain, len) {
            slot::release(&a.region, id);
            return Err((503, format!("pool \"{name}\": could not queue the request")));
        }
        p.inflight.insert(id.index, InFlight { gen: id.gen, r });
        Ok((id, p.timeout_ms, p.queue_timeout_ms))
    })
    .ok_or(500 as ngx_int_t)?;
    let (id, timeout_ms, queue_timeout_ms) = match submitted {
        Ok(x) => x,
        Err((status, msg)) => {
            if !msg.is_empty() {
                log_request(r, &msg);
            }
            return Err(status);
        }
    };
    if suspend(r, i, id, timeout_ms, queue_timeout_ms).is_err() {
        forget(i, id);
        return Err(500);
    }
    Ok(())
}

fn head_len_hint(head: &RequestHead<'_>) -> u64 {
    (head.uri.len()
        + head
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>()) as u64
}

/// Removes request `id` of pool `i` from the in-flight table and abandons its slot.
fn forget(i: usize, id: SlotId) {
    with_pool(i, |p| {
        if p.inflight.get(&id.index).is_some_and(|f| f.gen == id.gen) {
            p.inflight.remove(&id.index);
            if let Some(a) = &p.attached {
                slot::abandon(&a.region, id);
            }
        }
    });
}

/// Installs the request context, its cleanup and deadline, and the client-abort check.
fn suspend(
    r: *mut ngx_http_request_t,
    pool: usize,
    id: SlotId,
    timeout_ms: u64,
    queue_timeout_ms: Option<u64>,
) -> Result<(), ()> {
    // The timer first guards the queue wait (if shorter), then the rest of the deadline.
    let queue_phase = queue_timeout_ms
        .filter(|q| *q < timeout_ms)
        .map(|q| (q, timeout_ms - q));
    let first = queue_phase.map_or(timeout_ms, |(q, _)| q);
    // SAFETY: allocations come from the live request's pool; the context is zeroed then
    // written whole; the cleanup and timer reference it and are removed before the pool frees it
    // (cleanups run first in ngx_destroy_pool, and the cleanup deletes the timer).
    unsafe {
        let rpool = (*r).pool;
        let ctx = nginx_sys::ngx_pcalloc(rpool, std::mem::size_of::<Ctx>()) as *mut Ctx;
        if ctx.is_null() {
            return Err(());
        }
        ptr::write(
            ctx,
            Ctx {
                pool,
                slot: id,
                active: true,
                r,
                timer: std::mem::zeroed(),
                queue_phase,
            },
        );
        let cln = nginx_sys::ngx_pool_cleanup_add(rpool, 0);
        if cln.is_null() {
            return Err(());
        }
        (*cln).handler = Some(cleanup);
        (*cln).data = ctx as *mut c_void;
        let req = Request::from_ngx_http_request(r);
        req.set_module_ctx(ctx as *mut c_void, Module::module());
        let timer = ptr::addr_of_mut!((*ctx).timer);
        (*timer).handler = Some(on_timeout);
        (*timer).data = ctx as *mut c_void;
        (*timer).log = (*(*r).connection).log;
        nginx_sys::ngx_add_timer(timer, first as nginx_sys::ngx_msec_t);
        (*r).read_event_handler = Some(nginx_sys::ngx_http_test_reading);
        (*r).write_event_handler = Some(nginx_sys::ngx_http_request_empty_handler);
    }
    Ok(())
}

/// Marks the context finished and stops its timer. Returns false if it already was.
///
/// # Safety
/// `ctx` must be a live context made by `suspend`.
unsafe fn deactivate(ctx: *mut Ctx) -> bool {
    // SAFETY: per the contract.
    unsafe {
        if !(*ctx).active {
            return false;
        }
        (*ctx).active = false;
        if (*ctx).timer.timer_set() != 0 {
            nginx_sys::ngx_del_timer(ptr::addr_of_mut!((*ctx).timer));
        }
        true
    }
}

unsafe extern "C" fn cleanup(data: *mut c_void) {
    let ctx = data as *mut Ctx;
    // SAFETY: `data` is the context registered with this cleanup, still allocated (cleanups run
    // before the pool's memory is released).
    unsafe {
        if deactivate(ctx) {
            forget((*ctx).pool, (*ctx).slot);
        }
    }
}

unsafe extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its context, alive while the timer is set.
    let ctx = unsafe { (*ev).data as *mut Ctx };
    // SAFETY: as above.
    if let Some((waited, rest)) = unsafe { (*ctx).queue_phase.take() } {
        // SAFETY: as above.
        let (r, pool, id) = unsafe { ((*ctx).r, (*ctx).pool, (*ctx).slot) };
        let withdrawn = with_pool(pool, |p| {
            p.attached
                .as_ref()
                .is_some_and(|a| slot::withdraw_queued(&a.region, id))
        });
        if withdrawn != Some(true) {
            // A worker has it: the rest of the deadline applies.
            // SAFETY: re-arming our own timer, which just fired.
            unsafe { nginx_sys::ngx_add_timer(ev, rest as nginx_sys::ngx_msec_t) };
            return;
        }
        // SAFETY: as above.
        unsafe { deactivate(ctx) };
        with_pool(pool, |p| p.inflight.remove(&id.index));
        let name = with_pool(pool, |p| p.name.clone()).unwrap_or_default();
        log_request(r, &format!("pool \"{name}\": no worker took the request within queue_timeout ({waited} ms); 503"));
        add_retry_after(r);
        finish(r, 503);
        return;
    }
    // SAFETY: as above.
    let (r, pool, id) = unsafe {
        if !deactivate(ctx) {
            return;
        }
        ((*ctx).r, (*ctx).pool, (*ctx).slot)
    };
    forget(pool, id);
    let (name, ms) = with_pool(pool, |p| (p.name.clone(), p.timeout_ms)).unwrap_or_default();
    // SAFETY: reading the URI of a live request.
    let uri = String::from_utf8_lossy(ngx_bytes(unsafe { &(*r).unparsed_uri })).into_owned();
    log_request(
        r,
        &format!(
            "pool \"{name}\": request \"{uri}\" timed out after {ms} ms (slot {})",
            id.index
        ),
    );
    finish(r, 504);
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

/// Allocates `len` bytes in the request's pool for its response.
pub fn alloc_in_request<'a>(r: *mut ngx_http_request_t, len: u64) -> Option<&'a mut [u8]> {
    let len = usize::try_from(len).ok()?;
    // SAFETY: pool memory of a live request, valid until the request is freed, which happens
    // after respond() has sent it.
    unsafe {
        let p = nginx_sys::ngx_pnalloc((*r).pool, len.max(1)) as *mut u8;
        (!p.is_null()).then(|| std::slice::from_raw_parts_mut(p, len))
    }
}

/// Sends the outcome of a suspended request and finalizes it.
pub fn respond(r: *mut ngx_http_request_t, outcome: Outcome) {
    // SAFETY: `r` is a live request with our context (set in `suspend`).
    unsafe {
        let req = Request::from_ngx_http_request(r);
        if let Some(ctx) = req.get_module_ctx::<Ctx>(Module::module()) {
            if !deactivate(ctx as *const Ctx as *mut Ctx) {
                return;
            }
        }
    }
    let rc = match outcome {
        Outcome::Error(status, msg) => {
            if !msg.is_empty() {
                log_request(r, &msg);
            }
            status as ngx_int_t
        }
        Outcome::Response(p, len) => {
            // SAFETY: p/len is the response buffer allocated in the request pool.
            let bytes = unsafe { std::slice::from_raw_parts(p, len) };
            match decode_response(bytes) {
                Ok(view) => send_response(r, view.status, &view.headers, view.body),
                Err(e) => {
                    log_request(r, &format!("bad response from pool worker: {e}"));
                    502
                }
            }
        }
    };
    finish(r, rc);
}

const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"proxy-connection",
    b"upgrade",
    b"content-length",
    b"te",
    b"trailer",
];

/// Copies `data` into the request pool as an ngx_str_t.
///
/// # Safety
/// `r` must be live.
unsafe fn pool_str(r: *mut ngx_http_request_t, data: &[u8]) -> Option<ngx_str_t> {
    // SAFETY: per the contract.
    unsafe {
        let p = nginx_sys::ngx_pnalloc((*r).pool, data.len().max(1)) as *mut u8;
        if p.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(data.as_ptr(), p, data.len());
        Some(ngx_str_t {
            len: data.len(),
            data: p,
        })
    }
}

/// Appends a response header.
///
/// # Safety
/// `r` must be live and its response header not yet sent.
unsafe fn push_header(r: *mut ngx_http_request_t, name: &[u8], value: &[u8]) -> bool {
    // SAFETY: per the contract; the list element is zeroed before use (its layout differs
    // between nginx versions) and then filled with pool-allocated strings.
    unsafe {
        let h = nginx_sys::ngx_list_push(ptr::addr_of_mut!((*r).headers_out.headers))
            as *mut ngx_table_elt_t;
        if h.is_null() {
            return false;
        }
        ptr::write_bytes(h, 0, 1);
        let (Some(k), Some(v)) = (pool_str(r, name), pool_str(r, value)) else {
            (*h).hash = 0;
            return false;
        };
        (*h).hash = 1;
        (*h).key = k;
        (*h).value = v;
        true
    }
}

pub fn send_response(
    r: *mut ngx_http_request_t,
    status: u16,
    headers: &[(&[u8], &[u8])],
    body: &[u8],
) -> ngx_int_t {
    // SAFETY: `r` is live and its header not sent; all strings are copied into its pool; the body
    // already lives in the request pool (respond's buffer) until the request is freed.
    unsafe {
        (*r).headers_out.status = status as usize;
        (*r).headers_out.content_length_n = body.len() as i64;
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            if HOP_BY_HOP.contains(&&lower[..]) {
                continue;
            }
            if lower == b"content-type" {
                if let Some(v) = pool_str(r, value) {
                    (*r).headers_out.content_type = v;
                    (*r).headers_out.content_type_len = v.len;
                }
                continue;
            }
            if !push_header(r, name, value) {
                return NGX_ERROR as ngx_int_t;
            }
        }
        let rc = nginx_sys::ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        let b = nginx_sys::ngx_pcalloc((*r).pool, std::mem::size_of::<nginx_sys::ngx_buf_t>())
            as *mut nginx_sys::ngx_buf_t;
        let out = nginx_sys::ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_chain_t>())
            as *mut ngx_chain_t;
        if b.is_null() || out.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        let start = body.as_ptr() as *mut u8;
        (*b).start = start;
        (*b).pos = start;
        (*b).last = start.add(body.len());
        (*b).end = (*b).last;
        (*b).set_memory(u32::from(!body.is_empty()));
        (*b).set_last_buf(u32::from(r == (*r).main));
        (*b).set_last_in_chain(1);
        (*out).buf = b;
        (*out).next = ptr::null_mut();
        nginx_sys::ngx_http_output_filter(r, out)
    }
}
