//! The nginx side of a slot: taking one, filling and queueing it, waking pool workers,
//! reading completions, and giving the slot back (released when answered, abandoned or
//! withdrawn when nginx stops waiting).
//!
//! Invariant: nginx touches a slot only while it owns it (`Filling`, or an answer in `Done` or
//! `Failed`) or through a compare-and-swap from a state it expects; a free slot goes back on the
//! free list only inside the owner's marker window.

use super::*;

/// Takes a free slot for a request of nginx connection `conn`, or `None` if all are in use.
pub fn alloc(side: NginxSide<'_>, conn: u32, conn_gen: u32) -> Option<SlotId> {
    let region = side.region();
    // Open until the slot is marked `Filling` (dropped last).
    let _window = MarkerWindow::open(region, Actor::Conn(conn));
    let g = region.geometry();
    let h = region.header();
    let index = freelist::pop(&h.slot_free, g.slots, |i| {
        region.slot(i).map(|s| &s.next_free)
    })?;
    let slot = region.slot(index)?;
    let gen = prepare(slot, conn, conn_gen, 0);
    h.stats.slots_in_use.fetch_add(1, Ordering::Relaxed);
    Some(SlotId { index, gen })
}

/// [`crate::layout::Slot::notice`]: the nginx worker that owns the request is shutting down
/// gracefully (a reload): an upgraded connection is to be closed now, cleanly.
pub const NOTICE_GOING_AWAY: u32 = 1;

/// nginx: tells the pool worker running request `id` that its nginx worker is going away (see
/// [`NOTICE_GOING_AWAY`]), and wakes it if it waits.
pub fn notice_going_away(side: NginxSide<'_>, id: SlotId) {
    let region = side.region();
    if let Some(s) = region.slot(id.index) {
        if state_of(region, id)
            .is_some_and(|st| matches!(st, SlotState::Running | SlotState::Streaming))
        {
            s.notice.store(NOTICE_GOING_AWAY, Ordering::SeqCst);
            crate::stream::notify_worker(region, id);
        }
    }
}

/// Pool worker: nginx's notice for request `id` (0: none; see [`NOTICE_GOING_AWAY`]).
pub fn notice(region: &Region, id: SlotId) -> u32 {
    match state_of(region, id) {
        Some(SlotState::Running | SlotState::Streaming) => region
            .slot(id.index)
            .map_or(0, |s| s.notice.load(Ordering::SeqCst)),
        _ => 0,
    }
}

/// Whether request `id` is an upgraded connection: its body open-ended
/// ([`crate::message::OPEN_BODY`]) and its answer (the 101) streaming. It has no deadline.
pub fn is_open_tunnel(region: &Region, id: SlotId) -> bool {
    if state_of(region, id) != Some(SlotState::Streaming) {
        return false;
    }
    region.slot(id.index).is_some_and(|s| {
        let total = s.req_len.load(Ordering::Relaxed);
        let head = u64::from(s.req_head_len.load(Ordering::Relaxed));
        total.saturating_sub(head) >= crate::message::OPEN_BODY
    })
}

/// Upgraded connections open in the region now (a scan of the slots: no count to keep right
/// across crashes).
pub fn open_tunnels(region: &Region) -> u32 {
    (0..region.geometry().slots)
        .filter_map(|i| view(region, i))
        .filter(|v| v.state == Some(SlotState::Streaming) && is_open_tunnel(region, v.id))
        .count() as u32
}

