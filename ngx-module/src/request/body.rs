//! The request body on its way in: whether nginx reads it whole first, the buffers it
//! holds, and, when a location streams uploads, each one as the client sends it.

use super::*;

/// Whether request `r`'s body is read whole before it is queued: unless its location says
/// `pool_request_buffering off` and the body's length is known up front (a chunked body is
/// buffered whatever the setting: the pool is told the length with the head), as
/// `proxy_request_buffering` does for an HTTP/1.0 upstream.
pub(super) fn buffers_request_body(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: `r` is a live request nginx handed us.
    let req = unsafe { Request::from_ngx_http_request(r) };
    let off = Module::location_conf(req)
        .and_then(|c| c.effective)
        .is_some_and(|e| !e.request);
    // SAFETY: reading the parsed headers of a live request.
    let known = unsafe { (*r).headers_in.content_length_n > 0 && (*r).headers_in.chunked() == 0 };
    !(off && known)
}

/// The body nginx holds for `r`. While the body is still `arriving` (unbuffered), the buffers
/// are taken off the request (nginx appends the next ones to an empty chain) and each goes back
/// to nginx once its bytes are in the arena.
pub(super) fn body_parts(r: *mut ngx_http_request_t, arriving: bool) -> Vec<BodyPart> {
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

/// Writes what the window allows of the request body. Returns false if the request ended.
pub(super) fn pump_upload(ctx: CtxRef, region: &Region, id: SlotId, queued: bool) -> bool {
    let c = ctx.get();
    let Some(up) = c.upload.as_mut() else {
        return true;
    };
    let mut asked = false;
    loop {
        let pumped = up.pump(region, queued);
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
                fail(
                    ctx,
                    Failure::Internal,
                    format!("pool \"{}\": {e}", pool_name(c.pool)),
                );
                return false;
            }
        }
    }
}

/// Reads what the client has sent of an arriving body into nginx's buffers and hands them to
/// the upload. `Ok(true)` if any came; `Err` if the request ended (timed out, bad body).
pub(super) fn read_more(ctx: CtxRef) -> Result<bool, ()> {
    let c = ctx.get();
    if c.tunnel.is_some() {
        return tunnel::read(ctx);
    }
    let r = c.r;
    // SAFETY: a live request reading its body unbuffered (it was queued with `reading_body`).
    let rc = unsafe { nginx_sys::ngx_http_read_unbuffered_request_body(r) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        // The client's doing (a bad body, a timeout, a close): nginx logs those at info.
        let name = pool_name(c.pool);
        log_request_at(
            r,
            nginx_sys::NGX_LOG_INFO,
            &format!("pool \"{name}\": reading the request body: {rc}"),
        );
        fail(ctx, Failure::ClientBody(rc), String::new());
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
pub(super) unsafe extern "C" fn on_body_read(r: *mut ngx_http_request_t) {
    crate::edge::guard(
        "body",
        || recover(r),
        || {
            if let Some(ctx) = ctx_of(r) {
                if read_more(ctx).is_err() {
                    return;
                }
                if body_cut_short(r) {
                    let pool = ctx.get().pool;
                    log_request_at(
                        r,
                        nginx_sys::NGX_LOG_INFO,
                        &format!(
                            "pool \"{}\": client closed the connection before sending its whole body",
                            pool_name(pool)
                        ),
                    );
                    return fail(ctx, Failure::ClientGone, String::new());
                }
                progress(ctx);
            }
        },
    );
}

/// Whether the client of `r` closed its side with its body still short: what it sent and
/// nginx has not read yet (the socket's buffer) is less than what is missing. A request still
/// waiting in the queue holds its body in nginx's buffer, so nginx stops reading the socket and
/// would not see the close until a worker takes the request; the read event still says
/// (`EPOLLRDHUP`), and this turns it into the end of the request.
fn body_cut_short(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: a live request, its connection and read event; FIONREAD only writes the count.
    unsafe {
        let c = (*r).connection;
        let rev = (*c).read;
        if (*rev).pending_eof() == 0 && (*rev).eof() == 0 {
            return false;
        }
        let rb = (*r).request_body;
        if rb.is_null() || (*rb).rest <= 0 {
            return false;
        }
        let mut unread: libc::c_int = 0;
        if libc::ioctl((*c).fd, libc::FIONREAD, &mut unread) == -1 {
            return false;
        }
        i64::from(unread) < (*rb).rest
    }
}
