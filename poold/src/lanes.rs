//! A worker process that runs several requests at once (an ASGI pool's `concurrency=N`): N
//! lanes, each a thread with a region worker entry of its own, serving one request at a time
//! exactly as a single-request worker does (`Worker::serve` in `crate::worker`).
//!
//! So everything the channel and poold know of a worker holds per lane unchanged: which
//! request a lane holds (a dead process's lanes are all reclaimed), its deadline, its fan-out
//! caller identity. What is the process's, not a lane's, lives here: the handler's
//! `worker_init` before any lane starts and `worker_exit` after the last one stopped (an ASGI
//! app's lifespan), `max_requests`/`max_rss` counted over all lanes, and the signals that stop
//! it: SIGTERM (the pool stops, or a request ran past its deadline and the handler could not
//! end it) lets the lanes finish what they run, then exits.
//!
//! The lanes run the handler's `handle` on their own threads, at the same time: only a
//! handler made for it is run this way (the ASGI adapter, whose `handle` only passes the
//! request to the app's event loop and waits for its answer, holding no Python).

use crate::handler::LoadedHandler;
use crate::log;
use crate::worker::{own_rss, Waker, Worker, EXIT_RECYCLE, EXIT_WORKER_INIT, RETIRE_WAIT};
use ngx_pool_channel::handshake::{READY, RETIRING};
use ngx_pool_channel::slot::{self, Handover, WorkerState};
use ngx_pool_channel::Region;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a stopping worker lets its lanes finish the requests they run before it leaves
/// anyway (poold kills it one second later: its STOP_GRACE is 3 s).
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// A lane's stack: it runs the channel's operations and the handler's `handle`, which for the
/// handlers run this way only waits (the app runs on its event loop's thread).
const LANE_STACK: usize = 256 << 10;

/// One worker process's lanes: entries `first..first + count` of the region.
pub struct Lanes<'a> {
    pub region: &'a Region,
    pub handler: &'a LoadedHandler,
    pub first: u32,
    pub count: u32,
    pub waker: Waker,
    pub spin: Duration,
    pub max_requests: Option<u64>,
    pub max_rss: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// What the lanes of a process share.
struct Shared {
    served: AtomicU64,
    /// Set when the process asked poold for a replacement (max_requests, max_rss).
    retiring: Mutex<Option<Instant>>,
    /// Set on SIGTERM: take nothing new.
    stopping: AtomicBool,
    /// Lanes still in their loop.
    live: AtomicU32,
}

