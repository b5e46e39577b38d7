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

mod nginx;
mod reclaim;
pub mod task;
mod worker;

pub use nginx::*;
pub use reclaim::*;
pub use task::*;
pub use worker::*;

/// The nginx worker's role in a region: what [`alloc`], [`submit`], [`abandon`], [`release`]
/// and the other functions of nginx's side take, so that the pool side cannot call one of them
/// by mistake (and nginx cannot call [`take`] or [`finish`]). Only a view: it holds the region
/// borrowed and costs nothing.
///
/// A pool-side step given the nginx side does not compile:
///
/// ```compile_fail
/// use ngx_pool_channel::{slot, Geometry, Region};
/// let region = Region::create("doc", Geometry::for_tests(4, 16), 1).unwrap();
/// slot::take(region.nginx_side(), 0); // expected `PoolSide`, found `NginxSide`
/// ```
///
/// ```
/// use ngx_pool_channel::{slot, Geometry, Region};
/// let region = Region::create("doc", Geometry::for_tests(4, 16), 1).unwrap();
/// let conn_gen = slot::open_conn(region.pool_side(), 0, 1).unwrap();
/// let id = slot::alloc(region.nginx_side(), 0, conn_gen).unwrap();
/// assert!(slot::release(region.nginx_side(), id));
/// ```
#[derive(Clone, Copy)]
pub struct NginxSide<'r>(&'r Region);

/// The pool's role in a region (poold and its pool workers): what [`take`], [`finish`], [`fail`],
/// [`reclaim_conn`] and the other functions of the pool's side take.
#[derive(Clone, Copy)]
pub struct PoolSide<'r>(&'r Region);

impl Region {
    /// This region as seen by an nginx worker.
    pub fn nginx_side(&self) -> NginxSide<'_> {
        NginxSide(self)
    }
    /// This region as seen by poold and its pool workers.
    pub fn pool_side(&self) -> PoolSide<'_> {
        PoolSide(self)
    }
}

impl<'r> NginxSide<'r> {
    /// The region, for the functions both sides share (state reads, streams, chains).
    pub fn region(self) -> &'r Region {
        self.0
    }
}

impl<'r> PoolSide<'r> {
    /// The region, for the functions both sides share (state reads, streams, chains).
    pub fn region(self) -> &'r Region {
        self.0
    }
}

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

/// Pool worker `worker`'s marker window around a change to a free list that is not a slot
/// operation (the arena trim, [`crate::trim`]); closes when dropped. Only that worker opens it,
/// while it serves nothing, so its marker keeps one writer.
#[cfg(not(loom))]
pub(crate) struct WorkerWindow<'r>(#[allow(dead_code)] MarkerWindow<'r>);

#[cfg(not(loom))]
impl<'r> WorkerWindow<'r> {
    pub(crate) fn open(region: &'r Region, worker: u32) -> Self {
        WorkerWindow(MarkerWindow::open(region, Actor::Worker(worker)))
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

/// The outcome of finishing or failing a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Handover {
    /// Delivered: wake nginx connection `conn` (generation `conn_gen`).
    Deliver { conn: u32, conn_gen: u32 },
    /// A fan-out task's answer, delivered to its caller (already woken).
    ToCaller,
    /// nginx gave up on it meanwhile; the slot has been released.
    Abandoned,
}

/// Who a slot belongs to when it is not running: its nginx worker, or a task's caller.
fn owner(slot: &Slot) -> Actor {
    match slot.caller.load(Ordering::Relaxed) {
        0 => Actor::Conn(slot.conn.load(Ordering::Relaxed)),
        caller => Actor::Worker(caller - 1),
    }
}

/// A slot just taken off the free list, made ready for its new use: owned by nginx connection
/// `conn` (generation `conn_gen`), or by caller worker `caller - 1` when `caller` is not 0.
/// Returns the use's generation. The slot is its taker's alone until it is queued.
fn prepare(slot: &Slot, conn: u32, conn_gen: u32, caller: u32) -> u32 {
    let gen = ((slot.state.load(Ordering::Relaxed) >> 32) as u32).wrapping_add(1);
    slot.conn.store(conn, Ordering::Relaxed);
    slot.conn_gen.store(conn_gen, Ordering::Relaxed);
    slot.caller.store(caller, Ordering::Relaxed);
    slot.deadline_ms.store(0, Ordering::Relaxed);
    slot.req_head.store(0, Ordering::Relaxed);
    slot.resp_head.store(0, Ordering::Relaxed);
    slot.req_len.store(0, Ordering::Relaxed);
    slot.resp_len.store(0, Ordering::Relaxed);
    slot.fail_reason.store(0, Ordering::Relaxed);
    slot.timeout_ms.store(0, Ordering::Relaxed);
    slot.notice.store(0, Ordering::Relaxed);
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
    // Relaxed: the slot came off the free list, so it is ours alone until it is queued.
    slot.state
        .store(word(gen, SlotState::Filling), Ordering::Relaxed);
    gen
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
    if is_task(slot) {
        h.tasks_in_use.fetch_sub(1, Ordering::Relaxed);
    }
    freelist::push(&h.slot_free, region.geometry().slots, index, |i| {
        region.slot(i).map(|s| &s.next_free)
    });
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
        post_completion(r.pool_side(), 1, a);
        post_completion(r.pool_side(), 1, b);
        assert_eq!(take_completions(r.nginx_side(), 0), Some(vec![]));
        assert_eq!(take_completions(r.nginx_side(), 1), Some(vec![a, b]));
        assert_eq!(take_completions(r.nginx_side(), 1), Some(vec![]));
        // More than a lap: the ring keeps what fits and the connection is told to scan.
        for _ in 0..g.completion_cap() + 3 {
            post_completion(r.pool_side(), 0, a);
        }
        assert_eq!(take_completions(r.nginx_side(), 0), None);
        assert_eq!(take_completions(r.nginx_side(), 0), Some(vec![]));
        // Laps after that work as before.
        for lap in 0..10 {
            let id = SlotId {
                index: lap % 4,
                gen: lap,
            };
            post_completion(r.pool_side(), 0, id);
            assert_eq!(take_completions(r.nginx_side(), 0), Some(vec![id]));
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
        let id = alloc(r.nginx_side(), 0, 1).unwrap();
        let n = crate::stream::write_all(&r, id, crate::stream::Direction::Request, &[&[5; 3000]])
            .unwrap();
        assert!(submit(r.nginx_side(), id, 0, n));
        assert_eq!(in_use(&r), (1, 3));
        assert!(withdraw_queued(r.nginx_side(), id));
        assert!(!withdraw_queued(r.nginx_side(), id), "only once");
        // The chunks are back already; the slot waits for the worker that pops it.
        assert_eq!(in_use(&r), (1, 0));
        assert_eq!(state_of(&r, id), Some(SlotState::Abandoned));
        assert_eq!(take(r.pool_side(), 0), None);
        assert_eq!(in_use(&r), (0, 0));
        // A worker that pops it while nginx is still withdrawing leaves the slot to nginx.
        let id = alloc(r.nginx_side(), 0, 1).unwrap();
        assert!(submit(r.nginx_side(), id, 0, 0));
        assert!(transition(
            &r,
            id,
            SlotState::Queued,
            SlotState::Withdrawing
        ));
        assert_eq!(take(r.pool_side(), 0), None);
        assert_eq!(state_of(&r, id), Some(SlotState::Orphaned));
        assert!(orphan_freed(&r, id));
        assert_eq!(in_use(&r), (0, 0));
    }
}
