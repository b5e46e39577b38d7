//! Fan-out tasks: slots a pool worker (the *caller*) fills with work for the pool's other
//! workers, queued on the task queue that workers serve before new requests.
//!
//! A task is a slot like a request's, with the caller in nginx's place: the caller takes it
//! ([`alloc_task`]), writes its input on the request stream, queues it ([`submit_task`]), reads
//! the answer from the response stream and frees it ([`release_task`]). The worker that runs it
//! uses the request steps unchanged ([`take`], [`finish`], [`fail`]); where those would wake an
//! nginx worker, a task's runner wakes the caller's futex ([`wake_caller`]) instead.
//!
//! The caller never waits on a task nobody runs: while it waits it takes back a task still in
//! the queue and runs it itself ([`take_back`], the withdrawal of nginx's side, so the slot is
//! freed by whoever pops its stale queue entry). So a fan-out completes at `workers=1`, when
//! every worker fans out at once, and when nested. A task inherits its request's deadline
//! (`deadline_ms`), which poold enforces on the worker running it; a caller that gives up
//! ([`cancel_task`]) moves the deadline to now, so that worker is stopped too.
//!
//! Bounded: tasks hold at most [`crate::Geometry::task_slots`] slots; past that the caller
//! runs the task itself. A dead caller's tasks are reclaimed by poold ([`reclaim_tasks`]).

use super::*;

/// `conn` of a task slot: no nginx connection owns it.
pub const NO_CONN: u32 = u32::MAX;

/// Whether a slot holds a fan-out task (rather than a request of nginx's).
pub fn is_task(slot: &Slot) -> bool {
    slot.caller.load(Ordering::Relaxed) != 0
}

