//! Who may attach to the pool: the credentials of every connection (SO_PEERCRED) are checked
//! as it is accepted, and the secret in its Hello before it is given a connection slot; a
//! refused peer is told why, closed at once, and logged (at most a line a second, with a
//! count), and it never holds a slot.
//!
//! The uid alone cannot tell an nginx worker from a compromised pool worker: both run as
//! nginx's `user` by default. So in managed mode the nginx master makes a random secret for each
//! poold it starts and passes it to that poold in a sealed memfd (`--secret-fd`; never argv or
//! the environment, which /proc shows to every local user) and to its own workers by fork;
//! poold admits only a peer that presents it *and* runs as the nginx workers' user (or root).
//! Each poold has a secret of its own, so the one a pool's code can find in its own memory
//! (its poold's) opens only that pool, whose region it has anyway. An external pool (started
//! by hand or by systemd) has no secret: its peers are checked by uid (and gid) alone, against
//! `--allow` or, without it, the user poold runs the pool as, the socket's owner.

use super::Supervisor;
use crate::config::Config;
use crate::log;
use crate::sys;
use ngx_pool_channel::handshake::{self, send_frame, Frame, Secret, SECRET_LEN};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials, MsgFlags};
use nix::unistd::{Group, Uid, User};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How long an accepted connection may take to say Hello: an nginx worker sends it with its
/// connect, so it is there when poold accepts; a peer that says nothing is closed after this.
pub(super) const HELLO_WAIT: Duration = Duration::from_secs(2);
/// The most connections waiting for their Hello; beyond it the oldest is closed. A silent
/// peer (which must already be an allowed user) can hold no more than this many descriptors.
const MAX_PENDING: usize = 64;
/// Refusals are logged at most once per this; the others are counted in the next line.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// A peer refused as it connects (its user), before its Hello could arrive, is kept this long
/// (in no connection slot) before it is closed, its Hello read and dropped: closing a seqpacket
/// socket with a message unread resets the peer's end, which then loses the reason it was told.
const LINGER: Duration = Duration::from_millis(50);
/// The most refused peers kept so at once (past it, the oldest is closed at once).
const MAX_LINGERING: usize = 128;

/// An accepted connection whose credentials passed, waiting for its Hello.
pub(super) struct Pending {
    pub sock: OwnedFd,
    since: Instant,
    pid: i32,
    uid: u32,
    gid: u32,
}

/// What a peer must be to attach.
pub(super) struct Admission {
    /// Managed mode: what the nginx master gave this poold; its workers present the same.
    secret: Option<Secret>,
    /// The (uid, gid) admitted besides root; a gid of `None` is any group.
    allowed: Vec<(u32, Option<u32>)>,
    /// For the log line.
    allowed_text: String,
    last_logged: Option<Instant>,
    unlogged: u64,
    /// Refused peers waiting to be closed ([`LINGER`]), oldest first.
    lingering: std::collections::VecDeque<(Instant, OwnedFd)>,
}

impl Admission {
    /// Reads the secret (if any) and resolves the users and groups admitted.
    pub(super) fn new(cfg: &Config) -> io::Result<Admission> {
        let secret = cfg.secret_fd.map(read_secret).transpose()?;
        let mut allowed = Vec::new();
        for spec in &cfg.pool.allow {
            let (user, group) = match spec.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (spec.as_str(), None),
            };
            let uid = resolve_user(user)
                .map_err(|e| io::Error::new(e.kind(), format!("--allow {spec}: {e}")))?;
            let gid = group
                .map(resolve_group)
                .transpose()
                .map_err(|e| io::Error::new(e.kind(), format!("--allow {spec}: {e}")))?;
            allowed.push((uid, gid));
        }
        if allowed.is_empty() {
            // The pool's own user (poold runs as it, root dropped): nginx's workers' in managed
            // mode (the module passes `--user` when root, and otherwise the workers run as
            // poold does), and for an external pool the socket's owner, the only user but root
            // its mode 0600 lets connect.
            let uid = Uid::effective();
            allowed.push((uid.as_raw(), None));
        }
        let allowed_text = allowed
            .iter()
            .map(|(u, g)| match g {
                Some(g) => format!("{u}:{g}"),
                None => u.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Admission {
            secret,
            allowed,
            allowed_text,
            last_logged: None,
            unlogged: 0,
            lingering: std::collections::VecDeque::new(),
        })
    }

