//! poold's main loop: the socket nginx workers attach to, worker supervision, reclaiming.
//!
//! Single-threaded on purpose: it forks. One `poll` covers the signalfd (SIGCHLD and stop
//! signals), the listening socket, every attached nginx worker's socket (its lifeline: end of
//! file means it died) and, in managed mode, the lifeline from the nginx master.

use crate::config::Config;
use crate::handler::LoadedHandler;
use crate::log;
use crate::sys;
use crate::worker::{ConnFds, Worker};
use ngx_pool_channel::handshake::{self, recv_frame, send_frame, Frame, READY, RETIRING};
use ngx_pool_channel::layout::LAYOUT_VERSION;
use ngx_pool_channel::scavenge::{self, NotNow};
use ngx_pool_channel::slot::{self, FailReason, Handover, WorkerState};
use ngx_pool_channel::Region;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A worker that dies sooner than this after its start counts as a crash loop.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long stopping waits for workers to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a worker past its deadline has between SIGTERM and SIGKILL.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);
/// The longest a superseded generation waits for its nginx workers to leave.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// How often deadlines are checked when the pool has a timeout and requests are in flight, and
/// when it is idle (poold is not told of new requests, so it still looks now and then; a stuck
/// worker is then stopped at most this late, after nginx has already answered 504).
const DEADLINE_TICK: Duration = Duration::from_millis(100);
const IDLE_TICK: Duration = Duration::from_secs(1);

struct NginxConn {
    sock: OwnedFd,
    gen: u32,
    pid: u32,
    eventfd: OwnedFd,
}

#[derive(Default)]
struct WorkerSlot {
    pid: Option<Pid>,
    /// Set when poold stopped this worker for running past the deadline.
    killed_for_timeout: Option<Instant>,
    control: Option<OwnedFd>,
    started: Option<Instant>,
    quick_deaths: u32,
    respawn_at: Option<Instant>,
    /// This worker was forked to replace the (retiring) worker at that index; when it says
    /// READY, that one is told to leave.
    replacing: Option<usize>,
    /// A replacement for this (retiring) worker has been forked.
    replaced: bool,
}

pub struct Supervisor {
    cfg: Config,
    region: Region,
    handler: LoadedHandler,
    /// `None` once draining: no new nginx workers.
    listener: Option<OwnedFd>,
    /// Set by SIGUSR2 (a newer generation of this pool took over): serve the nginx workers
    /// still attached, stop once the last one has gone and nothing is in flight.
    draining: Option<Instant>,
    signals: SignalFd,
    lifeline: Option<OwnedFd>,
    /// Accepted sockets that have not said Hello yet.
    pending: Vec<OwnedFd>,
    conns: Vec<Option<NginxConn>>,
    workers: Vec<WorkerSlot>,
    run_as: Option<(Uid, Gid)>,
    me: Pid,
    /// A process died since the slots and arena were last found whole: it may have taken a slot
    /// or a chunk with it, which is returned at the next idle moment.
    maybe_lost: bool,
    /// The watcher this poold started when its watchdog died (see `watchdog::adopt`).
    watcher: Option<Pid>,
}

enum Source {
    Signals,
    Listener,
    Lifeline,
    Pending(usize),
    Conn(usize),
    Worker(usize),
}

