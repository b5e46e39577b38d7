//! The region's binary layout: a versioned header followed by offset-addressed tables.
//!
//! Every type here is `#[repr(C)]` and holds only atomics and plain integers: no pointers, so the
//! region means the same at whatever address each process maps it. Sections are found through
//! offsets computed from the [`Geometry`] by `const` functions; a reader recomputes them and
//! checks them against the header before trusting anything.

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;
use std::mem::size_of;

/// `b"NGXPOOL1"` read as a little-endian integer.
pub const MAGIC: u64 = u64::from_le_bytes(*b"NGXPOOL1");
/// Bumped on any change of layout or message format; both sides must agree exactly.
pub const LAYOUT_VERSION: u32 = 16;
/// Alignment of every section and of the chunk stride.
pub const SECTION_ALIGN: u64 = 128;
/// Alignment of the chunk payloads: a page, so that payloads start on a page (and a cache
/// line) and bulk copies in and out of them run aligned (a 16-byte misalignment measured 20-25%
/// slower per 1 MiB copied here).
pub const PAYLOAD_ALIGN: u64 = 4096;

/// The sizes a region is built with. Chosen by poold, published in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Request slots: the most requests in flight (queued + running) at once.
    pub slots: u32,
    /// Payload bytes of one chunk; a multiple of [`SECTION_ALIGN`].
    pub chunk_size: u32,
    /// Chunks in the arena.
    pub chunks: u32,
    /// The most nginx workers attached at once.
    pub max_conns: u32,
    /// The most pool workers; sizes the per-worker table.
    pub max_workers: u32,
}

