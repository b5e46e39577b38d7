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
//!
//! What needs root is done here (`duties.rs`), never in poold, which drops root for good before
//! it loads the pool's code: the watchdog binds the pool's socket before it forks each poold
//! (which inherits it), makes it again if it is removed, removes it when the pool stops or
//! drains, and passes the error log on after a rotation. A second root process, the spare
//! (`spare.rs`), takes the watchdog's place if it is killed.

use crate::cgroup::PoolCgroup;
use crate::config::Config;
use crate::log;
use crate::reaper;
use ngx_pool_channel::socket_file::SocketFile;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

mod duties;
pub(crate) mod interpreter;
mod spare;

pub use duties::{ERROR_LOG, LISTENER};

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

/// What a poold the watchdog forked starts with.
pub struct Handoff {
    /// The start-up report (see `--ready-fd`): the first poold only.
    pub ready: Option<OwnedFd>,
    /// The pool's listening socket, bound by the watchdog.
    pub listener: OwnedFd,
    /// The file it is bound to.
    pub socket_file: Option<SocketFile>,
    /// poold's end of its control link: the watchdog sends a socket bound again and the error
    /// log reopened on it (frames [`LISTENER`], [`ERROR_LOG`]).
    pub control: Option<OwnedFd>,
}

/// The poold a watchdog keeps.
pub(crate) struct Kept {
    pid: Pid,
    /// Readable once poold has exited.
    pidfd: OwnedFd,
    /// We forked it (and reap it); a spare that took over follows one it did not fork.
    child: bool,
    /// The watchdog's end of poold's control link.
    link: OwnedFd,
}

/// In the watchdog: never returns. In each poold it starts: returns, and the caller goes on
/// to run the pool. `lifeline` is the descriptor the nginx master holds the other end of;
/// `ready` (the start-up report, see `--ready-fd`) goes to the first poold only, and the
/// watchdog keeps no copy, so the master reads end of file if that poold dies unreported.
pub fn run(cfg: &Config, lifeline: RawFd, ready: Option<OwnedFd>) -> Handoff {
    keep(cfg, lifeline, ready, None)
}

/// In a spare (`--spare-of`, `--spare-link`): waits until the watchdog is gone, then takes its
/// place, like [`run`].
pub fn stand_in(cfg: &Config, lifeline: RawFd, link: RawFd, watchdog: Pid) -> Handoff {
    let followed = spare::stand_by(cfg, lifeline, link, watchdog);
    keep(cfg, lifeline, None, Some((followed, watchdog)))
}

/// What a spare takes over from its watchdog: the poold it follows (with its socket file and
/// whether it drains), if that one still runs, and the dead watchdog's pid.
type TakenOver = (Option<(Kept, Option<SocketFile>, bool)>, Pid);