    /// Whether the allow list replaces the socket's owner as the check (its mode is then 0666).
    pub(super) fn open_socket(cfg: &Config) -> bool {
        !cfg.pool.allow.is_empty()
    }

    /// Root may always attach: it can read any process's memory anyway.
    fn user_allowed(&self, uid: u32, gid: u32) -> bool {
        uid == 0
            || self
                .allowed
                .iter()
                .any(|&(u, g)| u == uid && g.is_none_or(|g| g == gid))
    }

    /// When a count of refusals not yet logged is due, or a refused peer is to be closed.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let count = (self.unlogged > 0)
            .then(|| self.last_logged.map(|t| t + LOG_EVERY))
            .flatten();
        let linger = self.lingering.front().map(|(at, _)| *at);
        [count, linger].into_iter().flatten().min()
    }

    /// Keeps a refused peer a moment before closing it ([`LINGER`]).
    fn linger(&mut self, sock: OwnedFd) {
        if self.lingering.len() >= MAX_LINGERING {
            if let Some((_, oldest)) = self.lingering.pop_front() {
                drain(&oldest);
            }
        }
        self.lingering.push_back((Instant::now() + LINGER, sock));
    }

    /// Closes the refused peers whose moment has passed (what they sent read first).
    fn close_lingering(&mut self) {
        let now = Instant::now();
        while self.lingering.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, sock)) = self.lingering.pop_front() {
                drain(&sock);
            }
        }
    }

    /// Logs a refusal, or counts it if one was logged less than LOG_EVERY ago.
    fn note(&mut self, socket: &std::path::Path, line: String) {
        let now = Instant::now();
        if self.last_logged.is_some_and(|t| now < t + LOG_EVERY) {
            self.unlogged += 1;
            return;
        }
        let more = std::mem::take(&mut self.unlogged);
        let more = if more > 0 {
            format!(" ({more} more refused since the last such line)")
        } else {
            String::new()
        };
        log!("warn", "{}: {line}{more}", socket.display());
        self.last_logged = Some(now);
    }

    /// Logs the count of refusals not yet logged, once it is due.
    fn flush(&mut self, socket: &std::path::Path) {
        if self.next_wake().is_some_and(|at| at <= Instant::now()) {
            let n = std::mem::take(&mut self.unlogged);
            log!(
                "warn",
                "{}: {n} more connection(s) refused since the last such line",
                socket.display()
            );
            self.last_logged = Some(Instant::now());
        }
    }
}

/// Reads the secret from the memfd the nginx module passed. The descriptor stays open: a
/// poold the watchdog or its spare starts later (same command line, inherited descriptors) reads it again.
fn read_secret(fd: RawFd) -> io::Result<Secret> {
    // SAFETY: the nginx module passes this descriptor by number and nothing in this process
    // closes it; we only borrow it to read.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut secret = [0u8; SECRET_LEN];
    let n = nix::sys::uio::pread(fd, &mut secret, 0)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("--secret-fd: {e}")))?;
    if n != SECRET_LEN || secret == [0; SECRET_LEN] {
        return Err(io::Error::other(
            "--secret-fd: not a secret (the nginx module passes 32 random bytes)",
        ));
    }
    Ok(secret)
}

fn resolve_user(name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match User::from_name(name)? {
        Some(u) => Ok(u.uid.as_raw()),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user \"{name}\""),
        )),
    }
}

fn resolve_group(name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match Group::from_name(name)? {
        Some(g) => Ok(g.gid.as_raw()),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group \"{name}\""),
        )),
    }
}

/// Reads (and drops) what a peer sent: closing a seqpacket socket with unread messages would
/// reset the peer's end before it read the reason it was told.
fn drain(sock: &OwnedFd) {
    for _ in 0..4 {
        if handshake::recv_frame(sock, MsgFlags::MSG_DONTWAIT)
            .is_err_and(|e| e.raw_os_error() == Some(libc::EAGAIN))
        {
            break;
        }
    }
}

