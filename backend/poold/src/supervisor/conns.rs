//! The nginx workers attached over the pool's socket: accepting them, their Hello (an eventfd
//! in, the region's memfd out), their going away (the socket is each one's lifeline).

use super::*;

impl Supervisor {
    pub(super) fn wake_all(&self) {
        for c in self.conns.iter().flatten() {
            let _ = nix::unistd::write(c.eventfd.as_fd(), &1u64.to_ne_bytes());
        }
    }

    pub(super) fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match sys::accept(listener) {
                Ok(Some(fd)) => self.pending.push(fd),
                Ok(None) => return,
                Err(e) => {
                    log!("error", "accept on {}: {e}", self.cfg.socket.display());
                    return;
                }
            }
        }
    }

    /// An accepted socket has something: its Hello (or end of file).
    pub(super) fn on_hello(&mut self, i: usize) {
        let sock = self.pending.swap_remove(i);
        let (frame, fd) = match recv_frame(&sock, MsgFlags::MSG_DONTWAIT) {
            Ok(Some((f, Some(fd)))) if f.kind == handshake::HELLO => (f, fd),
            Ok(None) => return,
            Ok(Some(_)) => {
                log!(
                    "warn",
                    "a client of {} sent no valid hello; closed",
                    self.cfg.socket.display()
                );
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                self.pending.push(sock);
                return;
            }
            Err(e) => {
                log!("warn", "hello: {e}");
                return;
            }
        };
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
            Ok(Some(_)) => return,
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
