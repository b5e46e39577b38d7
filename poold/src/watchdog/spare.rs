//! The watchdog's spare: a second root process that takes the watchdog's place if it is killed.
//!
//! poold runs as the pool's user and cannot start a root process, so the watchdog keeps one
//! ready: this program again (`--spare-of PID --spare-link FD`, the rest of the watchdog's
//! own command line), told over a socket pair which poold runs, with poold's control link and
//! which socket file it listens on. The spare waits (no CPU: one `poll`) on a pidfd of the
//! watchdog; when the watchdog is gone, it follows that poold as watchdog (`super::run`), starts
//! a spare of its own, and when poold dies, starts the next one. A spare that dies is replaced
//! by its watchdog. Both are in the pool's process group, so the nginx master's signals (stop,
//! drain) reach them both; both see the master's lifeline close.

use super::Kept;
use crate::config::Config;
use crate::log;
use ngx_pool_channel::handshake::{recv_frame, send_frame, Frame};
use ngx_pool_channel::socket_file::SocketFile;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// Which poold the watchdog keeps (its pid), with its control link attached.
const POOLD: [u8; 4] = *b"POLD";
/// Which socket file poold listens on (device and inode as two numbers each; all zero: none).
const SOCKET: [u8; 4] = *b"SOCK";

/// The watchdog's side of its spare.
pub(super) struct Spare {
    pid: Option<Pid>,
    link: Option<OwnedFd>,
    /// When a spare was last started: at most one start a second.
    started: Option<Instant>,
}

/// The least time between two starts of a spare (one that cannot start, or dies at once, is
/// tried again this late, never in a loop).
const RESTART_EVERY: Duration = Duration::from_secs(1);

impl Spare {
    pub(super) fn none() -> Spare {
        Spare {
            pid: None,
            link: None,
            started: None,
        }
    }

    pub(super) fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// Starts a spare if there is none (or it died); true if it did (it is to be told then).
    pub(super) fn ensure(&mut self) -> bool {
        if self.pid.is_some_and(|p| kill(p, None).is_ok()) {
            return false;
        }
        if self.started.is_some_and(|t| t.elapsed() < RESTART_EVERY) {
            return false;
        }
        self.started = Some(Instant::now());
        self.start();
        self.pid.is_some()
    }

    fn start(&mut self) {
        self.pid = None;
        self.link = None;
        // Both ends inheritable for a moment: the spare's is passed at exec, ours is made
        // close-on-exec at once (the watchdog is single-threaded: nothing forks meanwhile).
        let Ok((ours, theirs)) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK,
        ) else {
            log!(
                "alert",
                "cannot start the watchdog's spare: socketpair failed"
            );
            return;
        };
        let _ = nix::fcntl::fcntl(
            ours.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        let args = super::passed_on_args();
        let me = std::process::id().to_string();
        let link = theirs.as_raw_fd().to_string();
        // std's spawn resets the signal mask and dispositions in the child; only the lifeline,
        // the secret and this link lack close-on-exec, so the spare holds nothing else of ours.
        // The running binary itself, even if the file was replaced since (an upgrade, a rebuild):
        // its path would then name another program, or none.
        let spawned = std::process::Command::new("/proc/self/exe")
            .arg0(std::env::args_os().next().unwrap_or_default())
            .args(&args)
            .args(["--spare-of", &me, "--spare-link", &link])
            .stdin(std::process::Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => {
                self.pid = Some(Pid::from_raw(child.id() as i32));
                self.link = Some(ours);
            }
            Err(e) => log!(
                "alert",
                "cannot start the watchdog's spare: {e}; if the watchdog dies, nothing restarts poold"
            ),
        }
    }

    /// Tells the spare which poold it would follow.
    pub(super) fn tell(&self, kept: &Kept, socket: Option<&SocketFile>) {
        let Some(link) = &self.link else {
            return;
        };
        let pid = kept.pid.as_raw() as u32;
        let _ = send_frame(link, Frame::new(POOLD, pid, 0, 0), Some(kept.link.as_fd()));
        let (dev, ino) = socket.map_or((0, 0), SocketFile::id);
        let mut f = Frame::new(SOCKET, dev as u32, (dev >> 32) as u32, ino as u32);
        f.d = (ino >> 32) as u32;
        let _ = send_frame(link, f, None::<OwnedFd>);
    }

