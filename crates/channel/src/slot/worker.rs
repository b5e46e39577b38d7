//! The pool side of a slot: a worker waiting for work, taking a request, streaming, answering
//! (`finish`, `fail`), and waking the nginx worker that owns it.
//!
//! Invariant: a worker writes a slot's response fields only while it holds it (`Running`,
//! `Streaming`); it hands the slot back by one compare-and-swap (Release), after which it
//! touches nothing of it but what a state check says is still its own.

use super::*;

/// Pool worker `worker`: takes the next queued fan-out task, or else the next queued request
/// (work already admitted finishes first), skipping ones their owner took back. The worker's
/// entry names the slot *before* the slot turns Running, so poold can always tell which
/// request or task a dead worker held.
pub fn take(side: PoolSide<'_>, worker: u32) -> Option<SlotId> {
    let region = side.region();
    let entry = region.worker(worker);
    loop {
        let next = queue::Ring::tasks(region)
            .pop()
            .or_else(|| queue::pop(region));
        let id = SlotId::decode(next?);
        if let Some(e) = entry {
            e.current_gen.store(id.gen, Ordering::Relaxed);
            // SeqCst: ordered before the CAS below, so poold (which reads the slot state after
            // this) never sees Running without also seeing which worker took it.
            e.current.store(id.index + 1, Ordering::SeqCst);
        }
        if let Some(s) = region.slot(id.index) {
            s.worker.store(worker, Ordering::Relaxed);
            s.started_us
                .store(crate::sys::monotonic_us(), Ordering::Relaxed);
        }
        if transition(region, id, SlotState::Queued, SlotState::Running) {
            return Some(id);
        }
        let_go_of_withdrawn(region, id, worker);
        if let Some(e) = entry {
            e.current.store(0, Ordering::Relaxed);
        }
    }
}

/// poold: pool worker `worker`'s replacement is ready; it may exit at its next request
/// boundary. Wakes every sleeping worker so that it sees this if it is idle.
pub fn tell_retire(side: PoolSide<'_>, worker: u32) {
    let region = side.region();
    if let Some(e) = region.worker(worker) {
        e.retire_now.store(1, Ordering::SeqCst);
        let h = region.header();
        h.work_seq.fetch_add(1, Ordering::SeqCst);
        // i32::MAX: the kernel reads the count as a signed int (u32::MAX would wake one).
        let _ = futex_wake(&h.work_seq, i32::MAX as u32);
    }
}

/// Pool worker: has poold told us to retire?
pub fn retire_due(side: PoolSide<'_>, worker: u32) -> bool {
    let region = side.region();
    region
        .worker(worker)
        .is_some_and(|e| e.retire_now.load(Ordering::SeqCst) != 0)
}

