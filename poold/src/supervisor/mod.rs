//! poold's main loop: one `poll` over everything, then the work it found; the nginx workers'
//! connections are in `conns.rs`, the child processes in `children.rs`.
//!
//! Single-threaded on purpose: it forks. One `poll` covers the signalfd (SIGCHLD and stop
//! signals), the listening socket, every attached nginx worker's socket (its lifeline: end of
//! file means it died), the pipe that is the pool workers' stdout and stderr (`output.rs`)
//! and, in managed mode, the lifeline from the nginx master.

use crate::config::Config;
use crate::handler::LoadedHandler;
use crate::log;
use crate::sys;
use crate::worker::{ConnFds, Worker};
use ngx_pool_channel::handshake::{self, recv_frame, send_frame, Frame, READY, RETIRING};
use ngx_pool_channel::layout::LAYOUT_VERSION;
use ngx_pool_channel::scavenge::{self, NotNow};
use ngx_pool_channel::slot::{self, FailReason, Handover, WorkerState};
use ngx_pool_channel::socket_file::SocketFile;
use ngx_pool_channel::Region;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Pid, Uid};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod children;
mod conns;
mod output;
mod peers;
mod size;
pub(crate) mod socket;

/// A worker that dies sooner than this after its start counts as a crash loop.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long stopping waits for workers to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a worker past its deadline has between SIGTERM and SIGKILL.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);
/// How long past a request's deadline a worker running several at once (ASGI) has to cancel it
/// before poold stops the worker.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
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
    /// Told to leave because the pool shrinks (`workers=MIN-MAX`): not replaced.
    shrinking: bool,
    /// Since when it has served nothing (dynamic size), and its count when last looked at.
    idle_since: Option<Instant>,
    last_served: u64,
}

pub struct Supervisor {
    cfg: Config,
    region: Region,
    handler: LoadedHandler,
    /// `None` once draining: no new nginx workers.
    listener: Option<OwnedFd>,
    /// The socket file, kept by this poold when it has no watchdog (an external one: the
    /// watchdog keeps it otherwise, see `watchdog::duties`).
    socket: Option<socket::SocketKeeper>,
    /// The link on which the watchdog passes a socket it bound again, and the error log after
    /// a rotation (managed mode).
    control: Option<OwnedFd>,
    /// Set by SIGUSR2 (a newer generation of this pool took over): serve the nginx workers
    /// still attached, stop once the last one has gone and nothing is in flight.
    draining: Option<Instant>,
    signals: SignalFd,
    lifeline: Option<OwnedFd>,
    /// Accepted sockets that have not said Hello yet (their user is allowed: `peers`).
    pending: Vec<peers::Pending>,
    /// What a peer must be to attach (`peers`).
    peers: peers::Admission,
    conns: Vec<Option<NginxConn>>,
    workers: Vec<WorkerSlot>,
    me: Pid,
    /// A process died since the slots and arena were last found whole: it may have taken a slot
    /// or a chunk with it, which is returned at the next idle moment.
    maybe_lost: bool,
    /// A worker of this poold said READY: its handler's `worker_init` works.
    served_once: bool,
    /// An nginx worker reported the region corrupt (its pid): a new generation is due.
    corrupt_report: Option<u32>,
    /// When the pool last grew (`workers=MIN-MAX`): at most one new worker per GROW_INTERVAL.
    last_grow: Option<Instant>,
    /// The pool workers' stdout and stderr, passed on to the error log at `log_rate=`.
    output: output::WorkerOutput,
}

enum Source {
    Signals,
    Listener,
    SocketDir,
    Control,
    Lifeline,
    Output,
    Pending(usize),
    Conn(usize),
    Worker(usize),
}

/// poold's exit status after it found its region written over and stopped: start the next
/// generation now (EX_TEMPFAIL).
pub const EXIT_REGION_CORRUPT: i32 = 75;

/// The pool's socket as poold gets it: bound already (by the watchdog, or by
/// [`Supervisor::bind`] before root was dropped).
pub struct Socket {
    pub listener: OwnedFd,
    pub file: Option<SocketFile>,
    /// The watchdog's link (managed mode); `None`: poold keeps the socket file itself.
    pub control: Option<OwnedFd>,
}

