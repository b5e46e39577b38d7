//! The request slot state machine: allocation, submission, hand-over and release.
//!
//! A slot's `state` word is `generation << 32 | state`. It changes only by compare-and-swap (or by
//! a plain store from the one party that owns the slot exclusively), and every change that hands
//! the slot to another party is a Release that the taker Acquires. The generation grows on each
//! allocation, so a completion or a cancellation aimed at an earlier use of the slot fails its
//! CAS and is dropped.
//!
//! ```text
//!  Free ─alloc (nginx)─▶ Filling ─submit─▶ Queued ─take (pool worker)─▶ Running ─finish─▶ Done
//!   ▲                                        │                            │ └─stream─▶ Streaming
//!   │                                        │                            │            │ finish
//!   │                                        │                            └──fail──▶ Failed
//!   │                                        └──abandon (nginx)──▶ Abandoned ◀──┘
//!   └── release: by nginx from Done/Failed, by the pool worker from Abandoned
//! ```
//!
//! In `Streaming` the response head is published and its body is still being written
//! ([`crate::stream`]); it ends in `Done`, `Failed` or `Abandoned` like `Running`. The request
//! stream may still be growing in `Queued` and `Running` (nginx writes a large body as the
//! worker reads it).
//!
//! ## Marker windows
//!
//! Taking a slot off the free list and marking it `Filling` are two steps, and so are marking one
//! `Free` and pushing it back. A process killed between them leaves a slot that is `Free` yet on
//! no list: lost, along with any chunks still on its chains. To let poold tell such a slot from
//! one a live process is taking or giving back ([`crate::scavenge`]), each process brackets those
//! steps with its marker (`slot_op` in its connection or worker entry), as a sequence lock's
//! writer does: odd on entry, even again on exit. poold evens out a dead process's marker when it
//! reclaims its work. A window is opened only by the slot's owner (checked before it reads who
//! that is), so every marker has one writer.

use crate::chain::free_anchored;
use crate::freelist;
use crate::layout::Slot;
use crate::queue;
use crate::region::Region;
use crate::sync::{fence, AtomicU32, Ordering};
use crate::sys::futex_wake;

/// Where a slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    Free = 0,
    Filling = 1,
    Queued = 2,
    Running = 3,
    Done = 4,
    Failed = 5,
    Abandoned = 6,
    Streaming = 7,
    /// nginx took back a request no worker had taken yet and is freeing its chunks; the slot
    /// is still in the queue.
    Withdrawing = 8,
    /// A worker popped a `Withdrawing` slot from the queue: nginx frees the slot when done.
    Orphaned = 9,
}

impl SlotState {
    fn from_bits(b: u8) -> Option<SlotState> {
        Some(match b {
            0 => SlotState::Free,
            1 => SlotState::Filling,
            2 => SlotState::Queued,
            3 => SlotState::Running,
            4 => SlotState::Done,
            5 => SlotState::Failed,
            6 => SlotState::Abandoned,
            7 => SlotState::Streaming,
            8 => SlotState::Withdrawing,
            9 => SlotState::Orphaned,
            _ => return None,
        })
    }
}

/// Why the pool side failed a request; decides the status nginx answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum FailReason {
    /// The request could not be decoded (bad message): 502.
    BadRequest = 1,
    /// The response could not be written into the arena (the channel failed): 502.
    Undelivered = 2,
    /// The worker died while running it: 502.
    WorkerDied = 3,
    /// The worker ran past the deadline and was killed: 504.
    Timeout = 4,
    /// Anything else: 502.
    Other = 5,
    /// The handler returned an error (or panicked, caught by the SDK): 500.
    HandlerError = 6,
    /// The handler broke the response rules (no response, a body shorter or longer than its
    /// Content-Length): 502.
    BadResponse = 7,
}

impl FailReason {
    pub fn from_code(code: u32) -> FailReason {
        match code {
            1 => FailReason::BadRequest,
            2 => FailReason::Undelivered,
            3 => FailReason::WorkerDied,
            4 => FailReason::Timeout,
            6 => FailReason::HandlerError,
            7 => FailReason::BadResponse,
            _ => FailReason::Other,
        }
    }

    /// The HTTP status nginx answers a request that failed this way with (while its response
    /// head was not sent yet; after that, the response is cut short).
    pub fn http_status(self) -> u16 {
        match self {
            FailReason::Timeout => 504,
            FailReason::HandlerError => 500,
            _ => 502,
        }
    }
}