impl Geometry {
    /// Request-queue capacity: a power of two at least `slots`, so a push never finds it full
    /// while the pusher holds a slot.
    pub const fn queue_cap(&self) -> u32 {
        (self.slots as u64).next_power_of_two() as u32
    }
    /// Payload bytes per chunk.
    pub const fn chunk_data(&self) -> u32 {
        self.chunk_size
    }
    /// Bytes one request or response may occupy at once: a quarter of the arena, so that one
    /// large message cannot starve every other request.
    pub const fn message_limit(&self) -> u64 {
        (self.chunks as u64 / 4) * self.chunk_data() as u64
    }
    /// Bytes a stream's writer may have published and its reader not yet freed: the credit
    /// window of [`crate::stream`]. Large enough to keep a fast pair busy, small enough that a
    /// handful of large bodies in flight leave the arena to everyone else.
    pub const fn stream_window(&self) -> u64 {
        let floor = 2 * self.chunk_data() as u64;
        let want = if floor > 1 << 20 { floor } else { 1 << 20 };
        let limit = self.message_limit();
        if want < limit {
            want
        } else if limit > floor {
            limit
        } else {
            floor
        }
    }
    /// The window of each stream of an upgraded connection (a WebSocket): it lasts as long as
    /// its client wants, so it holds little of the arena however slowly it reads: two chunks,
    /// the least a stream moves with.
    pub const fn tunnel_window(&self) -> u64 {
        2 * self.chunk_data() as u64
    }
    /// Upgraded connections a pool carries at once: together they hold at most a third of the
    /// arena (each at most its two windows and a chunk more each way), so requests always
    /// find the half that the queue's rule keeps for them. 227 for the default 64 MiB arena.
    pub const fn max_tunnels(&self) -> u32 {
        let per_tunnel = 2 * (self.tunnel_window() / self.chunk_data() as u64 + 1);
        (self.chunks as u64 / 3 / per_tunnel) as u32
    }
    /// The part of the window a request may fill while it waits in the queue: queued requests
    /// must not be able to take the arena that running ones need for their answers.
    pub const fn queued_window(&self) -> u64 {
        let w = self.stream_window();
        if w < 64 << 10 {
            w
        } else {
            64 << 10
        }
    }
    pub const fn slots_offset(&self) -> u64 {
        align(size_of::<Header>() as u64)
    }
    pub const fn conns_offset(&self) -> u64 {
        align(self.slots_offset() + self.slots as u64 * size_of::<Slot>() as u64)
    }
    pub const fn workers_offset(&self) -> u64 {
        align(self.conns_offset() + self.max_conns as u64 * size_of::<Conn>() as u64)
    }
    pub const fn queue_offset(&self) -> u64 {
        align(self.workers_offset() + self.max_workers as u64 * size_of::<WorkerEntry>() as u64)
    }
    /// Cells of each connection's completion ring: a slot is pushed at most about once per
    /// wake-up, so one lap holds every slot; on overflow the nginx worker scans instead.
    pub const fn completion_cap(&self) -> u32 {
        self.queue_cap()
    }
    /// The task queue ([`crate::slot::task`]): as many cells as the request queue.
    pub const fn task_queue_offset(&self) -> u64 {
        align(self.queue_offset() + self.queue_cap() as u64 * size_of::<Cell>() as u64)
    }
    /// The most slots fan-out tasks may hold at once: half of them, so that tasks never take
    /// every slot from the requests nginx admits (a caller runs a task itself past it).
    pub const fn task_slots(&self) -> u32 {
        if self.slots < 2 {
            1
        } else {
            self.slots / 2
        }
    }
    pub const fn completions_offset(&self) -> u64 {
        align(self.task_queue_offset() + self.queue_cap() as u64 * size_of::<Cell>() as u64)
    }
    /// The chunk-head table: each chunk's link and fill length, kept apart from the payloads.
    pub const fn chunk_heads_offset(&self) -> u64 {
        align(
            self.completions_offset()
                + self.max_conns as u64 * self.completion_cap() as u64 * size_of::<Cell>() as u64,
        )
    }
    /// The chunk payloads, page-aligned.
    pub const fn chunks_offset(&self) -> u64 {
        (self.chunk_heads_offset() + self.chunks as u64 * size_of::<ChunkHead>() as u64)
            .div_ceil(PAYLOAD_ALIGN)
            * PAYLOAD_ALIGN
    }
    /// Total bytes of the region.
    pub const fn region_size(&self) -> u64 {
        self.chunks_offset() + self.chunks as u64 * self.chunk_size as u64
    }
    /// A small geometry of 1 KiB chunks, for tests and the fuzz target.
    #[doc(hidden)]
    pub const fn for_tests(slots: u32, chunks: u32) -> Geometry {
        Geometry {
            slots,
            chunk_size: 1024,
            chunks,
            max_conns: 4,
            max_workers: 4,
        }
    }
    /// Checks the values are usable; returns what is wrong otherwise.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.slots == 0 || self.slots > 1 << 20 {
            return Err("slots must be 1..=1048576");
        }
        if self.chunk_size < 1024
            || self.chunk_size > 1 << 24
            || !(self.chunk_size as u64).is_multiple_of(SECTION_ALIGN)
        {
            return Err("chunk size must be a multiple of 128 between 1 KiB and 16 MiB");
        }
        if self.chunks < 8 || self.chunks > 1 << 24 {
            return Err("chunks must be 8..=16777216");
        }
        if self.max_conns == 0 || self.max_conns > 4096 {
            return Err("max_conns must be 1..=4096");
        }
        if self.max_workers == 0 || self.max_workers > 65_536 {
            return Err("max_workers must be 1..=65536");
        }
        if self.max_conns as u64 * self.completion_cap() as u64 > u32::MAX as u64 {
            return Err("max_conns x slots too large for the completion rings");
        }
        if self.region_size() > 1 << 40 {
            return Err("region larger than 1 TiB");
        }
        Ok(())
    }
}

const fn align(n: u64) -> u64 {
    n.div_ceil(SECTION_ALIGN) * SECTION_ALIGN
}