/// The watchdog's loop: keeps the poold a spare took over, or starts one.
fn keep(
    cfg: &Config,
    lifeline: RawFd,
    mut ready: Option<OwnedFd>,
    taken_over: Option<TakenOver>,
) -> Handoff {
    let Some(signals) = signal_fd(&[
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
        Signal::SIGUSR2,
    ]) else {
        // No watchdog then: the pool runs directly.
        return match taken_over {
            Some(_) => std::process::exit(1),
            None => unwatched(cfg, ready),
        };
    };
    let me = nix::unistd::getpid();
    reaper::become_subreaper();
    let (mut kept, socket_file, mut draining, cgroup) = match taken_over {
        Some((followed, watchdog)) => {
            let cgroup = PoolCgroup::take_over(&cfg.pool.name, watchdog.as_raw() as u32);
            match followed {
                Some((k, socket, draining)) => (Some(k), socket, draining, cgroup),
                None => {
                    // What the dead poold left there must not run beside the next one.
                    end_pool(cgroup.as_ref(), None);
                    (None, None, false, cgroup.or_else(|| pool_cgroup(cfg)))
                }
            }
        }
        None => (None, None, false, pool_cgroup(cfg)),
    };
    let mut duties = duties::Duties::new(cfg, socket_file);
    let mut spare = spare::Spare::none();
    let mut delay = Duration::ZERO;
    loop {
        let started = Instant::now();
        let k = match kept.take() {
            Some(k) => k,
            None => match start(cfg, &mut duties, cgroup.as_ref(), me, &mut ready) {
                Ok(Started::Poold(k)) => k,
                Ok(Started::InChild(handoff)) => {
                    drop(signals);
                    return handoff;
                }
                Err(e) => {
                    // The master's start-up wait ends now (end of file), not at its limit.
                    drop(ready.take());
                    delay = (delay * 2).clamp(Duration::from_secs(1), MAX_DELAY);
                    log!(
                        "alert",
                        "watchdog cannot start poold: {e}; trying again in {} s",
                        delay.as_secs()
                    );
                    if pause(delay, &signals, lifeline) {
                        finish(&mut duties, cgroup, &mut spare, 1);
                    }
                    continue;
                }
            },
        };
        // Only the child reports its start: our copy closes now, before the spare is started.
        drop(ready.take());
        spare.ensure();
        spare.tell(&k, duties.socket_file());
        match guard(
            &k,
            &signals,
            lifeline,
            &mut duties,
            &mut spare,
            &mut draining,
        ) {
            Watched::Stop(code) => finish(&mut duties, cgroup, &mut spare, code),
            Watched::Died(how) => {
                // poold exits 0 only when told to stop (SIGTERM, its nginx master gone): the
                // same news reaches us a moment later (nginx's quit signals both), and is a
                // stop, not a death to recover from.
                if how == "exited with code 0" && pause(STOP_NEWS_WAIT, &signals, lifeline) {
                    finish(&mut duties, cgroup, &mut spare, 0);
                }
                // Nothing of the dead poold's may run beside the next one (a worker's
                // child holding a port, a daemon it started, a worker that ignored its
                // death signal for a moment). Not the spare.
                end_pool(cgroup.as_ref(), spare.pid());
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
                    LOADED_ONCE.store(true, std::sync::atomic::Ordering::Relaxed);
                    0
                });
                let child = k.pid;
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
                    finish(&mut duties, cgroup, &mut spare, 0);
                }
            }
        }
    }
}

enum Started {
    Poold(Kept),
    InChild(Handoff),
}

/// Binds the socket and forks the next poold: this program, or for a `wsgi:` pool the app's
/// own interpreter (`interpreter.rs`).
fn start(
    cfg: &Config,
    duties: &mut duties::Duties,
    cgroup: Option<&PoolCgroup>,
    me: Pid,
    ready: &mut Option<OwnedFd>,
) -> std::io::Result<Started> {
    let python = interpreter::for_pool(cfg)?;
    let listener = duties.bind()?;
    // Non-blocking: poold (the pool's code) may stop reading its end, and the watchdog must
    // never wait on it (a frame that does not fit is dropped, and logged).
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // SAFETY: the watchdog is single-threaded (it never starts a thread); the child only moves
    // itself into the cgroup, resets its signal state and returns to `main`.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            drop(ours);
            // Into the pool's cgroup before anything else (still root: `main` drops it
            // later), so that all poold forks is in it from the start.
            if let Some(cg) = cgroup {
                if let Err(e) = cg.enter() {
                    log!(
                        "alert",
                        "cannot move poold into {}: {e}; its processes are ended by subreapers only",
                        cg.path().display()
                    );
                }
            }
            reaper::become_subreaper();
            if nix::unistd::getppid() != me {
                std::process::exit(1);
            }
            let _ = nix::sys::signal::sigprocmask(
                SigmaskHow::SIG_SETMASK,
                Some(&SigSet::empty()),
                None,
            );
            if let Some(python) = python {
                // Root goes before the interpreter starts (its site.py and the venv's .pth
                // files are code of the app's).
                if let Err(e) = crate::run::drop_root(cfg) {
                    log!("emerg", "{e}");
                    std::process::exit(1);
                }
                let e = interpreter::exec(cfg, &python, &listener, Some(&theirs), ready.as_ref());
                log!("alert", "cannot start {}: {e}", python.display());
                std::process::exit(crate::run::EXIT_LOAD_FAILED);
            }
            Ok(Started::InChild(Handoff {
                ready: ready.take(),
                listener,
                socket_file: duties.socket_file().cloned(),
                control: Some(theirs),
            }))
        }
        ForkResult::Parent { child } => {
            let pidfd = pidfd(child).ok_or_else(std::io::Error::last_os_error)?;
            Ok(Started::Poold(Kept {
                pid: child,
                pidfd,
                child: true,
                link: ours,
            }))
        }
    }
}