/// What a pool worker reports about itself in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum WorkerState {
    Starting = 0,
    Idle = 1,
    Busy = 2,
    Exited = 3,
}

/// A slot index with the generation of one use of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId {
    pub index: u32,
    pub gen: u32,
}

impl SlotId {
    pub fn encode(self) -> u64 {
        (self.gen as u64) << 32 | self.index as u64
    }
    pub fn decode(v: u64) -> SlotId {
        SlotId {
            index: v as u32,
            gen: (v >> 32) as u32,
        }
    }
}

fn word(gen: u32, state: SlotState) -> u64 {
    (gen as u64) << 32 | state as u64
}

/// The state of slot `id` as seen now: `None` if the slot is in another generation (or the index
/// or state bits are corrupt), which means our request no longer owns it.
pub fn state_of(region: &Region, id: SlotId) -> Option<SlotState> {
    // Acquire: pairs with the Release of whoever set this state, making the slot's other fields
    // (response head and length, fail reason) visible.
    let w = region.slot(id.index)?.state.load(Ordering::Acquire);
    if (w >> 32) as u32 != id.gen {
        return None;
    }
    SlotState::from_bits(w as u8)
}

fn transition(region: &Region, id: SlotId, from: SlotState, to: SlotState) -> bool {
    let Some(slot) = region.slot(id.index) else {
        return false;
    };
    // AcqRel: Release publishes what we wrote into the slot to the next owner; Acquire makes
    // what the previous owner wrote visible to us.
    slot.state
        .compare_exchange(
            word(id.gen, from),
            word(id.gen, to),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
}

/// Whose marker brackets a slot operation.
#[derive(Clone, Copy, Debug)]
enum Actor {
    /// An nginx worker, by connection index.
    Conn(u32),
    /// A pool worker, by worker index.
    Worker(u32),
}

fn marker(region: &Region, actor: Actor) -> Option<&AtomicU32> {
    match actor {
        Actor::Conn(i) => region.conn(i).map(|c| &c.slot_op),
        Actor::Worker(i) => region.worker(i).map(|w| &w.slot_op),
    }
}

/// An open marker window (see the module docs); closes when dropped.
struct MarkerWindow<'r> {
    marker: Option<&'r AtomicU32>,
    odd: u32,
}

impl<'r> MarkerWindow<'r> {
    fn open(region: &'r Region, actor: Actor) -> Self {
        let marker = marker(region, actor);
        let odd = marker.map_or(1, |m| m.load(Ordering::Relaxed) | 1);
        if let Some(m) = marker {
            m.store(odd, Ordering::Relaxed);
            // Release fence: orders the odd value before every change we make to slots and
            // free lists in the window, so a scavenger that sees one of them (Acquire) also sees
            // the odd marker, or a later value (sequence-lock writer).
            fence(Ordering::Release);
        }
        MarkerWindow { marker, odd }
    }
}

impl Drop for MarkerWindow<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.marker {
            // Release: a scavenger that reads this even value (Acquire) sees the slot where we
            // left it (`Filling`, or back on the free list).
            m.store(self.odd.wrapping_add(1), Ordering::Release);
        }
    }
}

/// poold: process `actor` is dead; if it died inside a marker window, evens its marker out so
/// that the scavenger does not wait for it (what it left is found as lost).
fn close_dead_window(region: &Region, actor: Actor) {
    if let Some(m) = marker(region, actor) {
        let v = m.load(Ordering::Relaxed);
        if v & 1 == 1 {
            m.store(v.wrapping_add(1), Ordering::Release);
        }
    }
}

