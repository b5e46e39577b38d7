//! The response on its way out: its head once, then its body buffered through nginx's
//! event pipe ([`crate::buffered`]) or streamed from the arena ([`crate::download`]).

use super::*;

/// Records, once, which worker took the request and when (and how long it waited, in the
/// pool's queue-time histogram), and when its answer was complete.
pub(super) fn observe(o: &mut Outcome, region: &Region, id: SlotId, state: Option<SlotState>) {
    if o.worker_pid.is_none() {
        if let Some(s) = region.slot(id.index) {
            let worker = s.worker.load(std::sync::atomic::Ordering::Relaxed);
            let started = s.started_us.load(std::sync::atomic::Ordering::Relaxed);
            o.started_us = Some(started);
            o.worker_pid = region
                .worker(worker)
                .map(|w| w.pid.load(std::sync::atomic::Ordering::Relaxed))
                .filter(|p| *p != 0);
            if let Some(queued) = o.queued_us {
                region
                    .header()
                    .stats
                    .queue_time
                    .observe(started.saturating_sub(queued));
            }
        }
    }
    if o.finished_us.is_none() && matches!(state, Some(SlotState::Done | SlotState::Failed)) {
        o.finished_us = Some(ngx_pool_channel::sys::monotonic_us());
    }
}

/// Sends the response head once, then the body: buffered through nginx's event pipe, or
/// streamed from the arena as it comes; `total` once `Done`.
pub(super) fn respond(ctx: CtxRef, region: &Region, id: SlotId, total: Option<u64>, client: bool) {
    let c = ctx.get();
    let r = c.r;
    if c.download.is_none() && c.buffered.is_none() {
        let head_len = slot::response(region, id).map_or(0, |(h, _)| h);
        let opts = download::Opts {
            buffering: c.buffering.response,
            copy_up_to: c.buffering.buffer_size as u64,
            max_head: c.buffering.max_header_size as u64,
            upgrade: matches!(c.tunnel, Some(Tunnel::Offered)),
        };
        match download::start(r, region, id, head_len, total, &opts) {
            Err(e) => {
                let (name, handler) =
                    with_pool(c.pool, |p| (p.name.clone(), p.handler.clone())).unwrap_or_default();
                return fail(
                    ctx,
                    Failure::BadAnswer,
                    format!("pool \"{name}\" (handler \"{handler}\"): bad response from pool worker: {e}"),
                );
            }
            Ok(Started::Sent(rc)) => {
                // Nothing points into the region: the slot goes back now (a worker still
                // streaming, for a HEAD request, sees it abandoned and stops).
                forget_slot(ctx);
                return complete(ctx, rc);
            }
            Ok(Started::Streaming(d)) => {
                let upgraded = d.upgraded;
                c.download = Some(d);
                if upgraded {
                    return tunnel::open(ctx);
                }
            }
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
pub(super) fn pump_buffered(ctx: CtxRef, client: bool) {
    let c = ctx.get();
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
        Turn::Broken(why) => fail(
            ctx,
            Failure::BadAnswer,
            format!("pool \"{}\": {why}", pool_name(c.pool)),
        ),
        Turn::ClientGone => terminate(ctx),
    }
}

/// Streams body bytes from the arena as they come (`pool_buffering off`).
pub(super) fn pump_download(ctx: CtxRef, region: &Region, id: SlotId, total: Option<u64>) {
    let c = ctx.get();
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
    // SAFETY: the request's connection and its write event are live; the core module's
    // location configuration of a live request exists.
    unsafe {
        let conn = (*r).connection;
        let wev = (*conn).write;
        if (*conn).buffered() != 0 {
            // The client has bytes to take: it gets `send_timeout` for each write, as
            // ngx_http_writer gives it (the pool's deadline alone would let a client that
            // never reads hold the handler until then).
            let req = Request::from_ngx_http_request(r);
            if let Some(clcf) = ngx::http::NgxHttpCoreModule::location_conf(req) {
                if (*wev).delayed() == 0 {
                    nginx_sys::ngx_add_timer(wev, clcf.send_timeout);
                }
                nginx_sys::ngx_handle_write_event(wev, clcf.send_lowat);
            }
        } else if (*wev).timer_set() != 0 {
            // Waiting for the pool worker, not the client.
            nginx_sys::ngx_del_timer(wev);
        }
    }
}