impl Supervisor {
    /// An external poold's socket, bound before root is dropped (owned by `--user` then).
    pub fn bind(cfg: &Config) -> io::Result<(OwnedFd, Option<SocketFile>)> {
        let owner = match (&cfg.user, Uid::effective().is_root()) {
            (Some(u), true) => Some(sys::lookup_user(u, cfg.group.as_deref())?),
            _ => None,
        };
        let mut keeper = socket::SocketKeeper::new(cfg, owner, None);
        let listener = keeper.bind()?;
        Ok((listener, keeper.file().cloned()))
    }

    /// Builds the region, loads nothing yet: `handler` was loaded by the caller, before forking.
    pub fn new(
        cfg: Config,
        handler: LoadedHandler,
        lifeline: Option<OwnedFd>,
        socket: Socket,
    ) -> io::Result<Supervisor> {
        let mask = sys::handled_signals();
        mask.thread_block()?;
        // What the pool's code orphans is re-parented to us, to be ended when the pool stops
        // (the watchdog made a managed poold one already; this is for an external one).
        crate::reaper::become_subreaper();
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        let peers = peers::Admission::new(&cfg)?;
        let region = Region::create(&cfg.pool.name, cfg.geometry(), std::process::id())?;
        let keeper = socket
            .control
            .is_none()
            .then(|| socket::SocketKeeper::new(&cfg, None, socket.file));
        let output = output::WorkerOutput::new(cfg.pool.log_rate)?;
        let conns = (0..cfg.max_conns).map(|_| None).collect();
        // One entry per region worker slot: `workers` run, the others take replacements.
        let workers = (0..cfg.processes_max())
            .map(|_| WorkerSlot::default())
            .collect();
        Ok(Supervisor {
            cfg,
            region,
            handler,
            listener: Some(socket.listener),
            socket: keeper,
            control: socket.control,
            draining: None,
            signals,
            lifeline,
            pending: Vec::new(),
            peers,
            conns,
            workers,
            me: nix::unistd::getpid(),
            maybe_lost: false,
            served_once: false,
            corrupt_report: None,
            last_grow: None,
            output,
        })
    }