/// Where the watchdog cannot run (no signalfd): the pool runs in this process, unwatched.
fn unwatched(cfg: &Config, ready: Option<OwnedFd>) -> Handoff {
    let mut duties = duties::Duties::new(cfg, None);
    match duties.bind() {
        Ok(listener) => Handoff {
            ready,
            listener,
            socket_file: duties.socket_file().cloned(),
            control: None,
        },
        Err(e) => {
            log!("emerg", "socket {}: {e}", cfg.socket.display());
            std::process::exit(1);
        }
    }
}

/// The pool has stopped: ends what is left of it, removes its socket file and cgroup, ends
/// the spare, and exits.
fn finish(
    duties: &mut duties::Duties,
    cgroup: Option<PoolCgroup>,
    spare: &mut spare::Spare,
    code: i32,
) -> ! {
    spare.end();
    end_pool(cgroup.as_ref(), None);
    duties.remove_socket();
    if let Some(cg) = cgroup {
        cg.remove();
    }
    std::process::exit(code)
}

/// `signals` blocked and read from a signalfd instead; `None` (and nothing blocked) if that
/// cannot be done.
fn signal_fd(signals: &[Signal]) -> Option<SignalFd> {
    let mask = SigSet::from_iter(signals.iter().copied());
    mask.thread_block().ok()?;
    let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK);
    if fd.is_err() {
        let _ = mask.thread_unblock();
    }
    fd.ok()
}

/// Set once a poold of this watchdog got past loading its handler: `--successor` (a reload's
/// new generation, with the previous one serving) no longer holds for the next ones.
static LOADED_ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a poold of this watchdog (or of the one before it, for a spare) loaded its handler.
pub fn loaded_once() -> bool {
    // Relaxed: one thread; a flag read after the fork that follows its store.
    LOADED_ONCE.load(std::sync::atomic::Ordering::Relaxed)
}

/// This process's arguments less those that were its own alone (the start-up report, a spare's
/// link, `--successor` once it no longer holds): what it starts its spare, or a poold in the
/// app's interpreter, with.
fn passed_on_args() -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        if a == "--ready-fd" || a == "--spare-of" || a == "--spare-link" {
            it.next();
            continue;
        }
        if a == "--successor" && loaded_once() {
            continue;
        }
        args.push(a);
    }
    args
}

/// A pidfd for `pid` (readable once it has exited); `None` if it is gone.
fn pidfd(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor (or -1), which we
    // own from here on.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: the descriptor pidfd_open just returned.
    (raw >= 0).then(|| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as RawFd) })
}

/// The pool's cgroup, with its limits set; none (and why, in the log) where cgroup v2 is not
/// writable or turned off.
fn pool_cgroup(cfg: &Config) -> Option<PoolCgroup> {
    let pool = &cfg.pool;
    match PoolCgroup::create(&pool.name) {
        Ok(cg) => {
            log!(
                "info",
                "the pool's processes live in cgroup {}",
                cg.path().display()
            );
            cg.apply_limits(pool);
            Some(cg)
        }
        Err(why) => {
            log!(
                "info",
                "no cgroup for the pool ({why}): the watchdog and poold end its orphans as subreapers"
            );
            crate::cgroup::warn_limits_unapplied(pool, &why);
            None
        }
    }
}

