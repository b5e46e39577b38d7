//! An upgraded connection (a WebSocket): once the pool answers a handshake with 101, the client's
//! bytes go to the pool as the request's open-ended body, and the pool's as the response's,
//! until either side closes. nginx's `proxy_pass` does the same for an upstream that switches
//! protocols (`ngx_http_upstream_upgrade`); the frames are the pool's to parse, so nothing the
//! client sends after the handshake is interpreted in nginx.
//!
//! The request is offered as a tunnel when it asks for one (`Upgrade: websocket` and
//! `Connection: upgrade` over HTTP/1.1, a GET) and its pool's handler carries WebSockets (an
//! `asgi:` app): its body length is then [`OPEN_BODY`](ngx_pool_channel::message::OPEN_BODY). Any
//! other answer than 101 is an ordinary response and nothing is read from the client.
//!
//! Open, the tunnel reads the client only when the pool worker has credit for more (the
//! request stream's window): a client that sends faster than the app reads is held back in its
//! socket, as a slow reader holds back the pool. It has no deadline (the pool's `timeout` is for
//! answers, and a WebSocket may idle for hours); `send_timeout` still closes a client that
//! stops reading. A graceful shutdown of nginx (a reload) tells the pool worker, which closes
//! the WebSocket with 1012 and ends the response.

use super::*;

/// Bytes read from the client per receive.
const TUNNEL_BUFFER: usize = 16 << 10;

/// How long a tunnel may take to close once nginx shuts down gracefully (the pool closes it at
/// once; this bounds a pool that does not). Its timer is also what keeps the exiting nginx
/// worker for it: a worker with no timers left exits.
const SHUTDOWN_GRACE_MS: u64 = 5000;

/// How long the pool has to answer what a client sent just before it closed its side (its
/// close frame, whose answer ends the WebSocket cleanly) before the tunnel ends anyway.
const CLIENT_EOF_GRACE_MS: u64 = 1000;

/// Where a request stands as a tunnel.
pub(super) enum Tunnel {
    /// It asks for an upgrade, which the pool may answer with 101.
    Offered,
    /// Upgraded: the client's bytes are read into `buf` as the pool has room for them (what
    /// it sent before closing too); `eof` once the client has closed its side.
    Open {
        buf: *mut nginx_sys::ngx_buf_t,
        eof: bool,
    },
}