impl Lanes<'_> {
    pub fn run(self) -> ! {
        crate::host::in_pool_worker();
        let pid = std::process::id();
        // Before any thread starts (the event loop's too): they inherit it. Measured on the
        // ASGI benchmark, 2 cores: /hello about 1.15 x the throughput with it, where the
        // lanes and the loop woke each other out of their cores a few times a request; a
        // single-request (WSGI) worker measured no better, and keeps the default.
        if let Err(e) = crate::sys::batch_scheduling() {
            log!("info", "worker {pid}: SCHED_BATCH: {e}");
        }
        let region = self.region;
        let lanes = self.first..self.first + self.count;
        for lane in lanes.clone() {
            if let Some(e) = region.worker(lane) {
                e.pid.store(pid, Ordering::Relaxed);
                e.retire_now.store(0, Ordering::Relaxed);
            }
        }
        // Blocked before any thread starts (the handler's own, in worker_init, too), so that
        // only this thread takes them, through the descriptor below.
        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
            mask.add(s);
        }
        let signals = mask
            .thread_block()
            .and_then(|()| {
                SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            })
            .unwrap_or_else(|e| {
                log!("error", "worker {pid}: cannot take its signals: {e}");
                std::process::exit(EXIT_WORKER_INIT)
            });
        if let Err(rc) = self.handler.worker_init() {
            log!(
                "error",
                "worker {pid}: handler \"{}\" worker_init failed with status {rc}; the worker exits",
                self.handler.name()
            );
            std::process::exit(EXIT_WORKER_INIT);
        }
        for lane in lanes.clone() {
            if let Some(e) = region.worker(lane) {
                e.state.store(WorkerState::Idle as u32, Ordering::Relaxed);
            }
        }
        let shared = Shared {
            served: AtomicU64::new(0),
            retiring: Mutex::new(None),
            stopping: AtomicBool::new(false),
            live: AtomicU32::new(self.count),
        };
        let lane_worker = |lane: u32| Worker {
            region,
            handler: self.handler,
            index: lane,
            pid,
            waker: std::cell::RefCell::new(self.waker.clone()),
            // One lane polls before sleeping; a hundred polling would take the cores.
            spin: ngx_pool_channel::spin::Spin::adaptive(if lane == self.first {
                self.spin
            } else {
                Duration::ZERO
            }),
            max_requests: None,
            max_rss: None,
            scratch: Default::default(),
            timeout_ms: self.timeout_ms,
        };
        lane_worker(self.first).tell_poold(READY);
        let exit = std::thread::scope(|scope| {
            for lane in lanes.clone() {
                let worker = lane_worker(lane);
                let shared = &shared;
                let this = &self;
                let started = std::thread::Builder::new()
                    .name(format!("lane {}", lane - self.first))
                    .stack_size(LANE_STACK)
                    .spawn_scoped(scope, move || this.lane(worker, shared));
                if let Err(e) = started {
                    log!("error", "worker {pid}: cannot start lane {lane}: {e}");
                    shared.live.fetch_sub(1, Ordering::SeqCst);
                }
            }
            self.watch(&signals, &shared)
        });
        self.handler.worker_exit();
        std::process::exit(exit);
    }

    /// The process's main thread while the lanes serve: takes the stopping signals, and
    /// returns the exit status once every lane has left (or FINISH_WAIT after a signal).
    fn watch(&self, signals: &SignalFd, shared: &Shared) -> i32 {
        let mut signalled: Option<Instant> = None;
        loop {
            if shared.live.load(Ordering::SeqCst) == 0 {
                return if signalled.is_some() { 0 } else { EXIT_RECYCLE };
            }
            if signalled.is_some_and(|t| t.elapsed() >= FINISH_WAIT) {
                log!(
                    "warn",
                    "worker {}: {} requests still running {FINISH_WAIT:?} after it was told to stop; it leaves",
                    std::process::id(),
                    shared.live.load(Ordering::SeqCst)
                );
                return 0;
            }
            let retired = shared
                .retiring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|t| t.elapsed() >= RETIRE_WAIT)
                || (self.first..self.first + self.count)
                    .any(|lane| slot::retire_due(self.region.pool_side(), lane));
            if retired {
                // The other lanes leave at their next request boundary; an upgraded
                // connection has none: it is closed (a WebSocket with 1001).
                crate::wakers::close_all(crate::wakers::GOING_AWAY);
            }
            let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            if let Ok(Some(_)) = signals.read_signal() {
                if signalled.is_none() {
                    signalled = Some(Instant::now());
                    shared.stopping.store(true, Ordering::SeqCst);
                    // Upgraded connections are closed now (a WebSocket with 1012): they
                    // have FINISH_WAIT for their closing handshake.
                    crate::wakers::close_all(crate::wakers::RESTART);
                    // Wakes the lanes asleep waiting for work, so that they see it.
                    for lane in self.first..self.first + self.count {
                        slot::tell_retire(self.region.pool_side(), lane);
                    }
                }
            }
        }
    }

    /// One lane: a request at a time until the process retires or stops.
    fn lane(&self, mut worker: Worker<'_>, shared: &Shared) {
        let (region, lane) = (self.region, worker.index);
        let entry = region.worker(lane).expect("lane within geometry");
        // As a worker's (`worker.rs`): the heap trimmed once per quiet spell after work.
        let heap_used = std::cell::Cell::new(true);
        let trim_heap = || {
            crate::sys::trim_heap();
            heap_used.set(false);
        };
        loop {
            let leave = shared
                .retiring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|t| t.elapsed() >= RETIRE_WAIT);
            if leave
                || shared.stopping.load(Ordering::SeqCst)
                || slot::retire_due(region.pool_side(), lane)
            {
                break;
            }
            entry
                .state
                .store(WorkerState::Idle as u32, Ordering::Relaxed);
            let stop = || {
                slot::retire_due(region.pool_side(), lane) || shared.stopping.load(Ordering::SeqCst)
            };
            let Some(id) = slot::wait_for_work(
                region.pool_side(),
                lane,
                &mut worker.spin,
                &stop,
                heap_used.get().then_some(&trim_heap),
            ) else {
                continue;
            };
            entry
                .state
                .store(WorkerState::Busy as u32, Ordering::Relaxed);
            let handover = worker.serve(id);
            heap_used.set(true);
            slot::clear_current(region.pool_side(), lane);
            entry.served.fetch_add(1, Ordering::Relaxed);
            if let Handover::Deliver { conn, conn_gen } = handover {
                ngx_pool_channel::incoming::Notify::wake(
                    &mut *worker.waker.borrow_mut(),
                    region,
                    conn,
                    conn_gen,
                );
            }
            let served = shared.served.fetch_add(1, Ordering::Relaxed) + 1;
            let too_many = self.max_requests.is_some_and(|m| served >= m);
            let too_big = self
                .max_rss
                .is_some_and(|m| own_rss().is_some_and(|rss| rss > m));
            if too_many || too_big {
                let mut retiring = shared
                    .retiring
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if retiring.is_none() {
                    *retiring = Some(Instant::now());
                    worker.tell_poold(RETIRING);
                }
            }
        }
        entry
            .state
            .store(WorkerState::Exited as u32, Ordering::Relaxed);
        shared.live.fetch_sub(1, Ordering::SeqCst);
    }
}