/// Ends every process of the pool but the watchdog: the whole cgroup, then whatever was
/// re-parented to the watchdog (the only way without a cgroup).
fn end_pool(cgroup: Option<&PoolCgroup>, spare: Option<Pid>) {
    if let Some(cg) = cgroup {
        cg.kill();
    }
    let n = reaper::end_children(spare, LEFTOVER_GRACE, LEFTOVER_GIVE_UP);
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

/// Waits for poold to die or for a reason to stop, doing the duties as they fall due. SIGUSR2
/// (a new generation of the pool took over) is passed on, the socket file goes, and poold's exit
/// after draining is then the end, not a death. A spare that died is replaced.
fn guard(
    k: &Kept,
    signals: &SignalFd,
    lifeline: RawFd,
    duties: &mut duties::Duties,
    spare: &mut spare::Spare,
    draining: &mut bool,
) -> Watched {
    loop {
        let timeout = duties.timeout();
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(fd(lifeline), PollFlags::POLLIN),
            PollFd::new(k.pidfd.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(w) = duties.watch_fd() {
            fds.push(PollFd::new(w, PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, timeout);
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (lifeline_closed, poold_gone, dir_event) = (ready(1), ready(2), ready(3));
        drop(fds);
        if lifeline_closed {
            // The master is gone: poold sees the same end of file and stops; wait for it.
            return Watched::Stop(stop(k, None));
        }
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => {}
                Ok(Signal::SIGUSR2) => {
                    *draining = true;
                    duties.remove_socket();
                    spare.tell(k, None);
                    let _ = kill(k.pid, Signal::SIGUSR2);
                }
                Ok(sig) => return Watched::Stop(stop(k, Some(sig))),
                Err(_) => {}
            }
        }
        if dir_event {
            duties.on_dir_event();
        }
        // As a subreaper, the watchdog may have other children (what the pool's code orphaned
        // while no poold was there to adopt it, its spare): reaped here too, or they would
        // stay zombies.
        let status = reaper::reap_all(k.child.then_some(k.pid));
        if status.is_none() && !poold_gone {
            if duties.due(&k.link) | spare.ensure() {
                spare.tell(k, duties.socket_file());
            }
            continue;
        }
        if *draining {
            return Watched::Stop(0);
        }
        let status = match status {
            Some(s) => Some(s),
            None if k.child => waitpid(k.pid, None).ok(),
            None => None,
        };
        return Watched::Died(match status {
            Some(WaitStatus::Exited(_, code)) if code == crate::supervisor::EXIT_REGION_CORRUPT => {
                "stopped: its region was written over".into()
            }
            Some(WaitStatus::Exited(_, code)) => format!("exited with code {code}"),
            Some(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
            _ => "is gone".into(),
        });
    }
}

/// Passes `sig` on (if any) and waits for poold to stop, killing it after STOP_WAIT.
fn stop(k: &Kept, sig: Option<Signal>) -> i32 {
    if let Some(sig) = sig {
        let _ = kill(k.pid, sig);
    }
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(k.pidfd.as_fd(), PollFlags::POLLIN)];
        let ms = left.as_millis().clamp(1, 10_000) as u16;
        let _ = poll(&mut fds, PollTimeout::from(ms));
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            if k.child {
                let _ = waitpid(k.pid, Some(WaitPidFlag::WNOHANG));
            }
            return 0;
        }
        if Instant::now() >= deadline {
            log!(
                "alert",
                "poold {} did not stop in {STOP_WAIT:?}; SIGKILL",
                k.pid
            );
            let _ = kill(k.pid, Signal::SIGKILL);
            if k.child {
                let _ = waitpid(k.pid, None);
            }
            return 1;
        }
    }
}

/// Sleeps `delay` unless told to stop meanwhile; returns true if so.
/// How long a poold that exited 0 may precede the stop order it obeyed.
const STOP_NEWS_WAIT: Duration = Duration::from_secs(1);

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
