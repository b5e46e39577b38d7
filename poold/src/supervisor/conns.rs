//! The nginx workers attached over the pool's socket: their Hello (an eventfd in, the region's
//! memfd out), their going away (the socket is each one's lifeline). Who may attach at all is
//! `peers.rs`.

use super::*;

impl Supervisor {
    pub(super) fn wake_all(&self) {
        for c in self.conns.iter().flatten() {
            let _ = nix::unistd::write(c.eventfd.as_fd(), &1u64.to_ne_bytes());
        }
    }

    /// An accepted socket has something: its Hello (or end of file).
    pub(super) fn on_hello(&mut self, i: usize) {
        // (An index of this turn's poll may be gone: `peers` closed that connection since.)
        if i >= self.pending.len() {
            return;
        }
        let pending = self.pending.swap_remove(i);
        let hello = match handshake::recv_hello(&pending.sock, MsgFlags::MSG_DONTWAIT) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                self.pending.push(pending);
                return;
            }
            Err(e) => {
                log!(
                    "warn",
                    "a client of {} sent no valid hello ({e}); closed",
                    self.cfg.socket.display()
                );
                return;
            }
        };
        let frame = Frame::new(handshake::HELLO, hello.version, hello.pid, 0);
        // The version first, so that an older module (a shorter Hello, no secret) is told
        // to rebuild rather than that it is not nginx's.
        if frame.a == LAYOUT_VERSION {
            let Some(p) = self.secret_ok(pending, &hello.secret) else {
                return;
            };
            return self.welcome(p.sock, frame, hello.eventfd);
        }
        self.welcome(pending.sock, frame, hello.eventfd)
    }

    /// A Hello whose peer may attach (or whose version is wrong): a slot and the region.
    fn welcome(&mut self, sock: OwnedFd, frame: Frame, fd: Option<OwnedFd>) {
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
        let Some(fd) = fd else {
            log!(
                "warn",
                "nginx worker {} sent no eventfd with its hello; closed",
                frame.b
            );
            return;
        };
        let Some(index) = self.conns.iter().position(Option::is_none) else {
            log!(
                "error",
                "more than {} nginx workers attached; raise --max-conns",
                self.cfg.max_conns
            );
            return refuse(handshake::WELCOME_FULL);
        };
        let Some(gen) = slot::open_conn(self.region.pool_side(), index as u32, frame.b) else {
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
            slot::close_conn(self.region.pool_side(), index as u32);
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
    pub(super) fn on_conn_readable(&mut self, i: usize) {
        let Some(c) = &self.conns[i] else { return };
        match recv_frame(&c.sock, MsgFlags::MSG_DONTWAIT) {
            Ok(Some((frame, _))) => {
                if frame.kind == handshake::CORRUPT {
                    // An nginx worker (admitted: it holds the secret) found the region in a
                    // state no correct process makes; the loop starts a new generation.
                    self.corrupt_report = Some(c.pid);
                }
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return,
            _ => {}
        }
        let c = self.conns[i].take().expect("checked above");
        slot::close_conn(self.region.pool_side(), i as u32);
        let n = slot::reclaim_conn(self.region.pool_side(), i as u32, c.gen);
        self.maybe_lost = true;
        if n > 0 {
            log!(
                "warn",
                "nginx worker {} detached with {n} requests in flight; reclaimed",
                c.pid
            );
        }
    }
}