/// Tells a refused peer why (a Welcome with `status` and its uid, no region); the caller
/// closes it (at once if its Hello was read, else a moment later: [`LINGER`]).
fn refuse(sock: &OwnedFd, status: u32, uid: u32) {
    drain(sock);
    let _ = send_frame(
        sock,
        Frame::new(handshake::WELCOME, status, uid, 0),
        None::<&OwnedFd>,
    );
    drain(sock);
}

impl Supervisor {
    /// Accepts every connection waiting; each is checked at once (credentials) and read at
    /// once if its Hello is there, as an nginx worker's is.
    pub(super) fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match sys::accept(listener) {
                Ok(Some(fd)) => self.admit(fd),
                Ok(None) => return,
                Err(e) => {
                    log!("error", "accept on {}: {e}", self.cfg.socket.display());
                    return;
                }
            }
        }
    }

    /// A new connection: refused unless its user is allowed; else waits for its Hello.
    fn admit(&mut self, sock: OwnedFd) {
        let Ok(cred) = getsockopt(&sock, PeerCredentials) else {
            return;
        };
        let (pid, uid, gid) = (cred.pid(), cred.uid(), cred.gid());
        if !self.peers.user_allowed(uid, gid) {
            refuse(&sock, handshake::WELCOME_BAD_USER, uid);
            self.peers.linger(sock);
            let line = format!(
                "refused pid {pid} (uid {uid}, gid {gid}): not a user allowed to attach (uid {}{})",
                self.peers.allowed_text,
                if Admission::open_socket(&self.cfg) {
                    ", --allow"
                } else {
                    ""
                }
            );
            self.peers.note(&self.cfg.socket, line);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            if let Some(oldest) = (0..self.pending.len()).min_by_key(|&i| self.pending[i].since) {
                let p = self.pending.swap_remove(oldest);
                let line = format!(
                    "closed pid {} (uid {}): more than {MAX_PENDING} connections waiting for their hello",
                    p.pid, p.uid
                );
                self.peers.note(&self.cfg.socket, line);
            }
        }
        self.pending.push(Pending {
            sock,
            since: Instant::now(),
            pid,
            uid,
            gid,
        });
        self.on_hello(self.pending.len() - 1);
    }

    /// Checks a Hello's secret (managed mode): whether the peer may have a slot. A refused one
    /// is told, closed and logged.
    pub(super) fn secret_ok(&mut self, p: Pending, secret: &Secret) -> Option<Pending> {
        let Some(ours) = &self.peers.secret else {
            return Some(p);
        };
        if handshake::same_secret(ours, secret) {
            return Some(p);
        }
        let what = if *secret == [0; SECRET_LEN] {
            "no"
        } else {
            "a wrong"
        };
        let line = format!(
            "refused pid {} (uid {}, gid {}): {what} attachment secret, so not a worker of the nginx that started this pool",
            p.pid, p.uid, p.gid
        );
        refuse(&p.sock, handshake::WELCOME_BAD_SECRET, p.uid);
        self.peers.note(&self.cfg.socket, line);
        None
    }

    /// Closes connections that did not say Hello in time, and logs refusals counted meanwhile.
    pub(super) fn expire_pending(&mut self) {
        self.peers.close_lingering();
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            if now.duration_since(self.pending[i].since) < HELLO_WAIT {
                i += 1;
                continue;
            }
            let p = self.pending.swap_remove(i);
            let line = format!(
                "closed pid {} (uid {}): no hello within {HELLO_WAIT:?}",
                p.pid, p.uid
            );
            self.peers.note(&self.cfg.socket, line);
        }
        self.peers.flush(&self.cfg.socket);
    }

    /// When a pending connection's time is up, or a count of refusals is due.
    pub(super) fn peers_next_wake(&self) -> Option<Instant> {
        let oldest = self.pending.iter().map(|p| p.since + HELLO_WAIT).min();
        [oldest, self.peers.next_wake()].into_iter().flatten().min()
    }
}

impl AsFd for Pending {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
