//! A consistent-enough snapshot of a pool for reporting: workers, occupancy and counters.
//!
//! Everything is read with relaxed loads of independent words; numbers may be a request apart
//! from each other under load, never out of bounds.

use crate::queue;
use crate::region::Region;
use crate::slot::{running_since, WorkerState};
use crate::sync::Ordering;

/// One pool worker as the region reports it.
#[derive(Debug, Clone)]
pub struct WorkerStatus {
    pub index: u32,
    pub pid: u32,
    pub state: &'static str,
    pub served: u64,
    /// Milliseconds the current request has run, if busy.
    pub busy_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct PoolStatus {
    pub poold_pid: u32,
    pub workers: Vec<WorkerStatus>,
    pub queue_depth: u64,
    pub slots_total: u32,
    pub slots_in_use: u64,
    pub chunks_total: u32,
    pub chunks_in_use: u64,
    pub chunk_size: u32,
    /// Monotonic counters, by name.
    pub counters: Vec<(&'static str, u64)>,
}

fn state_name(code: u32) -> &'static str {
    match code {
        c if c == WorkerState::Starting as u32 => "starting",
        c if c == WorkerState::Idle as u32 => "idle",
        c if c == WorkerState::Busy as u32 => "busy",
        c if c == WorkerState::Exited as u32 => "exited",
        _ => "unknown",
    }
}

pub fn snapshot(region: &Region) -> PoolStatus {
    let g = region.geometry();
    let h = region.header();
    let now = crate::sys::monotonic_ms();
    let workers = (0..g.max_workers)
        .filter_map(|i| {
            let e = region.worker(i)?;
            let pid = e.pid.load(Ordering::Relaxed);
            (pid != 0).then(|| WorkerStatus {
                index: i,
                pid,
                state: match crate::slot::running_task(region, i) {
                    Some(_) => "task",
                    None => state_name(e.state.load(Ordering::Relaxed)),
                },
                served: e.served.load(Ordering::Relaxed),
                busy_ms: running_since(region, i).map(|(_, since, _)| now.saturating_sub(since)),
            })
        })
        .collect();
    let s = &h.stats;
    let c = |a: &crate::sync::AtomicU64| a.load(Ordering::Relaxed);
    PoolStatus {
        poold_pid: h.poold_pid,
        workers,
        queue_depth: queue::depth(region),
        slots_total: g.slots,
        slots_in_use: c(&s.slots_in_use),
        chunks_total: g.chunks,
        chunks_in_use: c(&s.chunks_in_use),
        chunk_size: g.chunk_size,
        counters: vec![
            ("accepted", c(&s.accepted)),
            ("completed", c(&s.completed)),
            ("failed", c(&s.failed)),
            ("timeouts", c(&s.timeouts)),
            ("rejected_full", c(&s.rejected_full)),
            ("queue_timeouts", c(&s.queue_timeouts)),
            ("abandoned", c(&s.abandoned)),
            ("worker_exits", c(&s.worker_exits)),
            ("respawns", c(&s.respawns)),
            ("recycles", c(&s.recycles)),
            ("tasks_submitted", c(&s.tasks_submitted)),
            ("tasks_completed", c(&s.tasks_completed)),
            ("tasks_failed", c(&s.tasks_failed)),
            ("tasks_inline", c(&s.tasks_inline)),
            ("log_lines_dropped", c(&s.log_lines_dropped)),
        ],
    }
}
