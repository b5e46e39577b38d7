//! Managed mode's watchdog: keeps the pool's poold running, starting a fresh one when it dies.
//!
//! The nginx master cannot reap a poold it started before daemonising, and it has no periodic
//! hook to restart one, so (as Phusion Passenger's watchdog does for its agents) the process the
//! module starts is this small watchdog, and the pool's poold is its child. When that poold dies
//! (SIGKILL, OOM kill, a bug), the watchdog starts a new one at once (with a growing delay if it
//! keeps dying within a second); the new poold creates a fresh region and socket and the nginx
//! workers, which retry every 20 ms, attach to it. The watchdog holds no shared memory and no
//! handler state. It stops when told (TERM, INT, QUIT: passed on to poold, which stops its
//! workers) or when the nginx master goes away (the lifeline closes, for both of them).
//!
//! No process outlives its pool: the watchdog keeps the pool's processes in a cgroup of their
//! own (`cgroup.rs`), killed whole when a poold dies (before the next one starts) and when the
//! pool stops; and it is a child subreaper (`reaper.rs`), ending whatever a dead poold left
//! behind, which is all there is where no cgroup v2 is writable.

use crate::cgroup::PoolCgroup;
use crate::log;
use crate::reaper;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// A poold that lived less than this counts as dying at start: the next start waits longer.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(10);
/// How long poold gets to stop its workers when told to, before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// What a dead poold left behind (without a cgroup: re-parented to the watchdog) gets this long
/// between SIGTERM and SIGKILL: short, as the pool answers 503 meanwhile (the pool's workers
/// die with poold at once, by their death signal).
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);
/// The longest the watchdog keeps killing what keeps being re-parented to it (a fork bomb).
const LEFTOVER_GIVE_UP: Duration = Duration::from_secs(5);

/// In the watchdog: never returns. In each poold it starts: returns, and the caller goes on
/// to run the pool. `lifeline` is the descriptor the nginx master holds the other end of;
/// `ready` (the start-up report, see `--ready-fd`) goes to the first poold only, and the
/// watchdog keeps no copy, so the master reads end of file if that poold dies unreported.
pub fn run(lifeline: RawFd, mut ready: Option<OwnedFd>) -> Option<OwnedFd> {
    let mask = SigSet::from_iter([
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
        Signal::SIGUSR2,
    ]);
    if mask.thread_block().is_err() {
        return ready; // no watchdog then; run the pool directly
    }
    let Ok(signals) = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    else {
        let _ = mask.thread_unblock();
        return ready;
    };
    let me = nix::unistd::getpid();
    reaper::become_subreaper();
    let cgroup = pool_cgroup();
    let mut delay = Duration::ZERO;
    loop {
        let started = Instant::now();
        // SAFETY: poold is single-threaded here (before any pool state exists); the child only
        // resets its signal state and returns to `main`.
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => {
                drop(signals);
                // Into the pool's cgroup before anything else (still root: `main` drops it
                // later), so that all poold forks is in it from the start.
                if let Some(cg) = &cgroup {
                    if let Err(e) = cg.enter() {
                        log!(
                            "alert",
                            "cannot move poold into {}: {e}; its processes are ended by subreapers only",
                            cg.path().display()
                        );
                    }
                }
                reaper::become_subreaper();
                // If the watchdog dies, poold is told (SIGUSR1) and starts a watcher of its own
                // (`adopt`), so that one SIGKILL never leaves a pool that nothing restarts.
                let _ = nix::sys::prctl::set_pdeathsig(Some(Signal::SIGUSR1));
                if nix::unistd::getppid() != me {
                    std::process::exit(1);
                }
                let _ = nix::sys::signal::sigprocmask(
                    SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                );
                return ready;
            }
            Ok(ForkResult::Parent { child }) => {
                match watch(child, &signals, ready.take(), lifeline) {
                    Watched::Stop(code) => {
                        end_pool(cgroup.as_ref());
                        if let Some(cg) = cgroup {
                            cg.remove();
                        }
                        std::process::exit(code)
                    }
                    Watched::Died(how) => {
                        // Nothing of the dead poold's may run beside the next one (a worker's
                        // child holding a port, a daemon it started, a worker that ignored its
                        // death signal for a moment).
                        end_pool(cgroup.as_ref());
                        delay = if started.elapsed() < QUICK_DEATH {
                            (delay * 2).clamp(Duration::from_millis(100), MAX_DELAY)
                        } else {
                            Duration::ZERO
                        };
                        let when = if delay.is_zero() {
                            String::new()
                        } else {
                            format!(" in {} ms", delay.as_millis())
                        };
                        // The next poold inherits the count (fork, no exec): a handler's long
                        // error (a traceback) is logged whole only the first time.
                        crate::host::set_failed_loads(if how == LOAD_FAILED {
                            crate::host::failed_loads() + 1
                        } else {
                            0
                        });
                        if how == LOAD_FAILED {
                            // Its own line said why; this one says what happens next.
                            log!(
                                "notice",
                                "poold {child} could not load its handler; trying again{when}"
                            );
                        } else {
                            log!("alert", "poold {child} {how}; starting a new one{when}");
                        }
                        if pause(delay, &signals, lifeline) {
                            if let Some(cg) = cgroup {
                                cg.remove();
                            }
                            std::process::exit(0);
                        }
                    }
                }
            }
            Err(e) => {
                log!("alert", "watchdog cannot fork poold: {e}; retrying in 1 s");
                if pause(Duration::from_secs(1), &signals, lifeline) {
                    if let Some(cg) = cgroup {
                        cg.remove();
                    }
                    std::process::exit(1);
                }
            }
        }
    }
}

