//! A pool worker's loop: take a request from the region, run the handler with the request body
//! streaming in and the response streaming out, wake the nginx worker that owns the request.
//! Each step on the region is one of the channel's pool-side operations
//! ([`ngx_pool_channel::incoming`]); this file holds what is the worker's to decide: which
//! handler runs, when to retire, whom to wake.

use crate::exchange::{DefaultsText, Exchange, Outcome, ResponseSink};
use crate::fanout::{Caller, Calls};
use crate::handler::LoadedHandler;
use crate::{host, log};
use ngx_pool_channel::handshake::{recv_frame, send_frame, Frame, CONN_FD, READY, RETIRING};
use ngx_pool_channel::incoming::{self, AnswerOut, Notify, Taken};
use ngx_pool_channel::message::{RequestView, ServerSide};
use ngx_pool_channel::slot::{self, FailReason, Handover, SlotId, SlotState, WorkerState};
use ngx_pool_channel::Region;
use nix::sys::socket::MsgFlags;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The eventfds of attached nginx workers, by connection index: (generation, eventfd).
#[derive(Default)]
pub struct ConnFds(Vec<Option<(u32, OwnedFd)>>);

impl ConnFds {
    /// The most connections a table holds (poold's `--max-conns` is at most 4096).
    const MAX: u32 = 1 << 16;

    pub fn new() -> Self {
        Self::default()
    }
    /// Connection `conn`'s eventfd, of generation `gen`, replacing any older one.
    pub fn insert(&mut self, conn: u32, gen: u32, fd: OwnedFd) {
        if conn >= Self::MAX {
            return;
        }
        if self.0.len() <= conn as usize {
            self.0.resize_with(conn as usize + 1, || None);
        }
        self.0[conn as usize] = Some((gen, fd));
    }
    /// Connection `conn`'s generation and eventfd, if known.
    pub fn get(&self, conn: u32) -> Option<&(u32, OwnedFd)> {
        self.0.get(conn as usize).and_then(Option::as_ref)
    }
    pub fn fds(&self) -> impl Iterator<Item = &OwnedFd> {
        self.0.iter().flatten().map(|(_, fd)| fd)
    }
}

pub struct Worker<'a> {
    pub region: &'a Region,
    pub handler: &'a LoadedHandler,
    pub index: u32,
    /// This process's id (getpid is a system call; the serving loop logs it).
    pub pid: u32,
    pub waker: RefCell<Waker>,
    /// How long to poll the queue before sleeping (`--spin`).
    pub spin: ngx_pool_channel::spin::Spin,
    /// Retire after this many requests (`--max-requests`, jittered by the caller).
    pub max_requests: Option<u64>,
    /// Retire once resident memory exceeds this many bytes (`--max-rss`).
    pub max_rss: Option<u64>,
    /// Buffers kept from one request to the next, so that a small request allocates little.
    pub scratch: Scratch,
    /// The pool's `timeout` (ms): with a request's own, the deadline its fan-out tasks inherit.
    pub timeout_ms: Option<u64>,
}

/// A pool worker's reusable buffers (their capacity survives requests, up to a bound).
#[derive(Default)]
pub struct Scratch {
    request_head: Vec<u8>,
    response_head: Vec<u8>,
    body: Vec<u8>,
}

impl Scratch {
    /// What a buffer may keep between requests: a large request or response must not pin its
    /// memory in an idle worker.
    const KEEP: usize = 64 << 10;

    fn trim(&mut self) {
        for b in [
            &mut self.request_head,
            &mut self.response_head,
            &mut self.body,
        ] {
            b.clear();
            if b.capacity() > Self::KEEP {
                *b = Vec::new();
            }
        }
    }
}

/// Exit status of a worker that retired on `max_requests`/`max_rss`: poold counts a recycle,
/// not a crash (and forks a replacement if it has not already).
pub const EXIT_RECYCLE: i32 = 75;

