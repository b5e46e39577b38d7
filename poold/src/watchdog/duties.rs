//! What the watchdog does for poold because it needs root, which poold gave up before loading
//! the pool's code: binding the pool's socket (in a directory of root's, such as
//! `/run/ngx-pool`, owned by the pool's user once bound), making it again if it is removed
//! from under a serving poold (by hand, by a cleaner, or by another nginx master's poold that
//! bound the same path and stopped: an aborted binary upgrade), removing it when the pool
//! stops or drains, and reopening the error log after a rotation (a file root made, which a
//! pool's user of its own may not open). New descriptors reach poold on its control link.

use crate::config::Config;
use crate::log;
use crate::supervisor::socket::SocketKeeper;
use ngx_pool_channel::handshake::{send_frame, Frame};
use ngx_pool_channel::socket_file::SocketFile;
use nix::poll::PollTimeout;
use nix::unistd::Uid;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The frame that carries a listening socket bound again, on poold's control link.
pub const LISTENER: [u8; 4] = *b"LSTN";
/// The frame that carries the error log, reopened after a rotation.
pub const ERROR_LOG: [u8; 4] = *b"ELOG";

/// How often the error log is looked at for a rotation.
const LOG_LOOK: Duration = Duration::from_secs(1);

pub(super) struct Duties {
    socket: SocketKeeper,
    log_look_at: Instant,
}

impl Duties {
    /// `socket_file`: one bound already (a spare takes the pool over).
    pub(super) fn new(cfg: &Config, socket_file: Option<SocketFile>) -> Duties {
        // The pool's user owns the socket (and may then remove it by its own right too).
        let owner = match (&cfg.user, Uid::effective().is_root()) {
            (Some(u), true) => crate::sys::lookup_user(u, cfg.group.as_deref()).ok(),
            _ => None,
        };
        Duties {
            socket: SocketKeeper::new(cfg, owner, socket_file),
            log_look_at: Instant::now() + LOG_LOOK,
        }
    }

    /// Binds the pool's socket for the next poold.
    pub(super) fn bind(&mut self) -> io::Result<OwnedFd> {
        self.socket.bind()
    }

    pub(super) fn socket_file(&self) -> Option<&SocketFile> {
        self.socket.file()
    }

    /// Removes the socket file bound last, if the path still names it (the pool stops or drains).
    pub(super) fn remove_socket(&mut self) {
        self.socket.remove();
    }

    /// The inotify descriptor to poll, if the socket's directory is watched.
    pub(super) fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.socket.watch_fd()
    }

    pub(super) fn on_dir_event(&mut self) {
        self.socket.on_dir_event();
    }

    /// The longest a poll may wait before [`Duties::due`] has something to do.
    pub(super) fn timeout(&self) -> PollTimeout {
        let next = self
            .socket
            .due_at()
            .map_or(self.log_look_at, |r| r.min(self.log_look_at));
        let ms = next.saturating_duration_since(Instant::now()).as_millis();
        PollTimeout::from(ms.clamp(1, 60_000) as u16)
    }

    /// Does what is due: binds the socket again if it was removed (and passes it on), passes
    /// the error log on if it was rotated. `link` is poold's control link. True if the socket
    /// file changed.
    pub(super) fn due(&mut self, link: &OwnedFd) -> bool {
        let before = self.socket.file().cloned();
        if let Some(listener) = self.socket.rebind_if_due() {
            if let Err(e) = send_frame(link, Frame::new(LISTENER, 0, 0, 0), Some(listener)) {
                log!("alert", "cannot pass the socket made again to poold: {e}");
            }
        }
        if self.log_look_at <= Instant::now() {
            self.log_look_at = Instant::now() + LOG_LOOK;
            let before = stderr_id();
            log::reopen_if_rotated();
            if stderr_id() != before {
                if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
                    let _ = send_frame(link, Frame::new(ERROR_LOG, 0, 0, 0), Some(fd));
                }
            }
        }
        self.socket.file() != before.as_ref()
    }
}

/// Which file stderr is (device, inode).
fn stderr_id() -> Option<(u64, u64)> {
    let m = std::fs::metadata("/proc/self/fd/2").ok()?;
    Some((m.dev(), m.ino()))
}