    /// Ends the spare (the pool stops: it must not take over).
    pub(super) fn end(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        self.link = None;
    }
}

/// In a spare: waits until its watchdog is gone, then returns what to follow: the poold the
/// watchdog last told of (with its control link and socket file), or `None` if there is none
/// to follow (start a new one). Exits when the pool is stopped meanwhile, or when it was
/// draining and nothing is left to drain.
pub(super) fn stand_by(
    cfg: &Config,
    lifeline: RawFd,
    link: RawFd,
    watchdog: Pid,
) -> Option<(Kept, Option<SocketFile>, bool)> {
    // SAFETY: the watchdog passed this descriptor by number (`--spare-link`), and nothing else
    // in this process owns it.
    let link = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(link) };
    let _ = nix::fcntl::fcntl(
        link.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let Some(signals) = super::signal_fd(&[
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR2,
    ]) else {
        std::process::exit(1);
    };
    // Its command line is the watchdog's: the name says which it is (in ps, top, /proc).
    let _ = nix::sys::prctl::set_name(c"poold spare");
    // Opened while the watchdog is still our parent, the pidfd is the watchdog's for sure.
    let watched = super::pidfd(watchdog).filter(|_| nix::unistd::getppid() == watchdog);
    // The poold the watchdog keeps: its pid, a pidfd opened as soon as we are told (while it
    // surely is that process: its pid cannot be another's before the watchdog reaps it), and
    // its control link.
    let mut poold: Option<(Pid, Option<OwnedFd>, OwnedFd)> = None;
    let mut socket: Option<SocketFile> = None;
    let mut draining = false;
    if let Some(watched) = &watched {
        loop {
            let mut fds = [
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(super::fd(lifeline), PollFlags::POLLIN),
                PollFd::new(watched.as_fd(), PollFlags::POLLIN),
                PollFd::new(link.as_fd(), PollFlags::POLLIN),
            ];
            let _ = poll(&mut fds, PollTimeout::NONE);
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                std::process::exit(0);
            }
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGUSR2) => draining = true,
                    // The pool's process group is being stopped: the watchdog got it too.
                    _ => std::process::exit(0),
                }
            }
            let mut link_closed = false;
            loop {
                match recv_frame(&link, MsgFlags::MSG_DONTWAIT) {
                    Ok(Some((f, fd))) if f.kind == POOLD => {
                        let pid = Pid::from_raw(f.a as i32);
                        poold = fd.map(|fd| (pid, super::pidfd(pid), fd));
                    }
                    Ok(Some((f, _))) if f.kind == SOCKET => {
                        let dev = u64::from(f.a) | u64::from(f.b) << 32;
                        let ino = u64::from(f.c) | u64::from(f.d) << 32;
                        socket = (dev, ino)
                            .ne(&(0, 0))
                            .then(|| SocketFile::with_id(&cfg.socket, (dev, ino)));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        link_closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if link_closed || fds[2].revents().is_some_and(|r| !r.is_empty()) {
                break;
            }
        }
    }
    let _ = nix::sys::prctl::set_name(c"poold");
    let me = std::process::id();
    let Some((pid, pidfd, control)) = poold else {
        if draining {
            std::process::exit(0);
        }
        log!(
            "alert",
            "the watchdog {watchdog} is gone; its spare {me} starts a new poold"
        );
        return None;
    };
    // Gone already if its pidfd is readable (or none could be opened: it was gone when told).
    let alive = pidfd.filter(|p| {
        let mut fds = [PollFd::new(p.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n == 0)
    });
    match alive {
        Some(pidfd) => {
            log!(
                "alert",
                "the watchdog {watchdog} is gone; its spare {me} watches poold {pid} in its place"
            );
            Some((
                Kept {
                    pid,
                    pidfd,
                    child: false,
                    link: control,
                },
                socket,
                draining,
            ))
        }
        None if draining => std::process::exit(0),
        None => {
            log!(
                "alert",
                "the watchdog {watchdog} and poold {pid} are gone; the spare {me} starts a new poold"
            );
            if let Some(s) = socket {
                s.remove_if_still_there();
            }
            None
        }
    }
}
