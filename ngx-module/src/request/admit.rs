//! Admission: a request whose body is ready takes a slot, its head and what the window allows of
//! its body go into the region ([`ngx_pool_channel::outgoing`]), and it joins the queue; or it
//! waits in nginx for arena space, or is refused (queue full).

use super::*;

/// How soon a request waiting for arena space looks again.
pub(super) const ARENA_RETRY_MS: usize = 5;

/// Takes a slot, writes the head and the first part of the body, queues the request.
pub(super) fn submit(ctx: CtxRef) {
    let c = ctx.get();
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
            p.inflight.insert(
                id.index,
                InFlight {
                    gen: id.gen,
                    r,
                    told: &TELL,
                },
            )
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
    c.outcome.queued_us = Some(ngx_pool_channel::sys::monotonic_us());
    crate::runtime::wake_workers_later(c.pool);
    progress(ctx);
}

pub(super) fn arm_retry(ctx: CtxRef) {
    // SAFETY: the context is live; its retry event was set up in `suspend`.
    unsafe {
        let ev = ptr::addr_of_mut!((*ctx.raw()).retry);
        if (*ev).timer_set() == 0 {
            nginx_sys::ngx_add_timer(ev, ARENA_RETRY_MS as nginx_sys::ngx_msec_t);
        }
    }
}