/// Caller worker `caller` (process `caller_pid`): takes a slot for a task due by `deadline_ms`
/// (CLOCK_MONOTONIC ms, 0 for none). `None` when tasks hold their share of the slots, or none is
/// free: the caller then runs the task itself.
pub fn alloc_task(
    side: PoolSide<'_>,
    caller: u32,
    caller_pid: u32,
    deadline_ms: u64,
) -> Option<SlotId> {
    let region = side.region();
    let g = region.geometry();
    let h = region.header();
    region.worker(caller)?;
    // Relaxed: an admission count; the slot itself is handed over through its state word.
    if h.tasks_in_use.fetch_add(1, Ordering::Relaxed) >= g.task_slots() {
        h.tasks_in_use.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    let taken = {
        // Open until the slot is marked `Filling` (dropped at the end of the block).
        let _window = MarkerWindow::open(region, Actor::Worker(caller));
        freelist::pop(&h.slot_free, g.slots, |i| {
            region.slot(i).map(|s| &s.next_free)
        })
        .and_then(|index| Some((index, region.slot(index)?)))
        .map(|(index, slot)| {
            let gen = prepare(slot, NO_CONN, caller_pid, caller + 1);
            slot.deadline_ms.store(deadline_ms, Ordering::Relaxed);
            SlotId { index, gen }
        })
    };
    match taken {
        Some(id) => {
            h.stats.slots_in_use.fetch_add(1, Ordering::Relaxed);
            Some(id)
        }
        None => {
            h.tasks_in_use.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

/// Caller: queues task `id`, whose request stream holds (or will hold) `total` input bytes, and
/// wakes a sleeping worker. False if the queue refused it (the caller then runs it itself and
/// releases the slot).
pub fn submit_task(side: PoolSide<'_>, id: SlotId, total: u64) -> bool {
    let region = side.region();
    let Some(slot) = region.slot(id.index) else {
        return false;
    };
    slot.req_head_len.store(0, Ordering::Relaxed);
    slot.req_len.store(total, Ordering::Relaxed);
    if !transition(region, id, SlotState::Filling, SlotState::Queued) {
        return false;
    }
    if queue::Ring::tasks(region).push(id.encode()).is_err() {
        transition(region, id, SlotState::Queued, SlotState::Filling);
        return false;
    }
    region
        .header()
        .stats
        .tasks_submitted
        .fetch_add(1, Ordering::Relaxed);
    wake_sleepers(region, 1);
    true
}

/// Caller: takes back task `id` if no worker has taken it yet, to run it itself (its input
/// chunks are freed now, its slot by whoever pops its queue entry). False if a worker has it.
pub fn take_back(side: PoolSide<'_>, id: SlotId) -> bool {
    let region = side.region();
    let taken = withdraw(region, id);
    if taken {
        count_inline(side);
    }
    taken
}

/// Caller: one task run by the caller itself (no room to queue it, or taken back).
pub fn count_inline(side: PoolSide<'_>) {
    side.region()
        .header()
        .stats
        .tasks_inline
        .fetch_add(1, Ordering::Relaxed);
}

/// Caller: frees task `id` once answered (`Done`, `Failed`) or never queued (`Filling`).
pub fn release_task(side: PoolSide<'_>, id: SlotId) -> bool {
    free_owned(
        side.region(),
        id,
        &[SlotState::Done, SlotState::Failed, SlotState::Filling],
        owner,
    )
}

/// Caller (or poold for a dead one): gives up task `id`. Queued, it is withdrawn; running, it is
/// abandoned (its runner frees it) and, with `stop`, its deadline moves to now so that poold
/// stops the worker running it; answered, it is freed.
pub fn cancel_task(side: PoolSide<'_>, id: SlotId, stop: bool) {
    let region = side.region();
    if withdraw(region, id) {
        return;
    }
    for from in [SlotState::Running, SlotState::Streaming] {
        if transition(region, id, from, SlotState::Abandoned) {
            if stop {
                if let Some(s) = region.slot(id.index) {
                    // 1, not 0: 0 means no deadline.
                    s.deadline_ms.store(1, Ordering::Relaxed);
                }
            }
            // A runner blocked on the task's streams must see it at once.
            crate::stream::notify_worker(region, id);
            return;
        }
    }
    if !release_task(side, id) {
        // Died while taking it back: finish for it (the anchors hold what it had not freed).
        let _ = transition(region, id, SlotState::Withdrawing, SlotState::Abandoned)
            || orphan_freed(region, id);
    }
}

/// poold: caller worker `worker` (process `pid`) is gone; gives up every task it had (queued
/// ones dropped, running ones' answers discarded). Returns how many.
pub fn reclaim_tasks(side: PoolSide<'_>, worker: u32, pid: u32) -> u32 {
    let region = side.region();
    close_dead_window(region, Actor::Worker(worker));
    let mut n = 0;
    for index in 0..region.geometry().slots {
        let Some(slot) = region.slot(index) else {
            continue;
        };
        let Some(v) = view(region, index) else {
            continue;
        };
        if slot.caller.load(Ordering::Relaxed) != worker + 1 || v.conn_gen != pid {
            continue;
        }
        if matches!(v.state, Some(SlotState::Free) | None) {
            continue;
        }
        cancel_task(side, v.id, false);
        n += 1;
    }
    n
}

/// poold: the request live caller `worker` (process `pid`) runs was given up by nginx (its
/// client went away): stops its running tasks as a deadline would (abandoned, deadline now).
/// Frees nothing, so it never races the caller, which collects the rest when it next waits.
/// Returns how many it stopped.
pub fn stop_tasks_of(side: PoolSide<'_>, worker: u32, pid: u32) -> u32 {
    let region = side.region();
    let mut n = 0;
    for index in 0..region.geometry().slots {
        let (Some(slot), Some(v)) = (region.slot(index), view(region, index)) else {
            continue;
        };
        if slot.caller.load(Ordering::Relaxed) != worker + 1 || v.conn_gen != pid {
            continue;
        }
        for from in [SlotState::Running, SlotState::Streaming] {
            if transition(region, v.id, from, SlotState::Abandoned) {
                slot.deadline_ms.store(1, Ordering::Relaxed);
                crate::stream::notify_worker(region, v.id);
                n += 1;
            }
        }
    }
    n
}

/// A task's runner (or poold for a dead one): tells task `slot`'s caller there is news (input
/// credit, output, an answer).
pub fn wake_caller(region: &Region, slot: &Slot) {
    let caller = slot.caller.load(Ordering::Relaxed);
    let Some(e) = caller.checked_sub(1).and_then(|c| region.worker(c)) else {
        return;
    };
    // SeqCst: after the state change or publication it announces, and paired with the
    // caller's load of `task_seq` in `caller_wait`: either it sees our news or its futex wait
    // finds the word changed.
    e.task_seq.fetch_add(1, Ordering::SeqCst);
    let _ = futex_wake(&e.task_seq, 1);
}

/// Caller worker `worker`: sleeps until a runner of one of `tasks` has news or `limit` passes,
/// unless `ready` already holds.
pub fn caller_wait(
    side: PoolSide<'_>,
    worker: u32,
    tasks: &[SlotId],
    limit: std::time::Duration,
    ready: impl Fn() -> bool,
) {
    let region = side.region();
    let Some(e) = region.worker(worker) else {
        return;
    };
    for id in tasks {
        if let Some(s) = region.slot(id.index) {
            // The flag nginx sets to be told of stream progress: the caller is its nginx here.
            s.nginx_waiting.store(1, Ordering::SeqCst);
        }
    }
    // SeqCst fence: pairs with the runner's in `nginx_wants_wake` (Dekker): either it sees our
    // flag and bumps `task_seq`, or we see its progress in `ready`.
    fence(Ordering::SeqCst);
    let seq = e.task_seq.load(Ordering::SeqCst);
    if !ready() {
        let _ = crate::sys::futex_wait(&e.task_seq, seq, Some(limit));
    }
}

/// poold: the fan-out task worker `worker` is running now and its deadline (0 for none).
pub fn running_task(region: &Region, worker: u32) -> Option<(SlotId, u64)> {
    let id = held_by(region, worker, false)?;
    let s = region.slot(id.index)?;
    is_task(s).then(|| (id, s.deadline_ms.load(Ordering::Relaxed)))
}

/// poold: whether a pool worker waits for work now (idle, and running no task), so that a task
/// queued a moment ago is about to be taken and its caller need not take it back yet.
pub fn some_worker_idle(region: &Region) -> bool {
    (0..region.geometry().max_workers).any(|i| {
        region.worker(i).is_some_and(|e| {
            e.pid.load(Ordering::Relaxed) != 0
                && e.state.load(Ordering::Relaxed) == WorkerState::Idle as u32
        }) && running_task(region, i).is_none()
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::Geometry;
    use crate::stream::{self, Direction};

    fn in_use(r: &Region) -> (u64, u64, u32) {
        let h = r.header();
        (
            h.stats.slots_in_use.load(Ordering::Relaxed),
            h.stats.chunks_in_use.load(Ordering::Relaxed),
            h.tasks_in_use.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn a_task_runs_on_another_worker_and_its_answer_reaches_the_caller() {
        let r = Region::create("t", Geometry::for_tests(8, 32), 1).unwrap();
        let side = r.pool_side();
        let id = alloc_task(side, 0, 100, 0).unwrap();
        let n = stream::write_all(&r, id, Direction::Request, &[b"input"]).unwrap();
        assert!(submit_task(side, id, n));
        // Another worker takes it before any request.
        let conn_gen = open_conn(side, 0, 1).unwrap();
        let req = alloc(r.nginx_side(), 0, conn_gen).unwrap();
        assert!(submit(r.nginx_side(), req, 0, 0));
        assert_eq!(take(side, 1), Some(id));
        assert_eq!(running_task(&r, 1), Some((id, 0)));
        assert_eq!(
            stream::read_all(&r, id, Direction::Request, n).unwrap(),
            b"input"
        );
        let out = stream::write_all(&r, id, Direction::Response, &[b"output"]).unwrap();
        let before = r.worker(0).unwrap().task_seq.load(Ordering::Relaxed);
        assert_eq!(finish(side, id, 0, out), Handover::ToCaller);
        assert_ne!(
            r.worker(0).unwrap().task_seq.load(Ordering::Relaxed),
            before
        );
        clear_current(side, 1);
        assert_eq!(state_of(&r, id), Some(SlotState::Done));
        assert_eq!(
            stream::read_all(&r, id, Direction::Response, out).unwrap(),
            b"output"
        );
        assert!(release_task(side, id));
        assert_eq!(in_use(&r), (1, 0, 0), "the request's slot alone");
        assert_eq!(take(side, 1), Some(req));
    }

    #[test]
    fn a_task_taken_back_is_freed_by_whoever_pops_it() {
        let r = Region::create("t", Geometry::for_tests(8, 32), 1).unwrap();
        let side = r.pool_side();
        let id = alloc_task(side, 0, 100, 0).unwrap();
        let n = stream::write_all(&r, id, Direction::Request, &[&[1; 3000]]).unwrap();
        assert!(submit_task(side, id, n));
        assert!(take_back(side, id));
        assert!(!take_back(side, id), "once");
        assert_eq!(in_use(&r).1, 0, "its input is freed at once");
        assert_eq!(take(side, 1), None);
        assert_eq!(in_use(&r), (0, 0, 0));
        assert_eq!(r.header().stats.tasks_inline.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn tasks_hold_at_most_half_the_slots() {
        let r = Region::create("t", Geometry::for_tests(8, 32), 1).unwrap();
        let side = r.pool_side();
        let ids: Vec<_> = (0..4).map(|_| alloc_task(side, 0, 1, 0).unwrap()).collect();
        assert_eq!(alloc_task(side, 0, 1, 0), None);
        assert!(release_task(side, ids[0]));
        assert!(alloc_task(side, 0, 1, 0).is_some());
    }

    #[test]
    fn a_dead_callers_tasks_are_dropped_or_discarded_and_nothing_leaks() {
        let r = Region::create("t", Geometry::for_tests(8, 32), 1).unwrap();
        let side = r.pool_side();
        let task = || {
            let id = alloc_task(side, 0, 100, 0).unwrap();
            let n = stream::write_all(&r, id, Direction::Request, &[&[7; 1500]]).unwrap();
            assert!(submit_task(side, id, n));
            id
        };
        let (answered, running, queued) = (task(), task(), task());
        // Another caller's task is left alone.
        let other = alloc_task(side, 2, 300, 0).unwrap();
        assert_eq!(take(side, 1), Some(answered));
        let out = stream::write_all(&r, answered, Direction::Response, &[b"x"]).unwrap();
        assert_eq!(finish(side, answered, 0, out), Handover::ToCaller);
        clear_current(side, 1);
        assert_eq!(take(side, 3), Some(running));
        assert_eq!(reclaim_tasks(side, 0, 100), 3);
        assert_eq!(state_of(&r, running), Some(SlotState::Abandoned));
        // Its runner finishes: the answer is discarded and the slot freed.
        assert_eq!(finish(side, running, 0, 0), Handover::Abandoned);
        // The queued one's entry is popped and skipped.
        assert_eq!(take(side, 1), None);
        assert_eq!(in_use(&r), (1, 0, 1), "the other caller's task alone");
        assert!(release_task(side, other));
        assert_eq!(in_use(&r), (0, 0, 0));
        let _ = queued;
    }

    #[test]
    fn cancelling_a_running_task_moves_its_deadline_to_now() {
        let r = Region::create("t", Geometry::for_tests(8, 32), 1).unwrap();
        let side = r.pool_side();
        let id = alloc_task(side, 0, 100, 0).unwrap();
        assert!(submit_task(side, id, 0));
        assert_eq!(take(side, 1), Some(id));
        cancel_task(side, id, true);
        assert_eq!(running_task(&r, 1), Some((id, 1)));
        // The runner is stopped; poold fails its task, which frees it.
        assert_eq!(
            reclaim_worker(side, 1, FailReason::Timeout),
            Some((id, Handover::Abandoned))
        );
        assert_eq!(in_use(&r), (0, 0, 0));
    }
}