/// Pool worker: sleeps until a request may be there (no CPU, no syscalls while none comes).
///
/// First it may poll the queue for a few microseconds, as `spin` decides ([`crate::spin`]):
/// under load the next request is usually that close, and catching it saves the producer a
/// futex wake and us a sleep, when a core is free to poll on.
///
/// A quiet spell ([`QUIET`] without work) ends the sleep once, if there is
/// something to give back: `on_quiet` (the worker's own heap), and, for worker 0 alone while
/// no request is in flight, the written free chunks of the arena ([`crate::trim`]; one
/// trimmer, so that trims never hold more than half the arena between them). A trimmed arena
/// has nothing more to give until it is written again.
///
/// Returns `None` when `stop` says so (checked before each sleep and after each wake-up).
pub fn wait_for_work(
    side: PoolSide<'_>,
    worker: u32,
    spin: &mut crate::spin::Spin,
    stop: &dyn Fn() -> bool,
    mut on_quiet: Option<&dyn Fn()>,
) -> Option<SlotId> {
    let region = side.region();
    let h = region.header();
    loop {
        if let Some(id) = take(side, worker) {
            return Some(id);
        }
        if stop() {
            return None;
        }
        if let Some(id) = spin.run(|| take(side, worker)) {
            return Some(id);
        }
        h.sleepers.fetch_add(1, Ordering::SeqCst);
        // SeqCst fence: pairs with the one in `wake_workers` (see there).
        fence(Ordering::SeqCst);
        let seq = h.work_seq.load(Ordering::SeqCst);
        if let Some(id) = take(side, worker) {
            h.sleepers.fetch_sub(1, Ordering::SeqCst);
            return Some(id);
        }
        // After reading `seq`: a stop signalled since the check above bumped it, so either we
        // see the stop here or the futex does not sleep.
        if stop() {
            h.sleepers.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let arena_to_trim = worker == 0 && arena_pending(region);
        let quiet = (on_quiet.is_some() || arena_to_trim).then_some(QUIET);
        let asleep_since = crate::sys::monotonic_ms();
        let _ = crate::sys::futex_wait(&h.work_seq, seq, quiet);
        h.sleepers.fetch_sub(1, Ordering::SeqCst);
        // Only a full quiet spell with nothing queued meanwhile (an interrupted or woken sleep
        // starts another).
        let quiet_ms = quiet.map_or(u64::MAX, |q| q.as_millis() as u64);
        if crate::sys::monotonic_ms().saturating_sub(asleep_since) >= quiet_ms
            && h.work_seq.load(Ordering::SeqCst) == seq
        {
            // Relaxed: a hint (a request that starts now finds chunks all the same).
            if arena_to_trim && h.stats.slots_in_use.load(Ordering::Relaxed) == 0 {
                trim_arena(region, worker);
            }
            if let Some(f) = on_quiet.take() {
                f();
            }
        }
    }
}

/// How long a pool worker has had nothing to do before it gives back what it holds idle.
pub const QUIET: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(not(loom))]
fn arena_pending(region: &Region) -> bool {
    crate::trim::pending(region)
}

#[cfg(not(loom))]
fn trim_arena(region: &Region, worker: u32) {
    crate::trim::run(region, worker);
}

// Under loom the arena is never trimmed.
#[cfg(loom)]
fn arena_pending(_: &Region) -> bool {
    false
}

#[cfg(loom)]
fn trim_arena(_: &Region, _: u32) {}

/// Pool worker: the response head (`head_len` bytes) is published on the response stream and
/// the body follows; nginx may start sending. Returns where to deliver the news, or
/// `Abandoned` if nginx gave up meanwhile (the worker then stops and calls [`finish`], which
/// releases the slot).
pub fn start_streaming(side: PoolSide<'_>, id: SlotId, head_len: u32) -> Handover {
    let region = side.region();
    let Some(slot) = region.slot(id.index) else {
        return Handover::Abandoned;
    };
    slot.resp_head_len.store(head_len, Ordering::Relaxed);
    if transition(region, id, SlotState::Running, SlotState::Streaming) {
        let conn = slot.conn.load(Ordering::Relaxed);
        post_completion(side, conn, id);
        return Handover::Deliver {
            conn,
            conn_gen: slot.conn_gen.load(Ordering::Relaxed),
        };
    }
    Handover::Abandoned
}

/// Pool worker: the response stream is complete, `total` bytes of which the first `head_len`
/// are the head.
pub fn finish(side: PoolSide<'_>, id: SlotId, head_len: u32, total: u64) -> Handover {
    let region = side.region();
    let Some(slot) = region.slot(id.index) else {
        return Handover::Abandoned;
    };
    slot.resp_head_len.store(head_len, Ordering::Relaxed);
    slot.resp_len.store(total, Ordering::Relaxed);
    let stats = &region.header().stats;
    if is_task(slot) {
        stats.tasks_completed.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.completed.fetch_add(1, Ordering::Relaxed);
    }
    settle(side, id, SlotState::Done)
}