/// Exit status of a worker whose handler's `worker_init` failed.
pub const EXIT_WORKER_INIT: i32 = 71;

/// How long a retiring worker waits for poold to say its replacement is ready before it leaves
/// anyway (poold could not fork one).
pub(crate) const RETIRE_WAIT: Duration = Duration::from_secs(10);

/// Resident set size of this process, in bytes.
pub(crate) fn own_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

impl Worker<'_> {
    pub fn run(mut self) -> ! {
        crate::host::in_pool_worker();
        let entry = self
            .region
            .worker(self.index)
            .expect("worker index within geometry");
        entry.pid.store(self.pid, Ordering::Relaxed);
        entry.retire_now.store(0, Ordering::Relaxed);
        if let Err(rc) = self.handler.worker_init() {
            log!(
                "error",
                "worker {}: handler \"{}\" worker_init failed with status {rc}; the worker exits",
                self.pid,
                self.handler.name()
            );
            std::process::exit(EXIT_WORKER_INIT);
        }
        // Idle before READY: whoever this worker relieves leaves only after it can serve.
        entry
            .state
            .store(WorkerState::Idle as u32, Ordering::Relaxed);
        self.tell_poold(READY);
        let (region, index) = (self.region, self.index);
        // Set once this worker asked to retire: it keeps serving until poold says its
        // replacement is ready (or, if none comes, for RETIRE_WAIT at most).
        let mut retiring: Option<Instant> = None;
        // Whether the heap may hold free pages to give back: after work, not again after a trim.
        let heap_used = std::cell::Cell::new(true);
        let trim_heap = || {
            crate::sys::trim_heap();
            heap_used.set(false);
        };
        loop {
            let leave = retiring.is_some_and(|t| t.elapsed() >= RETIRE_WAIT);
            if slot::retire_due(region.pool_side(), index) || leave {
                entry
                    .state
                    .store(WorkerState::Exited as u32, Ordering::Relaxed);
                self.handler.worker_exit();
                std::process::exit(EXIT_RECYCLE);
            }
            entry
                .state
                .store(WorkerState::Idle as u32, Ordering::Relaxed);
            // poold may tell an idle worker to leave (its replacement is ready, or the pool
            // shrinks): looked at before each sleep and after each wake-up.
            let stop = || slot::retire_due(region.pool_side(), index);
            let Some(id) = slot::wait_for_work(
                region.pool_side(),
                index,
                &mut self.spin,
                &stop,
                heap_used.get().then_some(&trim_heap),
            ) else {
                continue;
            };
            entry
                .state
                .store(WorkerState::Busy as u32, Ordering::Relaxed);
            let handover = self.serve(id);
            heap_used.set(true);
            slot::clear_current(region.pool_side(), index);
            let served = entry.served.fetch_add(1, Ordering::Relaxed) + 1;
            if let Handover::Deliver { conn, conn_gen } = handover {
                self.waker.borrow_mut().wake(region, conn, conn_gen);
            }
            // Retire at a request boundary, but only once the replacement is up: no dip in
            // capacity.
            let too_many = self.max_requests.is_some_and(|m| served >= m);
            let too_big = self
                .max_rss
                .is_some_and(|m| own_rss().is_some_and(|rss| rss > m));
            if retiring.is_none() && (too_many || too_big) {
                retiring = Some(Instant::now());
                self.tell_poold(RETIRING);
            }
        }
    }

    pub(crate) fn tell_poold(&self, kind: [u8; 4]) {
        let w = self.waker.borrow();
        let _ = send_frame(
            w.control(),
            Frame::new(kind, self.index, 0, 0),
            None::<&OwnedFd>,
        );
    }

    pub(crate) fn serve(&mut self, id: SlotId) -> Handover {
        let mut scratch = std::mem::take(&mut self.scratch);
        let task = self.region.slot(id.index).is_some_and(slot::is_task);
        let handover = if task {
            self.run_task(id, &mut scratch)
        } else {
            self.serve_with(id, &mut scratch)
        };
        scratch.trim();
        self.scratch = scratch;
        handover
    }

    fn serve_with(&mut self, id: SlotId, scratch: &mut Scratch) -> Handover {
        let region = self.region;
        let pid = self.pid;
        let taken = incoming::take(region, id, &mut scratch.request_head, &self.waker);
        let Taken {
            view,
            body_len,
            mut body,
            mut answer,
        } = match taken {
            Ok(t) => t,
            Err(refused) => {
                log!("error", "worker {pid}: {}", refused.why);
                return incoming::fail(region, id, refused.reason);
            }
        };
        // For log lines only; borrowed, so the common path allocates nothing for it.
        let uri: &[u8] = view.uri;
        let cancelled = move || slot::state_of(region, id) == Some(SlotState::Abandoned);
        let defaults = DefaultsText::default();
        let mut ex = Exchange::new(
            view,
            &defaults,
            body_len,
            &mut body,
            &cancelled,
            &mut answer,
            &mut scratch.response_head,
            &mut scratch.body,
        );
        ex.set_slot(region, id);
        let handler = self.handler;
        let mut calls = Calls::new(region, self.caller(id));
        let rc = host::run_with(&mut ex, &mut calls, |r| handler.handle(r));
        drop(calls);
        let outcome = ex.conclude(rc, handler.name());
        drop(ex);
        let delivered = match outcome {
            Outcome::Whole => answer.whole(&scratch.response_head, &scratch.body),
            Outcome::Streamed => Ok(answer.end()),
            Outcome::Failed(reason, msg) => {
                if let Some(msg) = msg {
                    log!("error", "worker {pid}: {msg}");
                }
                return incoming::fail(region, id, reason);
            }
        };
        delivered.unwrap_or_else(|e| {
            if !answer.abandoned() {
                log!(
                    "error",
                    "worker {pid}: response to \"{}\" not delivered: {e}",
                    String::from_utf8_lossy(uri)
                );
            }
            incoming::fail(region, id, FailReason::Undelivered)
        })
    }
}

