//! poold's bookkeeping: nginx connections opening and closing, and the work of a party that
//! died (an nginx worker's slots, a pool worker's request) reclaimed so nothing is lost.
//!
//! Invariant: only poold reclaims, and only for a party it knows is gone (its socket or its
//! process); it closes the dead party's marker window first, so the scavenger can trust it.

use super::*;

/// poold: marks connection `index` attached with a new generation; returns that generation.
pub fn open_conn(side: PoolSide<'_>, index: u32, pid: u32) -> Option<u32> {
    let region = side.region();
    let c = region.conn(index)?;
    let gen = ((c.state.load(Ordering::Relaxed) >> 1) as u32).wrapping_add(1);
    c.pid.store(pid, Ordering::Relaxed);
    c.wake_pending.store(0, Ordering::Relaxed);
    // Release: publishes pid and the cleared flag to completers that Acquire the state.
    c.state.store((gen as u64) << 1 | 1, Ordering::Release);
    Some(gen)
}

/// poold: marks connection `index` detached.
pub fn close_conn(side: PoolSide<'_>, index: u32) {
    let region = side.region();
    if let Some(c) = region.conn(index) {
        let st = c.state.load(Ordering::Relaxed);
        c.state.store(st & !1, Ordering::Release);
    }
}

/// poold: nginx connection `conn` (generation `conn_gen`) is gone; abandons or releases every
/// slot it owned. Returns how many slots were reclaimed.
pub fn reclaim_conn(side: PoolSide<'_>, conn: u32, conn_gen: u32) -> u32 {
    let region = side.region();
    close_dead_window(region, Actor::Conn(conn));
    // The dead nginx worker's own steps (release), taken for it: it can no longer take them.
    let on_behalf = region.nginx_side();
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
                abandoned || release(on_behalf, v.id)
            }
            Some(SlotState::Done) | Some(SlotState::Failed) | Some(SlotState::Filling) => {
                release(on_behalf, v.id)
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
    side: PoolSide<'_>,
    worker: u32,
    reason: FailReason,
) -> Option<(SlotId, Handover)> {
    let region = side.region();
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
                    let task = region.slot(id.index).is_some_and(is_task);
                    let ring = if task {
                        queue::Ring::tasks(region)
                    } else {
                        queue::Ring::requests(region)
                    };
                    let _ = ring.push(id.encode());
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
    Some((id, fail(side, id, reason)))
}

/// The request worker `worker` holds (Running, or Abandoned by nginx meanwhile), if any; with
/// `take`, the worker's entry is cleared in the same step.
pub(super) fn held_by(region: &Region, worker: u32, take: bool) -> Option<SlotId> {
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