/// Pool worker or poold: fails the request with `reason`.
///
/// Counted in `failed` only if nginx still waited for it (nginx then answers it and logs why)
/// or it ran past its deadline: a request nginx had already given up on (its client gone) was
/// counted in `abandoned` then, and its failure is nobody's.
pub fn fail(side: PoolSide<'_>, id: SlotId, reason: FailReason) -> Handover {
    let region = side.region();
    let mut task = false;
    if let Some(slot) = region.slot(id.index) {
        slot.fail_reason.store(reason as u32, Ordering::Relaxed);
        task = is_task(slot);
    }
    let handover = settle(side, id, SlotState::Failed);
    let stats = &region.header().stats;
    if task {
        // Its request answers for it (or is gone already).
        stats.tasks_failed.fetch_add(1, Ordering::Relaxed);
        return handover;
    }
    if reason == FailReason::Timeout {
        stats.timeouts.fetch_add(1, Ordering::Relaxed);
    }
    if reason == FailReason::Timeout || matches!(handover, Handover::Deliver { .. }) {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    handover
}

pub(super) fn settle(side: PoolSide<'_>, id: SlotId, to: SlotState) -> Handover {
    let region = side.region();
    let Some(slot) = region.slot(id.index) else {
        return Handover::Abandoned;
    };
    if transition(region, id, SlotState::Running, to)
        || transition(region, id, SlotState::Streaming, to)
    {
        if is_task(slot) {
            wake_caller(region, slot);
            return Handover::ToCaller;
        }
        let conn = slot.conn.load(Ordering::Relaxed);
        post_completion(side, conn, id);
        return Handover::Deliver {
            conn,
            conn_gen: slot.conn_gen.load(Ordering::Relaxed),
        };
    }
    // Abandoned, the slot is its worker's to free.
    free_owned(region, id, &[SlotState::Abandoned], |s| {
        Actor::Worker(s.worker.load(Ordering::Relaxed))
    });
    Handover::Abandoned
}

/// Queues slot `id` on connection `conn`'s completion ring, for the nginx worker to look at on
/// its next wake-up; if the ring is full, flags the connection so that it looks at everything.
/// Called before the wake-up decision ([`needs_wake`]), so the wake-up finds it.
pub fn post_completion(side: PoolSide<'_>, conn: u32, id: SlotId) {
    let region = side.region();
    let Some(ring) = queue::Ring::completions(region, conn) else {
        return;
    };
    if ring.push(id.encode()).is_err() {
        if let Some(c) = region.conn(conn) {
            // Release: the nginx worker that swaps it sees every state change before it.
            c.overflow.store(1, Ordering::Release);
        }
    }
}

/// After `finish`/`fail` delivered: returns true if the caller must write the connection's
/// eventfd (the nginx worker was not already told).
pub fn needs_wake(side: PoolSide<'_>, conn: u32, conn_gen: u32) -> bool {
    let region = side.region();
    let Some(c) = region.conn(conn) else {
        return false;
    };
    let st = c.state.load(Ordering::Acquire);
    if st & 1 == 0 || (st >> 1) as u32 != conn_gen {
        return false;
    }
    // SeqCst: pairs with `clear_wake`; either the nginx worker's scan sees our Done, or we see
    // its cleared flag and write the eventfd.
    c.wake_pending.swap(1, Ordering::SeqCst) == 0
}

/// Pool worker `worker` popped `id` and could not take it: if nginx withdrew it, whichever of
/// the two is last frees the slot. In this order, so that nginx finishing its withdrawal between
/// the two steps is still seen.
pub(super) fn let_go_of_withdrawn(region: &Region, id: SlotId, worker: u32) {
    if !transition(region, id, SlotState::Withdrawing, SlotState::Orphaned) {
        free_from(region, id, &[SlotState::Abandoned], Actor::Worker(worker));
    }
}

/// Pool worker: done with its current request.
pub fn clear_current(side: PoolSide<'_>, worker: u32) {
    let region = side.region();
    if let Some(e) = region.worker(worker) {
        e.current.store(0, Ordering::Relaxed);
    }
}

/// poold: the request worker `worker` is running now, since when (CLOCK_MONOTONIC ms), and its
/// own deadline in ms if nginx set one.
pub fn running_since(region: &Region, worker: u32) -> Option<(SlotId, u64, Option<u64>)> {
    let id = held_by(region, worker, false)?;
    let s = region.slot(id.index)?;
    let own = s.timeout_ms.load(Ordering::Relaxed);
    Some((
        id,
        s.started_us.load(Ordering::Relaxed) / 1000,
        (own != 0).then_some(u64::from(own)),
    ))
}