/// nginx, before `submit`: this request's own deadline (`pool_timeout`), for poold to enforce.
pub fn set_timeout(side: NginxSide<'_>, id: SlotId, ms: u64) {
    let region = side.region();
    if let Some(s) = region.slot(id.index) {
        s.timeout_ms
            .store(ms.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
    }
}

/// Queues a request whose stream holds its `head_len`-byte head (and maybe part of its body),
/// `total` bytes in all once complete, and wakes a sleeping pool worker if there is one.
pub fn submit(side: NginxSide<'_>, id: SlotId, head_len: u32, total: u64) -> bool {
    let queued = enqueue(side, id, head_len, total);
    if queued {
        wake_workers(side, 1);
    }
    queued
}

/// [`submit`] without the wake-up: the caller calls [`wake_workers`] once for a batch (nginx
/// does at the end of its event loop iteration, so a burst of requests costs one system call).
pub fn enqueue(side: NginxSide<'_>, id: SlotId, head_len: u32, total: u64) -> bool {
    let region = side.region();
    let Some(slot) = region.slot(id.index) else {
        return false;
    };
    slot.req_head_len.store(head_len, Ordering::Relaxed);
    slot.req_len.store(total, Ordering::Relaxed);
    if !transition(region, id, SlotState::Filling, SlotState::Queued) {
        return false;
    }
    if queue::push(region, id.encode()).is_err() {
        // Cannot happen while queue capacity >= slots; undo so the caller answers 503.
        transition(region, id, SlotState::Queued, SlotState::Filling);
        return false;
    }
    region
        .header()
        .stats
        .accepted
        .fetch_add(1, Ordering::Relaxed);
    true
}

/// Wakes up to `n` sleeping pool workers, after requests were queued with [`enqueue`]; no
/// system call when none sleeps.
pub fn wake_workers(side: NginxSide<'_>, n: u32) {
    wake_sleepers(side.region(), n);
}

/// Wakes up to `n` pool workers asleep in [`wait_for_work`], after work was queued.
pub(super) fn wake_sleepers(region: &Region, n: u32) {
    let h = region.header();
    // SeqCst fence: orders the queue pushes before the `sleepers` load, against the sleeper's
    // fetch_add-then-pop in `wait_for_work` (Dekker pattern); one of us must see the other.
    fence(Ordering::SeqCst);
    let sleeping = h.sleepers.load(Ordering::Relaxed);
    if sleeping > 0 && n > 0 {
        h.work_seq.fetch_add(1, Ordering::SeqCst);
        let _ = futex_wake(&h.work_seq, n.min(sleeping).min(i32::MAX as u32));
    }
}

/// nginx: the request no longer wants an answer (client gone, deadline). A queued one is
/// withdrawn (its chunks freed now); otherwise whoever holds the slot releases it. Returns true
/// if this call released it outright.
pub fn abandon(side: NginxSide<'_>, id: SlotId) -> bool {
    let region = side.region();
    if withdraw(region, id) {
        region
            .header()
            .stats
            .abandoned
            .fetch_add(1, Ordering::Relaxed);
        return false;
    }
    for from in [SlotState::Queued, SlotState::Running, SlotState::Streaming] {
        if transition(region, id, from, SlotState::Abandoned) {
            region
                .header()
                .stats
                .abandoned
                .fetch_add(1, Ordering::Relaxed);
            // A worker blocked on this request's streams must see it at once.
            crate::stream::notify_worker(region, id);
            return false;
        }
    }
    release(side, id)
}

/// nginx: withdraws a request no pool worker has taken yet (it waited too long in the queue).
/// Returns false if a worker took it meanwhile. Its chunks are freed now; the slot, still in the
/// queue, is freed by the worker that pops it (or by us, if one popped it meanwhile).
pub fn withdraw_queued(side: NginxSide<'_>, id: SlotId) -> bool {
    let region = side.region();
    let withdrawn = withdraw(region, id);
    if withdrawn {
        region
            .header()
            .stats
            .queue_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }
    withdrawn
}

/// Takes back a `Queued` request: frees its chains at once (a request withdrawn under overload
/// must not hold arena until a worker reaches it in the queue), then leaves the slot `Abandoned`
/// for the worker that pops it. False if it was not queued.
pub(super) fn withdraw(region: &Region, id: SlotId) -> bool {
    if !transition(region, id, SlotState::Queued, SlotState::Withdrawing) {
        return false;
    }
    if let Some(slot) = region.slot(id.index) {
        // Ours while Withdrawing: a worker popping it only marks it Orphaned. If we die midway,
        // poold frees the rest from the anchors.
        free_anchored(region, &slot.req_head);
        free_anchored(region, &slot.resp_head);
    }
    if !transition(region, id, SlotState::Withdrawing, SlotState::Abandoned) {
        // A worker popped it meanwhile.
        orphan_freed(region, id);
    }
    true
}

/// nginx: after reading a `Done` or `Failed` slot (or for one still `Filling`), frees it.
pub fn release(side: NginxSide<'_>, id: SlotId) -> bool {
    let region = side.region();
    // In these states the slot is its nginx worker's alone (this caller, or poold for a dead
    // one).
    free_owned(
        region,
        id,
        &[SlotState::Done, SlotState::Failed, SlotState::Filling],
        owner,
    )
}

/// Frees an `Orphaned` slot (withdrawn by nginx, popped by a worker); true if it was one.
pub(super) fn orphan_freed(region: &Region, id: SlotId) -> bool {
    // Orphaned, the slot is its owner's to free (the nginx worker, or a task's caller).
    free_owned(region, id, &[SlotState::Orphaned], owner)
}

#[cfg(any(test, feature = "testing"))]
/// nginx: the slots of connection `conn` to look at since the last call, or `None` if some did
/// not fit the ring (then look at every request in flight). Call after [`clear_wake`].
pub fn take_completions(side: NginxSide<'_>, conn: u32) -> Option<Vec<SlotId>> {
    let mut out = Vec::new();
    take_completions_into(side, conn, &mut out).then_some(out)
}

/// Like `take_completions` (tests), into the caller's (reused) buffer, which it clears first; false if some
/// did not fit the ring.
pub fn take_completions_into(side: NginxSide<'_>, conn: u32, out: &mut Vec<SlotId>) -> bool {
    let region = side.region();
    out.clear();
    let Some(ring) = queue::Ring::completions(region, conn) else {
        return false;
    };
    // Bounded: a corrupt ring cannot keep us here longer than one lap.
    for _ in 0..region.geometry().completion_cap() {
        match ring.pop() {
            Some(v) => out.push(SlotId::decode(v)),
            None => break,
        }
    }
    let overflowed = region
        .conn(conn)
        .is_some_and(|c| c.overflow.swap(0, Ordering::AcqRel) != 0);
    !overflowed
}

/// nginx: called on each eventfd wake-up, before scanning its requests.
pub fn clear_wake(side: NginxSide<'_>, conn: u32) {
    let region = side.region();
    if let Some(c) = region.conn(conn) {
        // A swap, not a store: reading the completer's 1 synchronises with its swap, so
        // whatever it posted before is visible to the look that follows.
        c.wake_pending.swap(0, Ordering::SeqCst);
    }
}
