//! The pool's socket file: bound at start, and made again if it disappears from under a
//! serving poold (deleted by hand or by a cleaner, or removed by another nginx master's poold
//! that bound the same path and stopped: an aborted binary upgrade), so that nginx workers
//! started later can still attach. A path that names another poold's socket is left to it.

use super::Supervisor;
use crate::config::Config;
use crate::log;
use crate::sys;
use ngx_pool_channel::socket_file::SocketFile;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::unistd::{Gid, Uid};
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How long the path must stay empty before this poold binds it again: a poold starting on the
/// same path removes the old file and binds its own within milliseconds, and must win.
pub(super) const REBIND_AFTER: Duration = Duration::from_secs(1);

/// Binds the pool's socket at `cfg.socket`, reachable by the pool's user only (and root), or
/// by everyone with `--allow`, whose list is then what admits a peer (`peers.rs`: checked as
/// each connection is accepted, and a refused one never holds anything).
pub(super) fn bind(
    cfg: &Config,
    run_as: Option<(Uid, Gid)>,
) -> io::Result<(OwnedFd, Option<SocketFile>)> {
    let listener = sys::listen_seqpacket(&cfg.socket)
        .map_err(|e| io::Error::new(e.kind(), format!("socket {}: {e}", cfg.socket.display())))?;
    let file = SocketFile::identify(&cfg.socket);
    // Only the nginx workers' user may connect (and root), unless `--allow` names who may.
    let mode = if super::peers::Admission::open_socket(cfg) {
        0o666
    } else {
        0o600
    };
    std::fs::set_permissions(
        &cfg.socket,
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )?;
    if let Some((uid, gid)) = run_as {
        nix::unistd::chown(&cfg.socket, Some(uid), Some(gid))?;
    }
    Ok((listener, file))
}

/// Watches the socket's directory for the file's removal; `None` (logged) where inotify is not
/// available: the socket is then not made again.
pub(super) fn watch(cfg: &Config) -> Option<Inotify> {
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

impl Supervisor {
    /// The socket's directory changed: if our file went, look again in REBIND_AFTER.
    pub(super) fn on_socket_dir_event(&mut self) {
        let Some(watch) = &self.socket_watch else {
            return;
        };
        let name = self.cfg.socket.file_name();
        let ours = watch
            .read_events()
            .unwrap_or_default()
            .iter()
            .any(|e| e.name.as_deref() == name);
        if ours && self.draining.is_none() && self.socket_check_at.is_none() {
            self.socket_check_at = Some(Instant::now() + REBIND_AFTER);
        }
    }

    /// When the look is due: binds the path again if it is still empty.
    pub(super) fn recheck_socket(&mut self) -> io::Result<()> {
        if self.socket_check_at.is_none_or(|at| at > Instant::now()) {
            return Ok(());
        }
        self.socket_check_at = None;
        if self.draining.is_some() || SocketFile::identify(&self.cfg.socket).is_some() {
            // Draining, or another poold's file is there now: it serves the nginx workers that
            // attach from now on; this one keeps those attached to it.
            return Ok(());
        }
        let (listener, file) = bind(&self.cfg, self.run_as)?;
        self.listener = Some(listener);
        self.socket_file = file;
        log!(
            "notice",
            "the socket file {} was removed; made it again",
            self.cfg.socket.display()
        );
        Ok(())
    }
}