/// Whether request `r` of pool `pool` is to be offered as a tunnel.
pub(super) fn wants_tunnel(r: *mut ngx_http_request_t, pool: usize, req: &Request) -> bool {
    // SAFETY: fields of a live request.
    let (version, method, body) = unsafe {
        let h = &(*r).headers_in;
        (
            (*r).http_version,
            (*r).method,
            h.content_length_n > 0 || h.chunked() != 0,
        )
    };
    // A handshake is a GET without a body (RFC 6455 4.1): bytes after its head are frames.
    if version != nginx_sys::NGX_HTTP_VERSION_11 as usize
        || method != nginx_sys::NGX_HTTP_GET as usize
        || body
    {
        return false;
    }
    let has_token = |name: &[u8], token: &[u8]| {
        req.headers_in_iterator().any(|(k, v)| {
            k.as_bytes().eq_ignore_ascii_case(name)
                && v.as_bytes()
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    if !has_token(b"upgrade", b"websocket") || !has_token(b"connection", b"upgrade") {
        return false;
    }
    with_pool(pool, |p| p.handler.starts_with("asgi:")).unwrap_or(false)
}

/// The pool answered 101 and the head is out: the tunnel opens.
pub(super) fn open(ctx: CtxRef) {
    let c = ctx.get();
    let r = c.r;
    // SAFETY: the live request's pool, connection and events; the timer is ours.
    let buf = unsafe { nginx_sys::ngx_create_temp_buf((*r).pool, TUNNEL_BUFFER) };
    if buf.is_null() {
        return terminate(ctx);
    }
    // SAFETY: as above.
    unsafe {
        if c.timer.timer_set() != 0 {
            nginx_sys::ngx_del_timer(ptr::addr_of_mut!(c.timer));
        }
        c.queue_phase = None;
        (*r).read_event_handler = Some(on_tunnel_read);
        let conn = (*r).connection;
        // A graceful shutdown (a reload) calls the read handler of "idle" connections with
        // `close` set; ours tells the pool instead of dropping the connection (see below).
        (*conn).set_idle(1);
        (*(*conn).read).handler = Some(on_connection_read);
        // Small messages go out as they are written, as nginx's own upgrade does.
        let req = Request::from_ngx_http_request(r);
        if ngx::http::NgxHttpCoreModule::location_conf(req).is_some_and(|l| l.tcp_nodelay != 0) {
            nginx_sys::ngx_tcp_nodelay(conn);
        }
    }
    c.tunnel = Some(Tunnel::Open { buf, eof: false });
    // What the client sent right behind its handshake came with the head: first in line.
    // SAFETY: the request's header buffer, [pos, last) unread.
    let early = unsafe {
        let h = (*r).header_in;
        (!h.is_null() && (*h).last > (*h).pos).then_some(h)
    };
    if let (Some(h), Some(up)) = (early, c.upload.as_mut()) {
        up.add([BodyPart::Arriving(h)]);
    }
    progress(ctx);
}

/// Reads what the client sent into the tunnel's buffer for the upload: `Ok(true)` if any came;
/// `Err` if the tunnel ended (the client closed, or its connection failed).
pub(super) fn read(ctx: CtxRef) -> Result<bool, ()> {
    let c = ctx.get();
    let Some(Tunnel::Open { buf, .. }) = c.tunnel else {
        // Not upgraded (yet): the client has nothing to send.
        return Ok(false);
    };
    let r = c.r;
    // SAFETY: the tunnel's buffer lives in the request's pool; the upload has taken all of its
    // bytes (it asks for more only then), so it may be filled again. The connection is live.
    let n = unsafe {
        let conn = (*r).connection;
        if (*(*conn).read).ready() == 0 {
            nginx_sys::ngx_handle_read_event((*conn).read, 0);
            return Ok(false);
        }
        (*buf).pos = (*buf).start;
        (*buf).last = (*buf).start;
        let Some(recv) = (*conn).recv else {
            return Err(());
        };
        recv(conn, (*buf).start, TUNNEL_BUFFER)
    };
    if n > 0 {
        // SAFETY: `recv` wrote `n` bytes at the start of the buffer.
        unsafe { (*buf).last = (*buf).start.add(n as usize) };
        if let Some(up) = c.upload.as_mut() {
            up.add([BodyPart::Arriving(buf)]);
        }
        return Ok(true);
    }
    if n == nginx_sys::NGX_AGAIN as isize {
        // SAFETY: the connection's read event, to be told when more comes.
        unsafe { nginx_sys::ngx_handle_read_event((*(*r).connection).read, 0) };
        return Ok(false);
    }
    if n == 0 {
        client_closed(ctx);
        return Ok(false);
    }
    // Its connection failed: the pool's app is told it left.
    log_request_at(
        r,
        nginx_sys::NGX_LOG_INFO,
        &format!(
            "pool \"{}\": the upgraded connection failed",
            pool_name(c.pool)
        ),
    );
    terminate(ctx);
    Err(())
}

/// The tunnel's timer: the grace after the client closed its side, or after nginx began to
/// shut down, is over; the connection is closed.
pub(super) fn grace_over(ctx: CtxRef) {
    let c = ctx.get();
    let what = if matches!(c.tunnel, Some(Tunnel::Open { eof: true, .. })) {
        "the client closed its side of the upgraded connection and the pool did not end it; closed"
            .to_string()
    } else {
        format!("the upgraded connection was still open {SHUTDOWN_GRACE_MS} ms after nginx began to shut down; closed")
    };
    log_request_at(
        c.r,
        nginx_sys::NGX_LOG_INFO,
        &format!("pool \"{}\": {what}", pool_name(c.pool)),
    );
    terminate(ctx);
}

/// The client sent more on the upgraded connection (or closed it).
unsafe extern "C" fn on_tunnel_read(r: *mut ngx_http_request_t) {
    crate::edge::guard(
        "tunnel",
        || recover(r),
        || {
            if let Some(ctx) = ctx_of(r) {
                // A close behind bytes not read yet (the app is not reading): the socket says
                // so (EPOLLRDHUP); the tunnel ends after the grace, not when the app reads.
                // SAFETY: the live request's connection and read event.
                if unsafe { (*(*(*r).connection).read).pending_eof() } != 0 {
                    client_closed(ctx);
                }
                progress(ctx);
            }
        },
    );
}

/// The client closed its side: what it sent last (a close frame) is the pool's to answer,
/// which ends the response; if it does not, the tunnel ends after [`CLIENT_EOF_GRACE_MS`].
fn client_closed(ctx: CtxRef) {
    let c = ctx.get();
    let Some(Tunnel::Open { buf, eof: false }) = c.tunnel else {
        return;
    };
    c.tunnel = Some(Tunnel::Open { buf, eof: true });
    if c.timer.timer_set() == 0 {
        // SAFETY: the context's own timer.
        unsafe {
            nginx_sys::ngx_add_timer(
                ptr::addr_of_mut!(c.timer),
                CLIENT_EOF_GRACE_MS as nginx_sys::ngx_msec_t,
            )
        };
    }
}

/// The connection's read handler while it tunnels: nginx's own (`ngx_http_request_handler`)
/// but for a graceful shutdown, which nginx signals by calling it with `c->close` set: the pool
/// worker is told to close the tunnel, and the request goes on until it has.
unsafe extern "C" fn on_connection_read(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls this with the connection's read event, whose data is the connection,
    // whose data is its (our) request.
    let (conn, r) = unsafe {
        let conn = (*ev).data as *mut nginx_sys::ngx_connection_t;
        (conn, (*conn).data as *mut ngx_http_request_t)
    };
    crate::edge::guard(
        "tunnel",
        || recover(r),
        || {
            // SAFETY: the live connection of the request.
            let (shutting_down, forced) = unsafe { ((*conn).close() != 0, (*conn).error() != 0) };
            if shutting_down && forced {
                // `worker_shutdown_timeout` ran out: nginx closes every connection now.
                if let Some(ctx) = ctx_of(r) {
                    terminate(ctx);
                }
                return;
            }
            if shutting_down {
                // SAFETY: as above.
                unsafe {
                    (*conn).set_close(0);
                    (*conn).set_idle(0);
                }
                if let Some(ctx) = ctx_of(r) {
                    let c = ctx.get();
                    if let Some(id) = c.slot {
                        slot::notice_going_away(c.region.nginx_side(), id);
                    }
                    if c.timer.timer_set() == 0 {
                        // SAFETY: the context's own timer.
                        unsafe {
                            nginx_sys::ngx_add_timer(
                                ptr::addr_of_mut!(c.timer),
                                SHUTDOWN_GRACE_MS as nginx_sys::ngx_msec_t,
                            )
                        };
                    }
                }
                return;
            }
            // SAFETY: the request's own read handler, as nginx's request handler calls it.
            if let Some(h) = unsafe { (*r).read_event_handler } {
                // SAFETY: as above.
                unsafe { h(r) };
            }
        },
    );
    // SAFETY: the live connection; as nginx's request handler ends.
    unsafe { nginx_sys::ngx_http_run_posted_requests(conn) };
}