/// A watcher started by a poold whose watchdog died: follows `poold` (not its child: a pidfd)
/// and exits with it when the pool is stopped (TERM, INT, QUIT to the pool's process group, or
/// the master's lifeline closing); if poold dies on its own, becomes the pool's watchdog and
/// starts a new one. In that new poold it returns, like [`run`].
pub fn adopt(lifeline: RawFd, poold: Pid) -> Option<OwnedFd> {
    let mask = SigSet::from_iter([
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR2,
    ]);
    let signals = mask.thread_block().ok().and_then(|()| {
        SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok()
    });
    let Some(signals) = signals else {
        std::process::exit(1);
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor (or -1), which we
    // own from here on.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, poold.as_raw(), 0) };
    if raw >= 0 {
        // SAFETY: the descriptor pidfd_open just returned.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as RawFd) };
        let mut draining = false;
        loop {
            let mut fds = [
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(fd(lifeline), PollFlags::POLLIN),
                PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            ];
            let _ = poll(&mut fds, PollTimeout::NONE);
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                std::process::exit(0);
            }
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGUSR2) => draining = true,
                    // The pool's process group is being stopped: poold got the same signal.
                    _ => std::process::exit(0),
                }
            }
            if fds[2].revents().is_some_and(|r| !r.is_empty()) {
                if draining {
                    std::process::exit(0);
                }
                break;
            }
        }
    }
    log!("alert", "poold {poold} is gone; starting a new one");
    drop(signals);
    let _ = mask.thread_unblock();
    run(lifeline, None)
}

/// The pool's cgroup, with its limits set; none (and why, in the log) where cgroup v2 is not
/// writable or turned off.
fn pool_cgroup() -> Option<PoolCgroup> {
    // The pool's settings are this process's own arguments (the watchdog is the poold the
    // nginx master started, before it forks): read again here rather than passed down, as
    // `main` already parsed them once without error.
    let pool = match crate::config::parse(std::env::args().skip(1)) {
        Ok(crate::config::Command::Run(cfg)) => cfg.pool,
        _ => ngx_pool_conf::PoolSettings::new("pool"),
    };
    match PoolCgroup::create(&pool.name) {
        Ok(cg) => {
            log!(
                "info",
                "the pool's processes live in cgroup {}",
                cg.path().display()
            );
            cg.apply_limits(&pool);
            Some(cg)
        }
        Err(why) => {
            log!(
                "info",
                "no cgroup for the pool ({why}): the watchdog and poold end its orphans as subreapers"
            );
            crate::cgroup::warn_limits_unapplied(&pool, &why);
            None
        }
    }
}