    /// Runs until told to stop; then stops the workers and removes the socket.
    pub fn run(mut self) -> io::Result<()> {
        // A step of workers now, the rest as due respawns, a step per turn of the loop: nginx's
        // workers attach, and the first workers serve, while a large pool is still forking
        // (4096 workers take tens of seconds to fork).
        let first = self.cfg.pool.min_workers.unwrap_or(self.cfg.pool.workers) as usize;
        let now = Instant::now();
        for i in 0..first {
            if i < children::START_STEP {
                self.spawn(i)?;
            } else {
                self.workers[i].respawn_at = Some(now);
            }
        }
        let g = self.region.geometry();
        log!(
            "notice",
            "started: handler {}, {} workers, {} slots, arena {} x {} bytes, socket {}",
            self.cfg.pool.handler,
            self.cfg.pool.workers,
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
                self.resize()?;
                if let Some(l) = self.socket.as_mut().and_then(|k| k.rebind_if_due()) {
                    self.listener = Some(l);
                }
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
                    Source::Output => self
                        .output
                        .drain(&self.region.header().stats.log_lines_dropped),
                    Source::SocketDir => {
                        if let Some(k) = &mut self.socket {
                            k.on_dir_event();
                        }
                    }
                    Source::Control => self.on_control(),
                    Source::Pending(i) => self.on_hello(i),
                    Source::Conn(i) => self.on_conn_readable(i),
                    Source::Worker(i) => self.on_worker_message(i)?,
                }
            }
            // At every wake-up (an nginx worker's CORRUPT report is one): a region some process
            // wrote over cannot be trusted again; a fresh generation replaces it, as when poold
            // dies (the watchdog, or systemd, starts the next one at once).
            let corrupt = self.region.verify().err().or_else(|| {
                self.corrupt_report
                    .take()
                    .map(|pid| format!("nginx worker {pid} found it inconsistent"))
            });
            if let Some(why) = corrupt {
                log!(
                    "error",
                    "the pool's shared region was written over ({why}); stopping this generation for a new one with a fresh region"
                );
                self.stop()?;
                std::process::exit(EXIT_REGION_CORRUPT);
            }
            self.output
                .tick(&self.region.header().stats.log_lines_dropped);
            self.expire_pending();
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
        if let Some(w) = self.socket.as_ref().and_then(|k| k.watch_fd()) {
            sources.push(Source::SocketDir);
            fds.push(PollFd::new(w, PollFlags::POLLIN));
        }
        if let Some(c) = &self.control {
            sources.push(Source::Control);
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        if let Some(l) = &self.lifeline {
            sources.push(Source::Lifeline);
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        sources.push(Source::Output);
        fds.push(PollFd::new(
            self.output.read_end().as_fd(),
            PollFlags::POLLIN,
        ));
        for (i, p) in self.pending.iter().enumerate().rev() {
            sources.push(Source::Pending(i));
            fds.push(PollFd::new(p.sock.as_fd(), PollFlags::POLLIN));
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
        let tick = if self.cfg.pool.min_workers.is_some() {
            size::GROW_TICK
        } else if busy {
            DEADLINE_TICK
        } else {
            IDLE_TICK
        };
        // Deadlines: the pool's, and per request (`pool_timeout`) which any busy pool may have;
        // and a look for lost chunks until the pool has been idle once since a death.
        let next_tick = (busy
            || self.cfg.pool.timeout_ms.is_some()
            || self.cfg.pool.min_workers.is_some()
            || self.draining.is_some()
            || self.maybe_lost)
            .then(|| Instant::now() + tick);
        let next_wake = [
            next_respawn,
            next_tick,
            self.socket.as_ref().and_then(|k| k.due_at()),
            self.output.next_wake(),
            self.peers_next_wake(),
        ]
        .into_iter()
        .flatten()
        .min();
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

    /// Returns true when poold should stop.
    /// A new generation of the pool took over the name: accept no more nginx workers (the socket
    /// goes), serve those attached until they leave.
    fn drain(&mut self) {
        if self.draining.is_some() {
            return;
        }
        self.listener = None;
        self.remove_socket_file();
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
                Ok(Signal::SIGUSR1) => log!(
                    "notice",
                    "SIGUSR1 ignored (the watchdog passes the error log on after a rotation)"
                ),
                Ok(s) => {
                    log!("notice", "{s} received; stopping");
                    stop = true;
                }
                Err(_) => {}
            }
        }
        Ok(stop)
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

    /// Removes the socket file, if this poold keeps it and the path still names it.
    fn remove_socket_file(&mut self) {
        if let Some(k) = &mut self.socket {
            k.remove();
        }
    }

    /// The watchdog passed a descriptor on: a socket it bound again (the file was removed), or
    /// the error log it reopened after a rotation.
    fn on_control(&mut self) {
        use crate::watchdog::{ERROR_LOG, LISTENER};
        loop {
            match recv_frame(
                self.control.as_ref().map(|c| c.as_fd()).expect("polled"),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(Some((f, Some(fd)))) if f.kind == LISTENER => {
                    if self.draining.is_none() {
                        self.listener = Some(fd);
                    }
                }
                Ok(Some((f, Some(fd)))) if f.kind == ERROR_LOG => {
                    for out in [1, 2] {
                        let _ = nix::unistd::dup2(fd.as_raw_fd(), out);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    // The watchdog and its spare are gone: nothing restarts this poold now,
                    // which serves on until the nginx master stops it.
                    self.control = None;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Stops every worker (TERM, then KILL after a grace period) and removes the socket.
    fn stop(mut self) -> io::Result<()> {
        self.remove_socket_file();
        let groups: Vec<Pid> = self.workers.iter().filter_map(|w| w.pid).collect();
        for &pid in &groups {
            let _ = kill(pid, Signal::SIGTERM);
        }
        // And what the pool's code orphaned (re-parented to us, a subreaper): the same grace.
        for pid in crate::reaper::children() {
            if !groups.contains(&pid) {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
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
            // The workers' output too: one writing its last words must not wait on a full pipe.
            let mut fds = [
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.output.read_end().as_fd(), PollFlags::POLLIN),
            ];
            let _ = poll(&mut fds, PollTimeout::from(ms));
            while let Ok(Some(_)) = self.signals.read_signal() {}
            self.output
                .drain(&self.region.header().stats.log_lines_dropped);
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
        // Whatever is still there (it had the workers' grace; a setsid'd daemon escapes the
        // groups above) and what killing it re-parented to us.
        let ended = crate::reaper::end_children(None, Duration::ZERO, STOP_GRACE);
        if ended > 0 {
            log!(
                "notice",
                "ended {ended} process(es) the pool's code left behind"
            );
        }
        // The workers' last lines (and the count of those dropped) before poold's last.
        self.output
            .finish(&self.region.header().stats.log_lines_dropped);
        log!("notice", "stopped");
        Ok(())
    }
}