/// Start of the region. Immutable fields are written once by poold before the region is shared.
#[repr(C)]
pub struct Header {
    pub magic: u64,
    pub version: u32,
    pub header_size: u32,
    pub geometry: Geometry,
    pub region_size: u64,
    /// poold's pid, for log lines.
    pub poold_pid: u32,
    _pad: u32,
    /// Futex word idle pool workers sleep on; bumped by a producer that saw sleepers.
    pub work_seq: CachePadded<AtomicU32>,
    /// How many pool workers are (about to be) asleep on `work_seq`.
    pub sleepers: CachePadded<AtomicU32>,
    /// Free-list head of slots (tag << 32 | index + 1).
    pub slot_free: CachePadded<AtomicU64>,
    /// Free-list head of chunks (tag << 32 | index + 1).
    pub chunk_free: CachePadded<AtomicU64>,
    /// Request queue producer and consumer positions.
    pub enqueue_pos: CachePadded<AtomicU64>,
    pub dequeue_pos: CachePadded<AtomicU64>,
    /// Task queue producer and consumer positions (producers and consumers are pool workers).
    pub task_enqueue_pos: CachePadded<AtomicU64>,
    pub task_dequeue_pos: CachePadded<AtomicU64>,
    /// Slots held by fan-out tasks, at most [`Geometry::task_slots`].
    pub tasks_in_use: CachePadded<AtomicU32>,
    /// Counters, for status and leak checks.
    pub stats: Stats,
}

/// Monotonic counters kept in the region (relaxed; for reporting only).
#[repr(C)]
#[derive(Default)]
pub struct Stats {
    /// Requests queued by nginx workers.
    pub accepted: AtomicU64,
    /// Responses delivered by pool workers.
    pub completed: AtomicU64,
    /// Requests failed on the pool side (any reason; 502, or 504 for `timeouts`).
    pub failed: AtomicU64,
    /// Of `failed`: stopped by poold for running past the deadline.
    pub timeouts: AtomicU64,
    /// Requests nginx answered 503 because every slot was in use.
    pub rejected_full: AtomicU64,
    /// Requests nginx answered 503 because they waited in the queue past `queue_timeout`.
    pub queue_timeouts: AtomicU64,
    /// Requests nginx gave up on (deadline or client gone) before their answer.
    pub abandoned: AtomicU64,
    /// Pool workers that died or were killed.
    pub worker_exits: AtomicU64,
    /// Pool workers forked to replace one.
    pub respawns: AtomicU64,
    /// Of `worker_exits`: workers that retired on `max_requests` or `max_rss`.
    pub recycles: AtomicU64,
    pub slots_in_use: AtomicU64,
    pub chunks_in_use: AtomicU64,
    /// Fan-out tasks queued for other pool workers.
    pub tasks_submitted: AtomicU64,
    /// Of those: answered by the worker that ran them.
    pub tasks_completed: AtomicU64,
    /// Of those: failed (the worker running one died or was stopped).
    pub tasks_failed: AtomicU64,
    /// Tasks their caller ran itself: no room to queue them, or taken back while it waited.
    pub tasks_inline: AtomicU64,
    /// Lines the pool's workers wrote to stdout or stderr that poold dropped (`log_rate=`).
    pub log_lines_dropped: AtomicU64,
    /// How long requests waited in the queue (from nginx queueing one to a worker taking it),
    /// observed by nginx workers.
    pub queue_time: Histogram,
    /// How long requests ran in a worker (from taking one to its answer handed over or failed),
    /// observed by the pool workers.
    pub run_time: Histogram,
}

/// Upper bounds of the time histograms' buckets, in microseconds: web work from 1 ms to a minute
/// (the last bucket, past 60 s, is Prometheus's `+Inf`).
pub const HISTOGRAM_BOUNDS_US: [u64; 15] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A distribution of durations, pool-wide: what every nginx worker's scrape reads. Counts per
/// bucket (not cumulative; the exposition sums them), their total in microseconds, and how many.
#[repr(C)]
#[derive(Default)]
pub struct Histogram {
    pub buckets: [AtomicU64; HISTOGRAM_BOUNDS_US.len() + 1],
    pub sum_us: AtomicU64,
    pub count: AtomicU64,
}