impl<'a> Worker<'a> {
    /// This worker as the caller of fan-out tasks for request `id`: the tasks inherit its
    /// deadline, the earlier of its own `pool_timeout` and the pool's `timeout`.
    fn caller(&self, id: SlotId) -> Caller {
        let deadline_ms = slot::running_since(self.region, self.index)
            .filter(|(held, _, _)| *held == id)
            .and_then(|(_, started, own)| {
                let limit = match (own, self.timeout_ms) {
                    (Some(o), Some(p)) => Some(o.min(p)),
                    (o, p) => o.or(p),
                }?;
                Some(started.saturating_add(limit).max(1))
            })
            .unwrap_or(0);
        Caller {
            worker: self.index,
            pid: self.pid,
            own: id,
            deadline_ms,
        }
    }

    /// Runs fan-out task `id` (queued by a handler in another worker, or in this one before it
    /// took this): its input streams in, its output out to the caller.
    fn run_task(&mut self, id: SlotId, scratch: &mut Scratch) -> Handover {
        let region = self.region;
        let pid = self.pid;
        let (mut input, answer) = match incoming::take_raw(region, id, &self.waker) {
            Ok(streams) => streams,
            Err(refused) => return incoming::fail(region, id, refused.reason),
        };
        let total = input.total();
        let cancelled = move || slot::state_of(region, id) != Some(SlotState::Running);
        let mut sink = TaskOut(answer);
        let defaults = DefaultsText::default();
        let view = RequestView {
            method: b"",
            uri: b"",
            version: (1, 1),
            client: b"",
            client_port: 0,
            server: ServerSide::default(),
            headers: Vec::new(),
            params_raw: b"",
            body: b"",
        };
        let mut ex = Exchange::new(
            view,
            &defaults,
            total,
            &mut input,
            &cancelled,
            &mut sink,
            &mut scratch.response_head,
            &mut scratch.body,
        );
        // A task has no head: its output is the body of a response begun here.
        let _ = ex.start(200, std::iter::empty());
        let deadline_ms = region
            .slot(id.index)
            .map_or(0, |s| s.deadline_ms.load(Ordering::Relaxed));
        let mut calls = Calls::new(
            region,
            Caller {
                worker: self.index,
                pid,
                own: id,
                deadline_ms,
            },
        );
        let handler = self.handler;
        let rc = host::run_with(&mut ex, &mut calls, |t| handler.run_task(t));
        drop(calls);
        let Some(rc) = rc else {
            drop(ex);
            log!(
                "error",
                "worker {pid}: handler \"{}\" was given a fan-out task but has no run_task",
                handler.name()
            );
            return slot::fail(region.pool_side(), id, FailReason::HandlerError);
        };
        let outcome = ex.conclude(rc, handler.name());
        drop(ex);
        let delivered = match outcome {
            Outcome::Whole => sink.0.task_write(&scratch.body),
            Outcome::Streamed => Ok(()),
            Outcome::Failed(reason, msg) => {
                if let Some(msg) = msg {
                    log!("error", "worker {pid}: fan-out task: {msg}");
                }
                return incoming::fail(region, id, reason);
            }
        };
        match delivered {
            Ok(()) => sink.0.task_end(),
            Err(_) => incoming::fail(region, id, FailReason::Undelivered),
        }
    }
}

