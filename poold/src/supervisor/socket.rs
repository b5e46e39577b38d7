//! The pool's socket file: bound at start, made again if it disappears from under a serving
//! poold (deleted by hand or by a cleaner, or removed by another nginx master's poold that
//! bound the same path and stopped: an aborted binary upgrade), so that nginx workers started
//! later can still attach, and removed when the pool stops or drains. A path that names
//! another poold's socket is left to it. In managed mode the watchdog keeps it (binding needs
//! root where the directory is root's, `/run/ngx-pool`); an external poold keeps its own.

use crate::config::Config;
use crate::log;
use crate::sys;
use ngx_pool_channel::socket_file::SocketFile;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::unistd::{Gid, Uid};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long the path must stay empty before it is bound again: a poold starting on the same
/// path removes the old file and binds its own within milliseconds, and must win.
const REBIND_AFTER: Duration = Duration::from_secs(1);

pub struct SocketKeeper {
    path: PathBuf,
    /// Anyone may connect (0666): the allow list is then the check (`peers.rs`).
    open: bool,
    /// The pool's user, who owns the socket.
    owner: Option<(Uid, Gid)>,
    /// The file bound last, the only one removed.
    file: Option<SocketFile>,
    /// The socket's directory, watched for the file's removal.
    watch: Option<Inotify>,
    /// The file is to be made again when removed (not after [`SocketKeeper::remove`]: the pool
    /// stops or drains).
    keep: bool,
    rebind_at: Option<Instant>,
}

impl SocketKeeper {
    /// For `cfg`'s socket, owned by `owner` once bound; `file` is one bound already (by
    /// another keeper: a watchdog taking a pool over from the one before).
    pub fn new(cfg: &Config, owner: Option<(Uid, Gid)>, file: Option<SocketFile>) -> Self {
        SocketKeeper {
            path: cfg.socket.clone(),
            open: super::peers::Admission::open_socket(cfg),
            owner,
            file,
            watch: watch(cfg),
            keep: true,
            rebind_at: None,
        }
    }

    /// Binds the socket, reachable by its owner only (and root), or by everyone with `--allow`,
    /// whose list is then what admits a peer (`peers.rs`: checked as each connection is
    /// accepted, and a refused one never holds anything).
    pub fn bind(&mut self) -> io::Result<OwnedFd> {
        let at =
            |e: io::Error| io::Error::new(e.kind(), format!("socket {}: {e}", self.path.display()));
        if Uid::effective().is_root() {
            only_root_writes(&self.path).map_err(at)?;
        }
        let mode = if self.open { 0o666 } else { 0o600 };
        let listener = sys::listen_seqpacket(&self.path, mode, self.owner).map_err(at)?;
        self.file = SocketFile::identify(&self.path);
        self.keep = true;
        self.rebind_at = None;
        Ok(listener)
    }

    pub fn file(&self) -> Option<&SocketFile> {
        self.file.as_ref()
    }

    /// Removes the file bound last, if the path still names it; no file is made again after.
    pub fn remove(&mut self) {
        if let Some(f) = self.file.take() {
            f.remove_if_still_there();
        }
        self.keep = false;
        self.rebind_at = None;
    }

    /// The inotify descriptor to poll, if the directory is watched.
    pub fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.watch.as_ref().map(|w| w.as_fd())
    }

    /// When [`SocketKeeper::rebind_if_due`] has something to do.
    pub fn due_at(&self) -> Option<Instant> {
        self.rebind_at
    }

    /// The directory changed: if our file went, look again in REBIND_AFTER.
    pub fn on_dir_event(&mut self) {
        let Some(watch) = &self.watch else {
            return;
        };
        let name = self.path.file_name();
        let ours = watch
            .read_events()
            .unwrap_or_default()
            .iter()
            .any(|e| e.name.as_deref() == name);
        if ours && self.keep && self.rebind_at.is_none() {
            self.rebind_at = Some(Instant::now() + REBIND_AFTER);
        }
    }

    /// When the look is due and the path is still empty: binds it again and returns the new
    /// listener (the old one stays with the nginx workers attached through it).
    pub fn rebind_if_due(&mut self) -> Option<OwnedFd> {
        if self.rebind_at.is_none_or(|at| at > Instant::now()) {
            return None;
        }
        self.rebind_at = None;
        if SocketFile::identify(&self.path).is_some() {
            // Another poold's file is there now (a new nginx master's, during a binary
            // upgrade): it serves the nginx workers that attach from now on; once it goes, ours
            // is made again (an aborted upgrade).
            return None;
        }
        match self.bind() {
            Ok(listener) => {
                log!(
                    "notice",
                    "the socket file {} was removed; made it again",
                    self.path.display()
                );
                Some(listener)
            }
            Err(e) => {
                log!(
                    "alert",
                    "the socket file {} was removed and cannot be made again: {e}",
                    self.path.display()
                );
                None
            }
        }
    }
}

/// Root binds the socket and gives it to the pool's user: in a directory that someone else may
/// write (the pool's user, say), a file renamed into the socket's place between the two steps
/// would be given away instead. Such a directory is refused, with the reason.
fn only_root_writes(socket: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = socket.parent().unwrap_or(std::path::Path::new("."));
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "its directory {} may be written by others than root (owner uid {}, mode {:o}), where a pool's code could have root's chown of the socket land on another file: choose a directory only root may write, such as /run/ngx-pool",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Watches the socket's directory for the file's removal; `None` (logged) where inotify is not
/// available: the socket is then not made again.
fn watch(cfg: &Config) -> Option<Inotify> {
    let dir = cfg.socket.parent()?;
    let watch = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).and_then(|w| {
        w.add_watch(dir, AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)?;
        Ok(w)
    });
    match watch {
        Ok(w) => Some(w),
        Err(e) => {
            log!(
                "warn",
                "cannot watch {} ({e}): a removed socket file is not made again",
                dir.display()
            );
            None
        }
    }
}