/// Takes a free slot for a request of nginx connection `conn`, or `None` if all are in use.
pub fn alloc(region: &Region, conn: u32, conn_gen: u32) -> Option<SlotId> {
    // Open until the slot is marked `Filling` (dropped last).
    let _window = MarkerWindow::open(region, Actor::Conn(conn));
    let g = region.geometry();
    let h = region.header();
    let index = freelist::pop(&h.slot_free, g.slots, |i| {
        region.slot(i).map(|s| &s.next_free)
    })?;
    let slot = region.slot(index)?;
    let gen = ((slot.state.load(Ordering::Relaxed) >> 32) as u32).wrapping_add(1);
    slot.conn.store(conn, Ordering::Relaxed);
    slot.conn_gen.store(conn_gen, Ordering::Relaxed);
    slot.req_head.store(0, Ordering::Relaxed);
    slot.resp_head.store(0, Ordering::Relaxed);
    slot.req_len.store(0, Ordering::Relaxed);
    slot.resp_len.store(0, Ordering::Relaxed);
    slot.fail_reason.store(0, Ordering::Relaxed);
    slot.timeout_ms.store(0, Ordering::Relaxed);
    for w in [
        &slot.req_written,
        &slot.req_consumed,
        &slot.resp_written,
        &slot.resp_consumed,
    ] {
        w.store(0, Ordering::Relaxed);
    }
    for w in [
        &slot.req_head_len,
        &slot.resp_head_len,
        &slot.worker_waiting,
        &slot.nginx_waiting,
    ] {
        w.store(0, Ordering::Relaxed);
    }
    // Relaxed: the slot came off the free list, so it is ours alone until `submit` publishes it.
    slot.state
        .store(word(gen, SlotState::Filling), Ordering::Relaxed);
    h.stats.slots_in_use.fetch_add(1, Ordering::Relaxed);
    Some(SlotId { index, gen })
}