/// A task's output: the body of a response without a head, on the task's response stream.
struct TaskOut<'r>(AnswerOut<'r, Waker>);

impl ResponseSink for TaskOut<'_> {
    fn start(&mut self, _head: &[u8], _declared: Option<u64>) -> io::Result<()> {
        Ok(())
    }
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.task_write(data)
    }
}

impl ResponseSink for AnswerOut<'_, Waker> {
    fn start(&mut self, head: &[u8], _declared: Option<u64>) -> io::Result<()> {
        AnswerOut::start(self, head)
    }
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        AnswerOut::write(self, data)
    }
}

/// Wakes nginx workers through their eventfds. Every lane of a worker (see `crate::lanes`)
/// holds a copy: the table is shared, and whichever lane looks at the control socket first
/// takes what poold sent for all of them.
#[derive(Clone)]
pub struct Waker {
    /// From poold: eventfds of nginx workers that attached after this worker was forked.
    control: Arc<OwnedFd>,
    conns: Arc<Mutex<ConnFds>>,
}

impl Waker {
    pub fn new(control: OwnedFd, conns: ConnFds) -> Waker {
        Waker {
            control: Arc::new(control),
            conns: Arc::new(Mutex::new(conns)),
        }
    }

    /// The control socket to poold (READY, RETIRING).
    pub fn control(&self) -> &OwnedFd {
        &self.control
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ConnFds> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Notify for Waker {
    fn wake(&mut self, region: &Region, conn: u32, conn_gen: u32) {
        if !slot::needs_wake(region.pool_side(), conn, conn_gen) {
            return;
        }
        let mut table = self.table();
        if table.get(conn).map(|(g, _)| *g) != Some(conn_gen) {
            // Takes every eventfd poold has sent since the last look.
            while let Ok(Some((frame, fd))) = recv_frame(&self.control, MsgFlags::MSG_DONTWAIT) {
                if let (CONN_FD, Some(fd)) = (frame.kind, fd) {
                    table.insert(frame.a, frame.b, fd);
                }
            }
        }
        match table.get(conn) {
            Some((g, fd)) if *g == conn_gen => {
                let _ = nix::unistd::write(fd.as_fd(), &1u64.to_ne_bytes());
            }
            _ => log!(
                "error",
                "worker {}: no eventfd for nginx connection {conn}",
                std::process::id()
            ),
        }
    }
}