impl Histogram {
    /// Counts one duration of `us` microseconds (relaxed: for reporting only).
    pub fn observe(&self, us: u64) {
        let i = HISTOGRAM_BOUNDS_US.partition_point(|&b| b < us);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request slot. `state` owns everything else: a side reads the other fields only after an
/// Acquire load of `state` that saw the value published by the writer's Release.
#[repr(C)]
#[cfg_attr(loom, derive(Default))]
pub struct Slot {
    pub state: AtomicU64,
    /// Index and generation of the nginx connection that owns the request.
    pub conn: AtomicU32,
    pub conn_gen: AtomicU32,
    /// Index of the pool worker running it (valid in `Running`).
    pub worker: AtomicU32,
    /// Why it failed (a [`crate::slot::FailReason`] code), in `Failed`.
    pub fail_reason: AtomicU32,
    pub req_head: AtomicU32,
    pub resp_head: AtomicU32,
    pub req_len: AtomicU64,
    pub resp_len: AtomicU64,
    /// Microseconds (CLOCK_MONOTONIC) when a worker took it; for deadlines, status and the
    /// time histograms.
    pub started_us: AtomicU64,
    /// Free-list link (index + 1, 0 = end).
    pub next_free: AtomicU32,
    /// This request's own deadline in ms from when a worker took it (`pool_timeout`), 0 for
    /// the pool's; poold stops a worker running it longer.
    pub timeout_ms: AtomicU32,
    /// Streaming ([`crate::stream`]): bytes of each direction the writer has published
    /// (Release) and the reader has consumed and freed (Release, the writer's credit).
    pub req_written: AtomicU64,
    pub req_consumed: AtomicU64,
    pub resp_written: AtomicU64,
    pub resp_consumed: AtomicU64,
    /// Bytes of the request and response heads at the start of their streams.
    pub req_head_len: AtomicU32,
    pub resp_head_len: AtomicU32,
    /// Futex word the pool worker sleeps on while it waits for request bytes or response
    /// credit; bumped by nginx on progress when `worker_waiting` is set.
    pub worker_seq: AtomicU32,
    pub worker_waiting: AtomicU32,
    /// Set by the nginx worker when it waits for progress on this slot (response bytes or
    /// request credit); the pool worker clears it and wakes the nginx worker.
    pub nginx_waiting: AtomicU32,
    /// A fan-out task's caller: its pool worker's index + 1; 0 for a request of nginx's (see
    /// [`crate::slot::task`]). For a task, `conn` is [`crate::slot::NO_CONN`] and `conn_gen`
    /// the caller's pid.
    pub caller: AtomicU32,
    /// A task's deadline (CLOCK_MONOTONIC ms), its request's; 0 for none. poold stops a worker
    /// running a task past it.
    pub deadline_ms: AtomicU64,
    /// nginx's word to the pool worker running an open-ended request (an upgraded connection,
    /// [`crate::message::OPEN_BODY`]): [`crate::slot::NOTICE_GOING_AWAY`] once its nginx worker
    /// shuts down gracefully (a reload), so that the tunnel is closed cleanly; else 0.
    pub notice: AtomicU32,
    pub _pad: u32,
}

/// One attached nginx worker.
#[repr(C)]
#[cfg_attr(loom, derive(Default))]
pub struct Conn {
    /// `gen << 1 | active`. Written by poold only.
    pub state: AtomicU64,
    pub pid: AtomicU32,
    /// Set by a completer before it writes the eventfd; cleared by the nginx worker before it
    /// scans. A completer writes the eventfd only when it turned this from 0 to 1.
    pub wake_pending: AtomicU32,
    /// Positions of this connection's completion ring.
    pub enqueue_pos: AtomicU64,
    pub dequeue_pos: AtomicU64,
    /// Set when a completion did not fit the ring: the nginx worker then looks at every
    /// request it has in flight.
    pub overflow: AtomicU32,
    /// Odd while this nginx worker holds a slot that is `Free` yet off the slot free list
    /// (taking one, or giving one back); see [`crate::slot`]'s marker windows.
    pub slot_op: AtomicU32,
    _pad: [u64; 3],
}

/// One pool worker, as poold and the worker itself report it.
#[repr(C)]
#[cfg_attr(loom, derive(Default))]
pub struct WorkerEntry {
    pub pid: AtomicU32,
    /// A [`crate::slot::WorkerState`] code.
    pub state: AtomicU32,
    pub served: AtomicU64,
    /// Slot index + 1 of the request it runs, 0 when idle.
    pub current: AtomicU32,
    /// Generation of that slot's use.
    pub current_gen: AtomicU32,
    pub started_ms: AtomicU64,
    /// Set by poold once this (retiring) worker's replacement is ready: it exits at the next
    /// request boundary.
    pub retire_now: AtomicU32,
    /// Odd while this worker holds a slot that is `Free` yet off the slot free list (giving
    /// back one nginx abandoned); see [`crate::slot`]'s marker windows.
    pub slot_op: AtomicU32,
    /// Futex word this worker sleeps on while it waits for its fan-out tasks; bumped by the
    /// workers running them on progress.
    pub task_seq: AtomicU32,
    _pad1: u32,
    _pad2: [u64; 2],
}

/// A request-queue cell (Vyukov's bounded MPMC queue).
#[repr(C)]
#[cfg_attr(loom, derive(Default))]
pub struct Cell {
    pub seq: AtomicU64,
    pub value: AtomicU64,
}

/// One chunk's bookkeeping, in the chunk-head table. A cache line each, so that the chunks two
/// processes are filling at once do not share one.
#[repr(C)]
#[cfg_attr(loom, derive(Default))]
pub struct ChunkHead {
    /// Next chunk of the same chain (index + 1, 0 = end).
    pub next: AtomicU32,
    /// Bytes of payload filled.
    pub len: AtomicU32,
    /// Free-list link (index + 1, 0 = end).
    pub next_free: AtomicU32,
    _pad: [u32; 13],
}

// The shared layout's sizes (loom's model atomics are larger; the model does not map memory).
#[cfg(not(loom))]
const _: () = assert!(size_of::<ChunkHead>() == 64);
#[cfg(not(loom))]
const _: () = assert!(size_of::<Slot>() == 136);
#[cfg(not(loom))]
const _: () = assert!(size_of::<Conn>() == 64);
#[cfg(not(loom))]
const _: () = assert!(size_of::<WorkerEntry>() == 64);

impl Header {
    /// Values for a fresh header; the atomics start at their empty values.
    pub fn new(geometry: Geometry, poold_pid: u32) -> Self {
        Header {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            header_size: size_of::<Header>() as u32,
            geometry,
            region_size: geometry.region_size(),
            poold_pid,
            _pad: 0,
            work_seq: Default::default(),
            sleepers: Default::default(),
            slot_free: Default::default(),
            chunk_free: Default::default(),
            enqueue_pos: Default::default(),
            dequeue_pos: Default::default(),
            task_enqueue_pos: Default::default(),
            task_dequeue_pos: Default::default(),
            tasks_in_use: Default::default(),
            stats: Stats::default(),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn sections_are_aligned_and_ordered() {
        let g = Geometry {
            slots: 100,
            chunk_size: 16384,
            chunks: 64,
            max_conns: 8,
            max_workers: 4,
        };
        g.validate().unwrap();
        assert_eq!(g.queue_cap(), 128);
        let offs = [
            g.slots_offset(),
            g.conns_offset(),
            g.workers_offset(),
            g.queue_offset(),
            g.task_queue_offset(),
            g.completions_offset(),
            g.chunk_heads_offset(),
            g.chunks_offset(),
        ];
        assert!(offs.windows(2).all(|w| w[0] < w[1]));
        assert!(offs.iter().all(|o| o % SECTION_ALIGN == 0));
        assert_eq!(g.chunks_offset() % PAYLOAD_ALIGN, 0);
        assert_eq!(g.region_size(), g.chunks_offset() + 64 * 16384);
    }
}