/// nginx, before `submit`: this request's own deadline (`pool_timeout`), for poold to enforce.
pub fn set_timeout(region: &Region, id: SlotId, ms: u64) {
    if let Some(s) = region.slot(id.index) {
        s.timeout_ms
            .store(ms.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
    }
}

/// Queues a request whose stream holds its `head_len`-byte head (and maybe part of its body),
/// `total` bytes in all once complete, and wakes a sleeping pool worker if there is one.
pub fn submit(region: &Region, id: SlotId, head_len: u32, total: u64) -> bool {
    let queued = enqueue(region, id, head_len, total);
    if queued {
        wake_workers(region, 1);
    }
    queued
}

/// [`submit`] without the wake-up: the caller calls [`wake_workers`] once for a batch (nginx
/// does at the end of its event loop iteration, so a burst of requests costs one system call).
pub fn enqueue(region: &Region, id: SlotId, head_len: u32, total: u64) -> bool {
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
pub fn wake_workers(region: &Region, n: u32) {
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

/// Pool worker `worker`: takes the next queued request, skipping ones their nginx side
/// abandoned. The worker's entry names the slot *before* the slot turns Running, so poold can
/// always tell which request a dead worker held.
pub fn take(region: &Region, worker: u32) -> Option<SlotId> {
    let entry = region.worker(worker);
    loop {
        let id = SlotId::decode(queue::pop(region)?);
        if let Some(e) = entry {
            e.current_gen.store(id.gen, Ordering::Relaxed);
            // SeqCst: ordered before the CAS below, so poold (which reads the slot state after
            // this) never sees Running without also seeing which worker took it.
            e.current.store(id.index + 1, Ordering::SeqCst);
        }
        if let Some(s) = region.slot(id.index) {
            s.worker.store(worker, Ordering::Relaxed);
            s.started_ms
                .store(crate::sys::monotonic_ms(), Ordering::Relaxed);
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
pub fn tell_retire(region: &Region, worker: u32) {
    if let Some(e) = region.worker(worker) {
        e.retire_now.store(1, Ordering::SeqCst);
        let h = region.header();
        h.work_seq.fetch_add(1, Ordering::SeqCst);
        // i32::MAX: the kernel reads the count as a signed int (u32::MAX would wake one).
        let _ = futex_wake(&h.work_seq, i32::MAX as u32);
    }
}

/// Pool worker: has poold told us to retire?
pub fn retire_due(region: &Region, worker: u32) -> bool {
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
/// Returns `None` when `stop` says so (checked before each sleep and after each wake-up).
pub fn wait_for_work(
    region: &Region,
    worker: u32,
    spin: &mut crate::spin::Spin,
    stop: &dyn Fn() -> bool,
) -> Option<SlotId> {
    let h = region.header();
    loop {
        if let Some(id) = take(region, worker) {
            return Some(id);
        }
        if stop() {
            return None;
        }
        if let Some(id) = spin.run(|| take(region, worker)) {
            return Some(id);
        }
        h.sleepers.fetch_add(1, Ordering::SeqCst);
        // SeqCst fence: pairs with the one in `wake_workers` (see there).
        fence(Ordering::SeqCst);
        let seq = h.work_seq.load(Ordering::SeqCst);
        if let Some(id) = take(region, worker) {
            h.sleepers.fetch_sub(1, Ordering::SeqCst);
            return Some(id);
        }
        // After reading `seq`: a stop signalled since the check above bumped it, so either we
        // see the stop here or the futex does not sleep.
        if stop() {
            h.sleepers.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let _ = crate::sys::futex_wait(&h.work_seq, seq, None);
        h.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The outcome of finishing or failing a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Handover {
    /// Delivered: wake nginx connection `conn` (generation `conn_gen`).
    Deliver { conn: u32, conn_gen: u32 },
    /// nginx gave up on it meanwhile; the slot has been released.
    Abandoned,
}

/// Pool worker: the response head (`head_len` bytes) is published on the response stream and
/// the body follows; nginx may start sending. Returns where to deliver the news, or
/// `Abandoned` if nginx gave up meanwhile (the worker then stops and calls [`finish`], which
/// releases the slot).
pub fn start_streaming(region: &Region, id: SlotId, head_len: u32) -> Handover {
    let Some(slot) = region.slot(id.index) else {
        return Handover::Abandoned;
    };
    slot.resp_head_len.store(head_len, Ordering::Relaxed);
    if transition(region, id, SlotState::Running, SlotState::Streaming) {
        let conn = slot.conn.load(Ordering::Relaxed);
        post_completion(region, conn, id);
        return Handover::Deliver {
            conn,
            conn_gen: slot.conn_gen.load(Ordering::Relaxed),
        };
    }
    Handover::Abandoned
}

/// Pool worker: the response stream is complete, `total` bytes of which the first `head_len`
/// are the head.
pub fn finish(region: &Region, id: SlotId, head_len: u32, total: u64) -> Handover {
    let Some(slot) = region.slot(id.index) else {
        return Handover::Abandoned;
    };
    slot.resp_head_len.store(head_len, Ordering::Relaxed);
    slot.resp_len.store(total, Ordering::Relaxed);
    region
        .header()
        .stats
        .completed
        .fetch_add(1, Ordering::Relaxed);
    settle(region, id, SlotState::Done)
}

/// Pool worker or poold: fails the request with `reason`.
///
/// Counted in `failed` only if nginx still waited for it (nginx then answers it and logs why)
/// or it ran past its deadline: a request nginx had already given up on (its client gone) was
/// counted in `abandoned` then, and its failure is nobody's.
pub fn fail(region: &Region, id: SlotId, reason: FailReason) -> Handover {
    if let Some(slot) = region.slot(id.index) {
        slot.fail_reason.store(reason as u32, Ordering::Relaxed);
    }
    let handover = settle(region, id, SlotState::Failed);
    let stats = &region.header().stats;
    if reason == FailReason::Timeout {
        stats.timeouts.fetch_add(1, Ordering::Relaxed);
    }
    if reason == FailReason::Timeout || matches!(handover, Handover::Deliver { .. }) {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    handover
}

fn settle(region: &Region, id: SlotId, to: SlotState) -> Handover {
    let Some(slot) = region.slot(id.index) else {
        return Handover::Abandoned;
    };
    if transition(region, id, SlotState::Running, to)
        || transition(region, id, SlotState::Streaming, to)
    {
        let conn = slot.conn.load(Ordering::Relaxed);
        post_completion(region, conn, id);
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

/// nginx: the request no longer wants an answer (client gone, deadline). A queued one is
/// withdrawn (its chunks freed now); otherwise whoever holds the slot releases it. Returns true
/// if this call released it outright.
pub fn abandon(region: &Region, id: SlotId) -> bool {
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
    release(region, id)
}

/// nginx: withdraws a request no pool worker has taken yet (it waited too long in the queue).
/// Returns false if a worker took it meanwhile. Its chunks are freed now; the slot, still in the
/// queue, is freed by the worker that pops it (or by us, if one popped it meanwhile).
pub fn withdraw_queued(region: &Region, id: SlotId) -> bool {
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
fn withdraw(region: &Region, id: SlotId) -> bool {
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
pub fn release(region: &Region, id: SlotId) -> bool {
    // In these states the slot is its nginx worker's alone (this caller, or poold for a dead
    // one).
    free_owned(
        region,
        id,
        &[SlotState::Done, SlotState::Failed, SlotState::Filling],
        nginx_owner,
    )
}

/// Pool worker `worker` popped `id` and could not take it: if nginx withdrew it, whichever of
/// the two is last frees the slot. In this order, so that nginx finishing its withdrawal between
/// the two steps is still seen.
fn let_go_of_withdrawn(region: &Region, id: SlotId, worker: u32) {
    if !transition(region, id, SlotState::Withdrawing, SlotState::Orphaned) {
        free_from(region, id, &[SlotState::Abandoned], Actor::Worker(worker));
    }
}

/// Frees an `Orphaned` slot (withdrawn by nginx, popped by a worker); true if it was one.
fn orphan_freed(region: &Region, id: SlotId) -> bool {
    // Orphaned, the slot is its nginx worker's to free.
    free_owned(region, id, &[SlotState::Orphaned], nginx_owner)
}

fn nginx_owner(slot: &Slot) -> Actor {
    Actor::Conn(slot.conn.load(Ordering::Relaxed))
}

/// [`free_from`] for a slot in one of `from`, where it belongs to one process alone: the
/// caller, or poold for a dead one, whom `owner` reads off the slot. Checked first, so that a
/// stale `id` never opens a window on another process's marker.
fn free_owned(
    region: &Region,
    id: SlotId,
    from: &[SlotState],
    owner: impl Fn(&Slot) -> Actor,
) -> bool {
    if !state_of(region, id).is_some_and(|s| from.contains(&s)) {
        return false;
    }
    let Some(actor) = region.slot(id.index).map(owner) else {
        return false;
    };
    free_from(region, id, from, actor)
}

/// Moves `id` from the first of `from` it is in to `Free` and recycles it, inside `actor`'s
/// marker window; false if it was in none of them.
fn free_from(region: &Region, id: SlotId, from: &[SlotState], actor: Actor) -> bool {
    let _window = MarkerWindow::open(region, actor);
    let freed = from
        .iter()
        .any(|&s| transition(region, id, s, SlotState::Free));
    if freed {
        recycle(region, id.index);
    }
    freed
}

/// Frees a slot's chains and puts it back on the free list. The caller has just moved it to Free.
fn recycle(region: &Region, index: u32) {
    let Some(slot) = region.slot(index) else {
        return;
    };
    free_anchored(region, &slot.req_head);
    free_anchored(region, &slot.resp_head);
    let h = region.header();
    h.stats.slots_in_use.fetch_sub(1, Ordering::Relaxed);
    freelist::push(&h.slot_free, region.geometry().slots, index, |i| {
        region.slot(i).map(|s| &s.next_free)
    });
}

/// Queues slot `id` on connection `conn`'s completion ring, for the nginx worker to look at on
/// its next wake-up; if the ring is full, flags the connection so that it looks at everything.
/// Called before the wake-up decision ([`needs_wake`]), so the wake-up finds it.
pub fn post_completion(region: &Region, conn: u32, id: SlotId) {
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

#[cfg(any(test, feature = "testing"))]
/// nginx: the slots of connection `conn` to look at since the last call, or `None` if some did
/// not fit the ring (then look at every request in flight). Call after [`clear_wake`].
pub fn take_completions(region: &Region, conn: u32) -> Option<Vec<SlotId>> {
    let mut out = Vec::new();
    take_completions_into(region, conn, &mut out).then_some(out)
}

/// [`take_completions`] into the caller's (reused) buffer, which it clears first; false if some
/// did not fit the ring.
pub fn take_completions_into(region: &Region, conn: u32, out: &mut Vec<SlotId>) -> bool {
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

/// After `finish`/`fail` delivered: returns true if the caller must write the connection's
/// eventfd (the nginx worker was not already told).
pub fn needs_wake(region: &Region, conn: u32, conn_gen: u32) -> bool {
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

/// nginx: called on each eventfd wake-up, before scanning its requests.
pub fn clear_wake(region: &Region, conn: u32) {
    if let Some(c) = region.conn(conn) {
        // A swap, not a store: reading the completer's 1 synchronises with its swap, so
        // whatever it posted before is visible to the look that follows.
        c.wake_pending.swap(0, Ordering::SeqCst);
    }
}

/// The fail reason of a `Failed` slot.
pub fn fail_reason(region: &Region, id: SlotId) -> FailReason {
    region.slot(id.index).map_or(FailReason::Other, |s| {
        FailReason::from_code(s.fail_reason.load(Ordering::Relaxed))
    })
}

/// The response's head length and (once `Done`) total length, as the worker published them
/// (read after an Acquire of the state that showed `Streaming` or `Done`; untrusted).
pub fn response(region: &Region, id: SlotId) -> Option<(u32, u64)> {
    let s = region.slot(id.index)?;
    Some((
        s.resp_head_len.load(Ordering::Relaxed),
        s.resp_len.load(Ordering::Relaxed),
    ))
}

/// The request's head length and total length, as nginx published them (untrusted).
pub fn request(region: &Region, id: SlotId) -> Option<(u32, u64)> {
    let s = region.slot(id.index)?;
    Some((
        s.req_head_len.load(Ordering::Relaxed),
        s.req_len.load(Ordering::Relaxed),
    ))
}

/// poold: marks connection `index` attached with a new generation; returns that generation.
pub fn open_conn(region: &Region, index: u32, pid: u32) -> Option<u32> {
    let c = region.conn(index)?;
    let gen = ((c.state.load(Ordering::Relaxed) >> 1) as u32).wrapping_add(1);
    c.pid.store(pid, Ordering::Relaxed);
    c.wake_pending.store(0, Ordering::Relaxed);
    // Release: publishes pid and the cleared flag to completers that Acquire the state.
    c.state.store((gen as u64) << 1 | 1, Ordering::Release);
    Some(gen)
}

/// poold: marks connection `index` detached.
pub fn close_conn(region: &Region, index: u32) {
    if let Some(c) = region.conn(index) {
        let st = c.state.load(Ordering::Relaxed);
        c.state.store(st & !1, Ordering::Release);
    }
}

/// A snapshot of one slot, for poold's reclaiming and status.
#[derive(Clone, Copy, Debug)]
pub struct SlotView {
    pub id: SlotId,
    pub state: Option<SlotState>,
    pub conn: u32,
    pub conn_gen: u32,
    pub worker: u32,
}

/// Reads slot `index`'s state word and owners.
pub fn view(region: &Region, index: u32) -> Option<SlotView> {
    let s = region.slot(index)?;
    let w = s.state.load(Ordering::Acquire);
    Some(SlotView {
        id: SlotId {
            index,
            gen: (w >> 32) as u32,
        },
        state: SlotState::from_bits(w as u8),
        conn: s.conn.load(Ordering::Relaxed),
        conn_gen: s.conn_gen.load(Ordering::Relaxed),
        worker: s.worker.load(Ordering::Relaxed),
    })
}

/// poold: nginx connection `conn` (generation `conn_gen`) is gone; abandons or releases every
/// slot it owned. Returns how many slots were reclaimed.
pub fn reclaim_conn(region: &Region, conn: u32, conn_gen: u32) -> u32 {
    close_dead_window(region, Actor::Conn(conn));
    let mut n = 0;
    for index in 0..region.geometry().slots {
        let Some(v) = view(region, index) else {
            continue;
        };
        if v.conn != conn || v.conn_gen != conn_gen {
            continue;
        }
        let reclaimed = match v.state {
            Some(SlotState::Queued) | Some(SlotState::Running) | Some(SlotState::Streaming) => {
                let abandoned = [SlotState::Queued, SlotState::Running, SlotState::Streaming]
                    .into_iter()
                    .any(|from| transition(region, v.id, from, SlotState::Abandoned));
                if abandoned {
                    crate::stream::notify_worker(region, v.id);
                }
                abandoned || release(region, v.id)
            }
            Some(SlotState::Done) | Some(SlotState::Failed) | Some(SlotState::Filling) => {
                release(region, v.id)
            }
            // It died withdrawing: finish for it (the anchors still hold what it had not freed).
            Some(SlotState::Withdrawing) | Some(SlotState::Orphaned) => {
                transition(region, v.id, SlotState::Withdrawing, SlotState::Abandoned)
                    || orphan_freed(region, v.id)
            }
            _ => false,
        };
        n += u32::from(reclaimed);
    }
    n
}

/// poold: pool worker `worker` died (or was killed for `reason`). If it held a request, fails it
/// (nginx answers 502, or 504 for a timeout) and returns where to deliver that failure.
pub fn reclaim_worker(
    region: &Region,
    worker: u32,
    reason: FailReason,
) -> Option<(SlotId, Handover)> {
    close_dead_window(region, Actor::Worker(worker));
    let e = region.worker(worker)?;
    let named = e.current.load(Ordering::SeqCst);
    let id = match held_by(region, worker, true) {
        Some(id) => id,
        None => {
            // Named but still Queued: the worker died after popping it and before taking it.
            // It never started, so it goes back on the queue rather than failing.
            let id = SlotId {
                index: named.checked_sub(1)?,
                gen: e.current_gen.load(Ordering::Relaxed),
            };
            match state_of(region, id) {
                Some(SlotState::Queued) => {
                    let _ = queue::push(region, id.encode());
                }
                // Withdrawn by nginx meanwhile: do what the worker would have done with it.
                Some(SlotState::Withdrawing) | Some(SlotState::Abandoned) => {
                    let_go_of_withdrawn(region, id, worker)
                }
                _ => {}
            }
            return None;
        }
    };
    Some((id, fail(region, id, reason)))
}

/// The request worker `worker` holds (Running, or Abandoned by nginx meanwhile), if any; with
/// `take`, the worker's entry is cleared in the same step.
fn held_by(region: &Region, worker: u32, take: bool) -> Option<SlotId> {
    let e = region.worker(worker)?;
    let current = if take {
        e.current.swap(0, Ordering::SeqCst)
    } else {
        e.current.load(Ordering::SeqCst)
    };
    let id = SlotId {
        index: current.checked_sub(1)?,
        gen: e.current_gen.load(Ordering::Relaxed),
    };
    matches!(
        state_of(region, id),
        Some(SlotState::Running) | Some(SlotState::Streaming) | Some(SlotState::Abandoned)
    )
    .then_some(id)
}

/// Pool worker: done with its current request.
pub fn clear_current(region: &Region, worker: u32) {
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
        s.started_ms.load(Ordering::Relaxed),
        (own != 0).then_some(u64::from(own)),
    ))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::Geometry;

    #[test]
    fn completions_reach_their_connection_and_overflow_asks_for_a_scan() {
        let g = Geometry::for_tests(4, 8);
        let r = Region::create("c", g, 1).unwrap();
        let a = SlotId { index: 1, gen: 7 };
        let b = SlotId { index: 2, gen: 9 };
        post_completion(&r, 1, a);
        post_completion(&r, 1, b);
        assert_eq!(take_completions(&r, 0), Some(vec![]));
        assert_eq!(take_completions(&r, 1), Some(vec![a, b]));
        assert_eq!(take_completions(&r, 1), Some(vec![]));
        // More than a lap: the ring keeps what fits and the connection is told to scan.
        for _ in 0..g.completion_cap() + 3 {
            post_completion(&r, 0, a);
        }
        assert_eq!(take_completions(&r, 0), None);
        assert_eq!(take_completions(&r, 0), Some(vec![]));
        // Laps after that work as before.
        for lap in 0..10 {
            let id = SlotId {
                index: lap % 4,
                gen: lap,
            };
            post_completion(&r, 0, id);
            assert_eq!(take_completions(&r, 0), Some(vec![id]));
        }
    }

    #[test]
    fn a_withdrawn_request_frees_its_chunks_at_once_and_its_slot_when_popped() {
        let r = Region::create("w", Geometry::for_tests(4, 16), 1).unwrap();
        let in_use = |r: &Region| {
            let s = &r.header().stats;
            (
                s.slots_in_use.load(Ordering::Relaxed),
                s.chunks_in_use.load(Ordering::Relaxed),
            )
        };
        let id = alloc(&r, 0, 1).unwrap();
        let n = crate::stream::write_all(&r, id, crate::stream::Direction::Request, &[&[5; 3000]])
            .unwrap();
        assert!(submit(&r, id, 0, n));
        assert_eq!(in_use(&r), (1, 3));
        assert!(withdraw_queued(&r, id));
        assert!(!withdraw_queued(&r, id), "only once");
        // The chunks are back already; the slot waits for the worker that pops it.
        assert_eq!(in_use(&r), (1, 0));
        assert_eq!(state_of(&r, id), Some(SlotState::Abandoned));
        assert_eq!(take(&r, 0), None);
        assert_eq!(in_use(&r), (0, 0));
        // A worker that pops it while nginx is still withdrawing leaves the slot to nginx.
        let id = alloc(&r, 0, 1).unwrap();
        assert!(submit(&r, id, 0, 0));
        assert!(transition(
            &r,
            id,
            SlotState::Queued,
            SlotState::Withdrawing
        ));
        assert_eq!(take(&r, 0), None);
        assert_eq!(state_of(&r, id), Some(SlotState::Orphaned));
        assert!(orphan_freed(&r, id));
        assert_eq!(in_use(&r), (0, 0));
    }
}