/// Ends every process of the pool but the watchdog: the whole cgroup, then whatever was
/// re-parented to the watchdog (the only way without a cgroup).
fn end_pool(cgroup: Option<&PoolCgroup>) {
    if let Some(cg) = cgroup {
        cg.kill();
    }
    let n = reaper::end_children(None, LEFTOVER_GRACE, LEFTOVER_GIVE_UP);
    if n > 0 {
        log!(
            "notice",
            "ended {n} process(es) the pool's code left behind (re-parented to the watchdog)"
        );
    }
}

/// How `watch` describes a poold that exited because its handler failed to load (status 78).
const LOAD_FAILED: &str = "exited with code 78";

enum Watched {
    /// Told to stop (or the master is gone) and poold has stopped: exit with this code.
    Stop(i32),
    /// poold died on its own.
    Died(String),
}

fn fd(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the lifeline descriptor stays open for the watchdog's whole life (it is never
    // closed in this process).
    unsafe { BorrowedFd::borrow_raw(raw) }
}

/// Waits for `child` to die or for a reason to stop. SIGUSR2 (a new generation of the pool
/// took over) is passed on, and poold's exit after draining is then the end, not a death.
fn watch(child: Pid, signals: &SignalFd, ready: Option<OwnedFd>, lifeline: RawFd) -> Watched {
    // Only the child reports its start: our copy closes now.
    drop(ready);
    let mut draining = false;
    loop {
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(fd(lifeline), PollFlags::POLLIN),
        ];
        let _ = poll(&mut fds, PollTimeout::NONE);
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            // The master is gone: poold sees the same end of file and stops; wait for it.
            return Watched::Stop(stop(child, None));
        }
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => {}
                Ok(Signal::SIGUSR2) => {
                    draining = true;
                    let _ = kill(child, Signal::SIGUSR2);
                }
                Ok(sig) => return Watched::Stop(stop(child, Some(sig))),
                Err(_) => {}
            }
        }
        // As a subreaper, the watchdog may have other children (what the pool's code orphaned
        // while no poold was there to adopt it): reaped here too, or they would stay zombies.
        let status = reaper::reap_all(Some(child));
        if draining {
            if status.is_some() || kill(child, None).is_err() {
                return Watched::Stop(0);
            }
            continue;
        }
        match status {
            Some(WaitStatus::Exited(_, code)) if code == crate::supervisor::EXIT_REGION_CORRUPT => {
                return Watched::Died("stopped: its region was written over".into())
            }
            Some(WaitStatus::Exited(_, code)) => {
                return Watched::Died(format!("exited with code {code}"))
            }
            Some(WaitStatus::Signaled(_, sig, _)) => {
                return Watched::Died(format!("was killed by {sig}"))
            }
            _ => {}
        }
    }
}

/// Passes `sig` on (if any) and waits for poold to stop, killing it after STOP_WAIT.
fn stop(child: Pid, sig: Option<Signal>) -> i32 {
    if let Some(sig) = sig {
        let _ = kill(child, sig);
    }
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            _ => return 0,
        }
        if Instant::now() >= deadline {
            log!(
                "alert",
                "poold {child} did not stop in {STOP_WAIT:?}; SIGKILL"
            );
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            return 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sleeps `delay` unless told to stop meanwhile; returns true if so.
fn pause(delay: Duration, signals: &SignalFd, lifeline: RawFd) -> bool {
    let until = Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(fd(lifeline), PollFlags::POLLIN),
        ];
        let ms = left.as_millis().clamp(1, 60_000) as u16;
        let _ = poll(&mut fds, PollTimeout::from(ms));
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return true;
        }
        while let Ok(Some(info)) = signals.read_signal() {
            if !matches!(Signal::try_from(info.ssi_signo as i32), Ok(Signal::SIGCHLD)) {
                return true;
            }
        }
    }
}