impl Supervisor {
    /// Builds the region, loads nothing yet: `handler` was loaded by the caller, before forking.
    pub fn new(
        cfg: Config,
        handler: LoadedHandler,
        lifeline: Option<OwnedFd>,
    ) -> io::Result<Supervisor> {
        let mask = sys::handled_signals();
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        let run_as = match (&cfg.user, Uid::effective().is_root()) {
            (Some(u), true) => Some(sys::lookup_user(u, cfg.group.as_deref())?),
            _ => None,
        };
        let region = Region::create(&cfg.name, cfg.geometry(), std::process::id())?;
        let listener = sys::listen_seqpacket(&cfg.socket).map_err(|e| {
            io::Error::new(e.kind(), format!("socket {}: {e}", cfg.socket.display()))
        })?;
        // Only the nginx workers' user may connect (and root).
        std::fs::set_permissions(
            &cfg.socket,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        if let Some((uid, gid)) = run_as {
            nix::unistd::chown(&cfg.socket, Some(uid), Some(gid))?;
        }
        let conns = (0..cfg.max_conns).map(|_| None).collect();
        // One entry per region worker slot: `workers` run, the others take replacements.
        let workers = (0..cfg.geometry().max_workers)
            .map(|_| WorkerSlot::default())
            .collect();
        Ok(Supervisor {
            cfg,
            region,
            handler,
            listener: Some(listener),
            draining: None,
            signals,
            lifeline,
            pending: Vec::new(),
            conns,
            workers,
            run_as,
            me: nix::unistd::getpid(),
            maybe_lost: false,
            watcher: None,
        })
    }

    /// Runs until told to stop; then stops the workers and removes the socket.
    pub fn run(mut self) -> io::Result<()> {
        for i in 0..self.cfg.workers as usize {
            self.spawn(i)?;
        }
        let g = self.region.geometry();
        log!(
            "notice",
            "started: handler {}, {} workers, {} slots, arena {} x {} bytes, socket {}",
            self.cfg.handler,
            self.cfg.workers,
            g.slots,
            g.chunks,
            g.chunk_size,
            self.cfg.socket.display()
        );
        loop {
            let (ready, timeout_hit) = self.wait()?;
            if timeout_hit {
                self.enforce_deadlines();
                self.respawn_due()?;
            }
            for src in ready {
                match src {
                    Source::Signals => {
                        if self.on_signals()? {
                            return self.stop();
                        }
                    }
                    Source::Lifeline => {
                        log!("notice", "nginx master is gone; stopping");
                        return self.stop();
                    }
                    Source::Listener => self.accept_all(),
                    Source::Pending(i) => self.on_hello(i),
                    Source::Conn(i) => self.on_conn_readable(i),
                    Source::Worker(i) => self.on_worker_message(i)?,
                }
            }
            if self.maybe_lost {
                self.return_lost();
            }
            if let Some(since) = self.draining {
                let attached = self.conns.iter().flatten().count();
                let in_flight = self
                    .region
                    .header()
                    .stats
                    .slots_in_use
                    .load(Ordering::Relaxed);
                if attached == 0 && in_flight == 0 {
                    log!(
                        "notice",
                        "drained: the last nginx worker of the old generation is gone; stopping"
                    );
                    return self.stop();
                }
                if since.elapsed() >= DRAIN_LIMIT {
                    log!("warn", "still {attached} nginx workers and {in_flight} requests after draining for {DRAIN_LIMIT:?}; stopping");
                    return self.stop();
                }
            }
            self.pending.retain(|fd| fd.as_raw_fd() >= 0);
        }
    }

    /// Polls everything; returns what is readable (highest pending index first, so removal by
    /// index stays valid) and whether the respawn timer expired.
    fn wait(&self) -> io::Result<(Vec<Source>, bool)> {
        let mut sources = vec![Source::Signals];
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if let Some(l) = &self.listener {
            sources.push(Source::Listener);
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        if let Some(l) = &self.lifeline {
            sources.push(Source::Lifeline);
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        for (i, p) in self.pending.iter().enumerate().rev() {
            sources.push(Source::Pending(i));
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        for (i, w) in self.workers.iter().enumerate() {
            if let Some(c) = &w.control {
                sources.push(Source::Worker(i));
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
        }
        for (i, c) in self.conns.iter().enumerate() {
            if let Some(c) = c {
                sources.push(Source::Conn(i));
                fds.push(PollFd::new(c.sock.as_fd(), PollFlags::POLLIN));
            }
        }
        let next_respawn = self.workers.iter().filter_map(|w| w.respawn_at).min();
        let busy = self
            .region
            .header()
            .stats
            .slots_in_use
            .load(Ordering::Relaxed)
            > 0;
        let tick = if busy { DEADLINE_TICK } else { IDLE_TICK };
        // Deadlines: the pool's, and per request (`pool_timeout`) which any busy pool may have;
        // and a look for lost chunks until the pool has been idle once since a death.
        let next_tick =
            (busy || self.cfg.timeout.is_some() || self.draining.is_some() || self.maybe_lost)
                .then(|| Instant::now() + tick);
        let next_wake = match (next_respawn, next_tick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = match next_wake {
            Some(at) => {
                // Rounded up: waking a millisecond early would find nothing due and wait again.
                let us = at.saturating_duration_since(Instant::now()).as_micros();
                let ms = us.div_ceil(1000).min(60_000) as u16;
                PollTimeout::from(ms)
            }
            None => PollTimeout::NONE,
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready = fds
            .iter()
            .zip(sources)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, s)| s)
            .collect();
        let due = next_wake.is_some_and(|at| at <= Instant::now());
        Ok((ready, due))
    }

    /// Forks pool worker `i`.
    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        let me = self.me;
        // The entry is reset before the fork: the child writes its own state (Idle) at once,
        // and must not be overwritten.
        if let Some(e) = self.region.worker(i as u32) {
            e.state
                .store(WorkerState::Starting as u32, Ordering::Relaxed);
            e.current.store(0, Ordering::Relaxed);
            e.served.store(0, Ordering::Relaxed);
            e.retire_now.store(0, Ordering::Relaxed);
            e.started_ms
                .store(ngx_pool_channel::sys::monotonic_ms(), Ordering::Relaxed);
        }
        let pid = {
            let region = &self.region;
            let handler = &self.handler;
            let conns = &self.conns;
            let run_as = self.run_as;
            let spin = self.cfg.spin;
            let max_rss = self.cfg.max_rss;
            // Jitter: N plus up to 10%, different per fork, so workers do not retire together.
            let max_requests = self.cfg.max_requests.map(|n| {
                let seed = (std::process::id() as u64)
                    ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ ngx_pool_channel::sys::monotonic_ms().wrapping_mul(0xBF58_476D_1CE4_E5B9);
                n + seed % (n / 10 + 1)
            });
            sys::fork_child(|| {
                // Its own process group: whatever the handler forks is killed with it.
                let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
                let mut table = ConnFds::new();
                for (ci, c) in conns.iter().enumerate() {
                    if let Some(c) = c {
                        if let Ok(fd) = c.eventfd.try_clone() {
                            table.insert(ci as u32, c.gen, fd);
                        }
                    }
                }
                let mut keep: Vec<RawFd> = table.fds().map(|fd| fd.as_raw_fd()).collect();
                keep.push(theirs.as_raw_fd());
                sys::close_all_except(&keep);
                if let Some((uid, gid)) = run_as {
                    if let Err(e) = sys::drop_privileges(uid, gid) {
                        log!(
                            "alert",
                            "worker {}: cannot drop privileges: {e}",
                            std::process::id()
                        );
                        std::process::exit(1);
                    }
                }
                sys::child_defaults(me);
                // `theirs` is kept open above; the duplicate below is what the worker owns.
                let control = theirs.try_clone().unwrap_or_else(|_| std::process::exit(1));
                Worker {
                    region,
                    handler,
                    index: i as u32,
                    pid: std::process::id(),
                    waker: std::cell::RefCell::new(crate::worker::Waker {
                        control,
                        conns: table,
                    }),
                    spin: ngx_pool_channel::spin::Spin::adaptive(spin),
                    max_requests,
                    max_rss,
                    scratch: Default::default(),
                }
                .run()
            })?
        };
        drop(theirs);
        if let Some(e) = self.region.worker(i as u32) {
            e.pid.store(pid.as_raw() as u32, Ordering::Relaxed);
        }
        if self.workers[i].started.is_some() {
            self.region
                .header()
                .stats
                .respawns
                .fetch_add(1, Ordering::Relaxed);
        }
        let w = &mut self.workers[i];
        w.pid = Some(pid);
        w.control = Some(ours);
        w.started = Some(Instant::now());
        w.respawn_at = None;
        Ok(())
    }

    /// SIGTERM for a worker whose request ran past the timeout, SIGKILL if it is still there
    /// after the grace period. Its request is answered 504 when it is reaped.
    fn enforce_deadlines(&mut self) {
        let now_ms = ngx_pool_channel::sys::monotonic_ms();
        for i in 0..self.workers.len() {
            let Some(pid) = self.workers[i].pid else {
                continue;
            };
            if let Some(since) = self.workers[i].killed_for_timeout {
                if since.elapsed() >= DEADLINE_GRACE {
                    log!(
                        "error",
                        "pool worker {pid} ignored SIGTERM for {:?}; SIGKILL",
                        DEADLINE_GRACE
                    );
                    let _ = kill(pid, Signal::SIGKILL);
                }
                continue;
            }
            let Some((id, started, own)) = slot::running_since(&self.region, i as u32) else {
                continue;
            };
            let pool = self.cfg.timeout.map(|t| t.as_millis() as u64);
            let (limit, whose) = match (own, pool) {
                (Some(o), Some(p)) if o < p => (o, "request's pool_timeout"),
                (_, Some(p)) => (p, "pool's timeout"),
                (Some(o), None) => (o, "request's pool_timeout"),
                (None, None) => continue,
            };
            let elapsed = now_ms.saturating_sub(started);
            if elapsed > limit {
                log!(
                    "error",
                    "pool worker {pid} has run the request in slot {} for {elapsed} ms, past the {whose} of {limit} ms; SIGTERM",
                    id.index
                );
                let _ = kill(pid, Signal::SIGTERM);
                self.workers[i].killed_for_timeout = Some(Instant::now());
            }
        }
    }

    fn respawn_due(&mut self) -> io::Result<()> {
        let now = Instant::now();
        for i in 0..self.workers.len() {
            if self.workers[i].pid.is_none() && self.workers[i].respawn_at.is_some_and(|t| t <= now)
            {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// Returns true when poold should stop.
    /// A new generation of the pool took over the name: accept no more nginx workers (the socket
    /// goes), serve those attached until they leave.
    fn drain(&mut self) {
        if self.draining.is_some() {
            return;
        }
        self.listener = None;
        let _ = std::fs::remove_file(&self.cfg.socket);
        self.draining = Some(Instant::now());
        log!(
            "notice",
            "draining: a new generation serves new nginx workers; {} old ones still attached",
            self.conns.iter().flatten().count()
        );
    }

    fn on_signals(&mut self) -> io::Result<bool> {
        let mut stop = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap()?,
                Ok(Signal::SIGHUP) => log!(
                    "notice",
                    "SIGHUP ignored (the pool is configured from nginx.conf)"
                ),
                Ok(Signal::SIGUSR2) => self.drain(),
                // Our watchdog died (its death signal): a watcher takes its place.
                Ok(Signal::SIGUSR1) => {
                    log!(
                        "alert",
                        "the watchdog is gone; starting a watcher in its place"
                    );
                    self.start_watcher();
                }
                Ok(s) => {
                    log!("notice", "{s} received; stopping");
                    stop = true;
                }
                Err(_) => {}
            }
        }
        Ok(stop)
    }

    /// A pool worker wrote on its control socket: READY (it is up) or RETIRING (it reached
    /// max_requests/max_rss and waits for a replacement before leaving).
    fn on_worker_message(&mut self, i: usize) -> io::Result<()> {
        loop {
            let Some(sock) = self.workers[i].control.as_ref() else {
                return Ok(());
            };
            let frame = match recv_frame(sock, MsgFlags::MSG_DONTWAIT) {
                Ok(Some((frame, _))) => frame,
                // End of file or nothing more: its exit is handled when it is reaped.
                _ => return Ok(()),
            };
            match frame.kind {
                READY => {
                    if let Some(old) = self.workers[i].replacing.take() {
                        log!(
                            "info",
                            "pool worker {} is ready; worker {} retires",
                            self.workers[i].pid.map_or(0, |p| p.as_raw()),
                            self.workers[old].pid.map_or(0, |p| p.as_raw())
                        );
                        slot::tell_retire(&self.region, old as u32);
                    }
                }
                RETIRING if !self.workers[i].replaced => {
                    let spare = (0..self.workers.len()).find(|&j| {
                        let w = &self.workers[j];
                        j != i && w.pid.is_none() && w.respawn_at.is_none() && w.replacing.is_none()
                    });
                    match spare {
                        Some(j) => {
                            log!(
                                "info",
                                "pool worker {:?} is retiring; forking its replacement",
                                self.workers[i].pid.map(|p| p.as_raw())
                            );
                            self.workers[i].replaced = true;
                            self.workers[j].replacing = Some(i);
                            self.spawn(j)?;
                        }
                        None => log!(
                            "warn",
                            "no spare worker slot to replace retiring worker {:?} ahead; it leaves first",
                            self.workers[i].pid
                        ),
                    }
                }
                _ => {}
            }
        }
    }

    fn reap(&mut self) -> io::Result<()> {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Ok(s) => s,
                Err(e) => return Err(e.into()),
            };
            let Some(pid) = status.pid() else { continue };
            if self.watcher == Some(pid) {
                log!("alert", "the watcher {pid} is gone; starting another");
                self.watcher = None;
                self.start_watcher();
                continue;
            }
            let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
                continue;
            };
            self.on_worker_exit(i, status);
        }
    }

    /// Starts a watcher: this program again, with this poold's own arguments (less the start-up
    /// report, long closed) and `--watch-pid`, in the pool's process group, so the nginx master
    /// reaches it. Only in managed mode (an external poold has whatever runs it).
    fn start_watcher(&mut self) {
        if self.lifeline.is_none() || self.draining.is_some() {
            return;
        }
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut it = std::env::args_os().skip(1);
        while let Some(a) = it.next() {
            if a == "--ready-fd" || a == "--watch-pid" {
                it.next();
                continue;
            }
            args.push(a);
        }
        let me = self.me.as_raw().to_string();
        // std's spawn resets the signal mask and dispositions in the child; only the lifeline
        // (and stdio) lack close-on-exec, so the watcher holds nothing else of ours.
        match std::env::current_exe().and_then(|exe| {
            std::process::Command::new(exe)
                .args(&args)
                .args(["--watch-pid", &me])
                .stdin(std::process::Stdio::null())
                .spawn()
        }) {
            Ok(child) => self.watcher = Some(Pid::from_raw(child.id() as i32)),
            Err(e) => log!(
                "alert",
                "cannot start a watcher: {e}; the pool runs unwatched"
            ),
        }
    }

    fn on_worker_exit(&mut self, i: usize, status: WaitStatus) {
        let how = match status {
            WaitStatus::Exited(_, code) => format!("exited with code {code}"),
            WaitStatus::Signaled(_, sig, core) => {
                format!(
                    "killed by {sig}{}",
                    if core { " (core dumped)" } else { "" }
                )
            }
            other => format!("{other:?}"),
        };
        let pid = self.workers[i].pid.take().map_or(0, |p| p.as_raw());
        // Anything the handler forked dies with the worker (the group outlives its leader).
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        self.region
            .header()
            .stats
            .worker_exits
            .fetch_add(1, Ordering::Relaxed);
        self.workers[i].control = None;
        if let Some(e) = self.region.worker(i as u32) {
            e.state.store(WorkerState::Exited as u32, Ordering::Relaxed);
        }
        // A replacement forked for this worker (it was retiring) takes its place whatever way
        // it left; a replacement still on its way no longer has anyone to relieve.
        let was_replaced = std::mem::take(&mut self.workers[i].replaced);
        for w in self.workers.iter_mut() {
            if w.replacing == Some(i) {
                w.replacing = None;
            }
        }
        if let WaitStatus::Exited(_, crate::worker::EXIT_RECYCLE) = status {
            self.region
                .header()
                .stats
                .recycles
                .fetch_add(1, Ordering::Relaxed);
            let served = self
                .region
                .worker(i as u32)
                .map_or(0, |e| e.served.load(Ordering::Relaxed));
            let w = &mut self.workers[i];
            w.quick_deaths = 0;
            if was_replaced {
                // Its replacement was forked before it left; this slot stays free.
                log!("notice", "pool worker {pid} retired after {served} requests (max_requests/max_rss); its replacement already serves");
                if let Some(e) = self.region.worker(i as u32) {
                    e.pid.store(0, Ordering::Relaxed);
                }
            } else {
                log!("notice", "pool worker {pid} retired after {served} requests (max_requests/max_rss); replacing it");
                w.respawn_at = Some(Instant::now());
            }
            return;
        }
        let reason = if self.workers[i].killed_for_timeout.take().is_some() {
            FailReason::Timeout
        } else {
            FailReason::WorkerDied
        };
        self.maybe_lost = true;
        match slot::reclaim_worker(&self.region, i as u32, reason) {
            Some((id, Handover::Deliver { .. })) => log!(
                "error",
                "pool worker {pid} {how} while running a request (slot {}); it gets 502",
                id.index
            ),
            _ => log!("warn", "pool worker {pid} {how}"),
        }
        // The dead worker may have set a connection's wake-up flag and died before writing its
        // eventfd, which would leave that nginx worker deaf to every later completion; after a
        // death every attached nginx worker is woken unconditionally (it finds what changed).
        self.wake_all();
        if was_replaced {
            if let Some(e) = self.region.worker(i as u32) {
                e.pid.store(0, Ordering::Relaxed);
            }
            return;
        }
        let w = &mut self.workers[i];
        let quick =
            reason != FailReason::Timeout && w.started.is_some_and(|t| t.elapsed() < QUICK_DEATH);
        w.quick_deaths = if quick { w.quick_deaths + 1 } else { 0 };
        let delay = if w.quick_deaths <= 1 {
            Duration::ZERO
        } else {
            (Duration::from_millis(100) * 2u32.pow(w.quick_deaths.min(10) - 2)).min(MAX_BACKOFF)
        };
        if !delay.is_zero() {
            log!(
                "warn",
                "pool worker slot {i} keeps dying; respawn in {} ms",
                delay.as_millis()
            );
        }
        w.respawn_at = Some(Instant::now() + delay);
    }

    fn wake_all(&self) {
        for c in self.conns.iter().flatten() {
            let _ = nix::unistd::write(c.eventfd.as_fd(), &1u64.to_ne_bytes());
        }
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match sys::accept(listener) {
                Ok(Some(fd)) => self.pending.push(fd),
                Ok(None) => return,
                Err(e) => {
                    log!("error", "accept on {}: {e}", self.cfg.socket.display());
                    return;
                }
            }
        }
    }

    /// An accepted socket has something: its Hello (or end of file).
    fn on_hello(&mut self, i: usize) {
        let sock = self.pending.swap_remove(i);
        let (frame, fd) = match recv_frame(&sock, MsgFlags::MSG_DONTWAIT) {
            Ok(Some((f, Some(fd)))) if f.kind == handshake::HELLO => (f, fd),
            Ok(None) => return,
            Ok(Some(_)) => {
                log!(
                    "warn",
                    "a client of {} sent no valid hello; closed",
                    self.cfg.socket.display()
                );
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                self.pending.push(sock);
                return;
            }
            Err(e) => {
                log!("warn", "hello: {e}");
                return;
            }
        };
        let refuse = |status: u32| {
            let _ = send_frame(
                &sock,
                Frame::new(handshake::WELCOME, status, 0, 0),
                None::<&OwnedFd>,
            );
        };
        if frame.a != LAYOUT_VERSION {
            log!(
                "error",
                "nginx worker {} speaks layout version {}, poold speaks {LAYOUT_VERSION}: rebuild the module and poold together",
                frame.b,
                frame.a
            );
            return refuse(handshake::WELCOME_BAD_VERSION);
        }
        let Some(index) = self.conns.iter().position(Option::is_none) else {
            log!(
                "error",
                "more than {} nginx workers attached; raise --max-conns",
                self.cfg.max_conns
            );
            return refuse(handshake::WELCOME_FULL);
        };
        let Some(gen) = slot::open_conn(&self.region, index as u32, frame.b) else {
            return;
        };
        // The pool workers must hold the eventfd before any request of this nginx worker exists.
        for w in &self.workers {
            if let Some(ctl) = &w.control {
                let _ = send_frame(
                    ctl,
                    Frame::new(handshake::CONN_FD, index as u32, gen, 0),
                    Some(&fd),
                );
            }
        }
        let welcome = Frame::new(handshake::WELCOME, handshake::WELCOME_OK, index as u32, gen);
        if let Err(e) = send_frame(&sock, welcome, Some(self.region.fd())) {
            log!("warn", "welcome to nginx worker {}: {e}", frame.b);
            slot::close_conn(&self.region, index as u32);
            return;
        }
        self.conns[index] = Some(NginxConn {
            sock,
            gen,
            pid: frame.b,
            eventfd: fd,
        });
    }

    /// An attached nginx worker's socket is readable: it only ever closes (it died or exited).
    fn on_conn_readable(&mut self, i: usize) {
        let Some(c) = &self.conns[i] else { return };
        match recv_frame(&c.sock, MsgFlags::MSG_DONTWAIT) {
            Ok(Some(_)) => return,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return,
            _ => {}
        }
        let c = self.conns[i].take().expect("checked above");
        slot::close_conn(&self.region, i as u32);
        let n = slot::reclaim_conn(&self.region, i as u32, c.gen);
        self.maybe_lost = true;
        if n > 0 {
            log!(
                "warn",
                "nginx worker {} detached with {n} requests in flight; reclaimed",
                c.pid
            );
        }
    }

    /// Returns the slots and chunks a dead process took with it, if the pool is idle now
    /// (otherwise a later turn of the loop tries again).
    fn return_lost(&mut self) {
        match scavenge::return_lost(&self.region) {
            Ok(n) => {
                self.maybe_lost = false;
                if n.slots + n.chunks > 0 {
                    log!(
                        "notice",
                        "returned {} request slot(s) and {} arena chunk(s) that a process killed mid-operation held",
                        n.slots,
                        n.chunks
                    );
                }
            }
            Err(NotNow::Busy | NotNow::Moved) => {}
            Err(NotNow::Corrupt) => {
                self.maybe_lost = false;
                log!(
                    "error",
                    "a free list in shared memory is corrupt; lost slots and chunks are not returned"
                );
            }
        }
    }

    /// Stops every worker (TERM, then KILL after a grace period) and removes the socket.
    fn stop(mut self) -> io::Result<()> {
        let _ = std::fs::remove_file(&self.cfg.socket);
        for w in &self.workers {
            if let Some(pid) = w.pid {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
        let groups: Vec<Pid> = self.workers.iter().filter_map(|w| w.pid).collect();
        let deadline = Instant::now() + STOP_GRACE;
        while self.workers.iter().any(|w| w.pid.is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                for w in &self.workers {
                    if let Some(pid) = w.pid {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                }
            }
            let ms = left.as_millis().clamp(10, 1000) as u16;
            let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(ms));
            while let Ok(Some(_)) = self.signals.read_signal() {}
            loop {
                match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(s) => {
                        if let Some(w) = self
                            .workers
                            .iter_mut()
                            .find(|w| w.pid == s.pid() && s.pid().is_some())
                        {
                            w.pid = None;
                        }
                    }
                }
            }
        }
        for g in groups {
            let _ = nix::sys::signal::killpg(g, Signal::SIGKILL);
        }
        log!("notice", "stopped");
        Ok(())
    }
}
