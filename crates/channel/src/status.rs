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
    /// How long requests waited in the queue.
    pub queue_time: HistogramStatus,
    /// How long requests ran in a worker.
    pub run_time: HistogramStatus,
}

/// A time histogram read from the region: cumulative counts at each bound (seconds; the last
/// bound is +Inf), the total in seconds, and how many were counted.
#[derive(Debug, Clone)]
pub struct HistogramStatus {
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl HistogramStatus {
    fn read(h: &crate::layout::Histogram) -> HistogramStatus {
        let bounds = crate::layout::HISTOGRAM_BOUNDS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain([f64::INFINITY]);
        let mut total = 0u64;
        let buckets = bounds
            .zip(&h.buckets)
            .map(|(le, b)| {
                total = total.saturating_add(b.load(Ordering::Relaxed));
                (le, total)
            })
            .collect();
        HistogramStatus {
            buckets,
            sum_seconds: h.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            // The buckets' total, read with them: a scrape is then consistent with itself
            // (`+Inf` equals `_count`), whatever was counted meanwhile.
            count: total,
        }
    }

    /// The `q` quantile (0..1), interpolated within its bucket as Prometheus's
    /// `histogram_quantile` does; `None` while nothing was counted.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for &(le, c) in &self.buckets {
            if c as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let inside = (c - lower.1) as f64;
                let into = if inside > 0.0 {
                    (rank - lower.1 as f64) / inside
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * into);
            }
            lower = (le, c);
        }
        Some(lower.0)
    }
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
    let lanes = (0..g.max_workers).filter_map(|i| {
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
    });
    // An ASGI worker holds several entries (lanes, side by side, one per request it may run at
    // once): one line per process, busy while any lane is.
    let mut workers: Vec<WorkerStatus> = Vec::new();
    for lane in lanes {
        match workers.last_mut() {
            Some(w) if w.pid == lane.pid => {
                w.served += lane.served;
                w.busy_ms = w.busy_ms.max(lane.busy_ms);
                if lane.state == "busy" || lane.state == "task" || w.state == "exited" {
                    w.state = lane.state;
                }
            }
            _ => workers.push(lane),
        }
    }
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
        queue_time: HistogramStatus::read(&s.queue_time),
        run_time: HistogramStatus::read(&s.run_time),
    }
}
