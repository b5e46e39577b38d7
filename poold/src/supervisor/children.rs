//! poold's children: forking pool workers, their messages, reaping them, deadlines and respawn
//! with backoff.

use super::*;

/// Workers forked in one turn of the supervisor's loop, at start and when many are due at
/// once: between steps it accepts nginx's workers and answers the pool workers.
pub(super) const START_STEP: usize = 16;

impl Supervisor {
    /// The region worker entries of pool worker `i`: one per request it runs at once.
    pub(super) fn lanes(&self, i: usize) -> std::ops::Range<u32> {
        let n = self.cfg.lanes();
        i as u32 * n..(i as u32 + 1) * n
    }

    /// The region entries of pool worker `i`'s lanes.
    pub(super) fn entries(
        &self,
        i: usize,
    ) -> impl Iterator<Item = &ngx_pool_channel::layout::WorkerEntry> + '_ {
        self.lanes(i).filter_map(|l| self.region.worker(l))
    }

    /// Tells pool worker `i` (every lane of it) that it may leave.
    pub(super) fn tell_retire(&self, i: usize) {
        for lane in self.lanes(i) {
            slot::tell_retire(self.region.pool_side(), lane);
        }
    }

    /// Forks pool worker `i`.
    pub(super) fn spawn(&mut self, i: usize) -> io::Result<()> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        let me = self.me;
        // The entry is reset before the fork: the child writes its own state (Idle) at once,
        // and must not be overwritten.
        for e in self.entries(i) {
            e.state
                .store(WorkerState::Starting as u32, Ordering::Relaxed);
            e.current.store(0, Ordering::Relaxed);
            e.served.store(0, Ordering::Relaxed);
            e.retire_now.store(0, Ordering::Relaxed);
            e.started_ms
                .store(ngx_pool_channel::sys::monotonic_ms(), Ordering::Relaxed);
        }
        let lanes = self.lanes(i);
        let pid = {
            let region = &self.region;
            let handler = &self.handler;
            let conns = &self.conns;
            let spin = self.cfg.spin();
            let max_rss = self.cfg.pool.max_rss;
            let timeout_ms = self.cfg.pool.timeout_ms;
            let pool_workers = self.cfg.pool.workers;
            let asgi = self.cfg.pool.is_asgi();
            let output = self.output.write_end();
            // Jitter: N plus up to 10%, different per fork, so workers do not retire together.
            let max_requests = self.cfg.pool.max_requests.map(u64::from).map(|n| {
                let seed = (std::process::id() as u64)
                    ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ ngx_pool_channel::sys::monotonic_ms().wrapping_mul(0xBF58_476D_1CE4_E5B9);
                n + seed % (n / 10 + 1)
            });
            // A runtime in the handler (CPython) quiesces across the fork; the child undoes it
            // in worker_init, this process in after_fork, whether the fork worked or not.
            handler.before_fork();
            let forked = sys::fork_child(|| {
                // Its own process group: whatever the handler forks is killed with it.
                let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
                // stdout and stderr are poold's pipe (`output.rs`), for this worker and all it
                // forks: what they write reaches the error log at `log_rate=`, through poold.
                // A worker that cannot have them exits (and is replaced) rather than write to the
                // file unlimited.
                for fd in [1, 2] {
                    if nix::unistd::dup2(output.as_raw_fd(), fd).is_err() {
                        std::process::exit(1);
                    }
                }
                crate::log::stdio_is_piped();
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
                sys::confine_worker();
                sys::child_defaults(me);
                crate::host::set_pool_workers(pool_workers);
                // `theirs` is kept open above; the duplicate below is what the worker owns.
                let control = theirs.try_clone().unwrap_or_else(|_| std::process::exit(1));
                let waker = crate::worker::Waker::new(control, table);
                // An ASGI worker runs on lanes even with one: its main thread takes the
                // stopping signals and closes WebSockets cleanly.
                if lanes.len() > 1 || asgi {
                    crate::lanes::Lanes {
                        region,
                        handler,
                        first: lanes.start,
                        count: lanes.len() as u32,
                        waker,
                        spin,
                        max_requests,
                        max_rss,
                        timeout_ms,
                    }
                    .run()
                }
                Worker {
                    region,
                    handler,
                    index: lanes.start,
                    pid: std::process::id(),
                    waker: std::cell::RefCell::new(waker),
                    spin: ngx_pool_channel::spin::Spin::adaptive(spin),
                    max_requests,
                    max_rss,
                    scratch: Default::default(),
                    timeout_ms,
                }
                .run()
            });
            handler.after_fork();
            forked?
        };
        drop(theirs);
        for e in self.entries(i) {
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
        w.shrinking = false;
        w.idle_since = None;
        w.last_served = 0;
        Ok(())
    }

    /// SIGTERM for a worker whose request ran past the timeout, SIGKILL if it is still there
    /// after the grace period. Its request is answered 504 when it is reaped.
    pub(super) fn enforce_deadlines(&mut self) {
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
            for lane in self.lanes(i) {
                if self.enforce_lane_deadline(i, pid, lane, now_ms) {
                    break;
                }
            }
        }
    }

    /// Deadlines of lane `lane` of worker `i` (process `pid`); true if it was told to stop.
    fn enforce_lane_deadline(&mut self, i: usize, pid: Pid, lane: u32, now_ms: u64) -> bool {
        if let Some((id, deadline)) = slot::running_task(&self.region, lane) {
            // A task is held to its request's deadline (moved to now when its caller gave
            // it up), not to a timeout of its own.
            if deadline != 0 && now_ms > deadline {
                log!(
                    "error",
                    "pool worker {pid} runs the fan-out task in slot {} past its request's deadline (or its caller gave it up); SIGTERM",
                    id.index
                );
                let _ = kill(pid, Signal::SIGTERM);
                self.workers[i].killed_for_timeout = Some(Instant::now());
                return true;
            }
            return false;
        }
        let Some((id, started, own)) = slot::running_since(&self.region, lane) else {
            return false;
        };
        if slot::state_of(&self.region, id) == Some(slot::SlotState::Abandoned) {
            // Its client went away: its fan-out tasks are stopped like at a deadline.
            let stopped = slot::stop_tasks_of(self.region.pool_side(), lane, pid.as_raw() as u32);
            if stopped > 0 {
                log!(
                    "notice",
                    "the client of the request pool worker {pid} runs went away: {stopped} of its fan-out tasks stopped"
                );
            }
        }
        if slot::is_open_tunnel(&self.region, id) {
            // An upgraded connection (a WebSocket) lasts as long as its client wants: no
            // deadline; its worker's event loop is watched through its other requests.
            return false;
        }
        let pool = self.cfg.pool.timeout_ms;
        let (limit, whose) = match (own, pool) {
            (Some(o), Some(p)) if o < p => (o, "request's pool_timeout"),
            (_, Some(p)) => (p, "pool's timeout"),
            (Some(o), None) => (o, "request's pool_timeout"),
            (None, None) => return false,
        };
        // A worker running several requests at once cancels one past its deadline itself and
        // goes on with the others; poold steps in only when it did not (its event loop is
        // stuck in synchronous code).
        let (limit_now, stuck) = if self.cfg.lanes() > 1 || self.cfg.pool.is_asgi() {
            (
                limit + CANCEL_GRACE.as_millis() as u64,
                " and it did not cancel it",
            )
        } else {
            (limit, "")
        };
        let elapsed = now_ms.saturating_sub(started);
        if elapsed > limit_now {
            log!(
                "error",
                "pool worker {pid} has run the request in slot {} for {elapsed} ms, past the {whose} of {limit} ms{stuck}; SIGTERM",
                id.index
            );
            let _ = kill(pid, Signal::SIGTERM);
            self.workers[i].killed_for_timeout = Some(Instant::now());
            return true;
        }
        false
    }

    pub(super) fn respawn_due(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let mut started = 0;
        for i in 0..self.workers.len() {
            if self.workers[i].pid.is_none() && self.workers[i].respawn_at.is_some_and(|t| t <= now)
            {
                self.spawn(i)?;
                started += 1;
                if started == START_STEP {
                    // The rest at the next turn, after what nginx asked meanwhile.
                    break;
                }
            }
        }
        Ok(())
    }

    /// A pool worker wrote on its control socket: READY (it is up) or RETIRING (it reached
    /// max_requests/max_rss and waits for a replacement before leaving).
    pub(super) fn on_worker_message(&mut self, i: usize) -> io::Result<()> {
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
                    self.served_once = true;
                    if let Some(old) = self.workers[i].replacing.take() {
                        log!(
                            "info",
                            "pool worker {} is ready; worker {} retires",
                            self.workers[i].pid.map_or(0, |p| p.as_raw()),
                            self.workers[old].pid.map_or(0, |p| p.as_raw())
                        );
                        self.tell_retire(old);
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

    pub(super) fn reap(&mut self) -> io::Result<()> {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Ok(s) => s,
                Err(e) => return Err(e.into()),
            };
            let Some(pid) = status.pid() else { continue };
            let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
                continue;
            };
            self.on_worker_exit(i, status);
        }
    }

    pub(super) fn on_worker_exit(&mut self, i: usize, status: WaitStatus) {
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
        if let (WaitStatus::Exited(_, crate::worker::EXIT_WORKER_INIT), false) =
            (status, self.served_once)
        {
            // No worker has ever started (an ASGI app's lifespan startup failed, an app
            // imported in each worker did not import): the pool does not start, as when its
            // handler does not load.
            if self.cfg.successor && !crate::watchdog::loaded_once() {
                log!("error", "the pool's first worker could not start (see above); this new generation does not start: the running one keeps serving with the previous settings");
            } else {
                log!("error", "the pool's first worker could not start (see above); the pool answers 503 and poold tries again with a growing delay");
            }
            for w in &self.workers {
                if let Some(pid) = w.pid {
                    let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                }
            }
            std::process::exit(crate::run::EXIT_LOAD_FAILED);
        }
        let pid = self.workers[i].pid.take().map_or(0, |p| p.as_raw());
        // Anything the handler forked dies with the worker (the group outlives its leader).
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        self.region
            .header()
            .stats
            .worker_exits
            .fetch_add(1, Ordering::Relaxed);
        self.workers[i].control = None;
        for e in self.entries(i) {
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
            let served: u64 = self
                .entries(i)
                .map(|e| e.served.load(Ordering::Relaxed))
                .sum();
            let w = &mut self.workers[i];
            w.quick_deaths = 0;
            if std::mem::take(&mut w.shrinking) {
                log!(
                    "notice",
                    "pool worker {pid} stopped after idle_timeout (the pool shrinks)"
                );
                for e in self.entries(i) {
                    e.pid.store(0, Ordering::Relaxed);
                }
                return;
            }
            if was_replaced {
                // Its replacement was forked before it left; this slot stays free.
                log!("notice", "pool worker {pid} retired after {served} requests (max_requests/max_rss); its replacement already serves");
                for e in self.entries(i) {
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
        let status = if reason == FailReason::Timeout {
            "504"
        } else {
            "502"
        };
        for lane in self.lanes(i) {
            match slot::reclaim_worker(self.region.pool_side(), lane, reason) {
                Some((id, Handover::Deliver { .. })) => log!(
                    "error",
                    "pool worker {pid} {how} while running a request (slot {}); it gets {status} (its connection is closed if the answer had begun: a stream, a WebSocket)",
                    id.index
                ),
                Some((id, Handover::ToCaller)) => log!(
                    "error",
                    "pool worker {pid} {how} while running a fan-out task (slot {}); its caller is told the worker was lost",
                    id.index
                ),
                _ if lane == self.lanes(i).start => log!("warn", "pool worker {pid} {how}"),
                _ => {}
            }
            // Its own fan-out: queued tasks dropped, running ones' answers discarded.
            let dropped = slot::reclaim_tasks(self.region.pool_side(), lane, pid as u32);
            if dropped > 0 {
                log!(
                    "warn",
                    "pool worker {pid} left {dropped} fan-out tasks of its own; they are cancelled"
                );
            }
        }
        // The dead worker may have set a connection's wake-up flag and died before writing its
        // eventfd, which would leave that nginx worker deaf to every later completion; after a
        // death every attached nginx worker is woken unconditionally (it finds what changed).
        self.wake_all();
        if was_replaced {
            for e in self.entries(i) {
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
}
