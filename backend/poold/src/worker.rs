//! A pool worker's loop: take a request from the region, run the handler, publish the response,
//! wake the nginx worker that owns the request.

use crate::handler::{Handler, Request, Response};
use crate::log;
use ngx_pool_channel::chain::read_chain;
use ngx_pool_channel::handshake::{recv_frame, CONN_FD};
use ngx_pool_channel::message::{decode_request, encode_response_head};
use ngx_pool_channel::slot::{self, FailReason, Handover, WorkerState};
use ngx_pool_channel::Region;
use nix::sys::socket::MsgFlags;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

/// The eventfds of attached nginx workers, by connection index: (generation, eventfd).
pub type ConnFds = HashMap<u32, (u32, OwnedFd)>;

pub struct Worker<'a> {
    pub region: &'a Region,
    pub handler: &'a dyn Handler,
    pub index: u32,
    /// From poold: eventfds of nginx workers that attached after this worker was forked.
    pub control: OwnedFd,
    pub conns: ConnFds,
    /// How long to poll the queue before sleeping (`--spin`).
    pub spin: std::time::Duration,
    /// Retire after this many requests (`--max-requests`, jittered by the caller).
    pub max_requests: Option<u64>,
    /// Retire once resident memory exceeds this many bytes (`--max-rss`).
    pub max_rss: Option<u64>,
}

/// Exit status of a worker that retired on `max_requests`/`max_rss`: poold replaces it at once
/// and counts a recycle, not a crash.
pub const EXIT_RECYCLE: i32 = 75;

/// Resident set size of this process, in bytes.
fn own_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    Some(statm.split_whitespace().nth(1)?.parse::<u64>().ok()? * 4096)
}

impl Worker<'_> {
    pub fn run(mut self) -> ! {
        let entry = self
            .region
            .worker(self.index)
            .expect("worker index within geometry");
        entry.pid.store(std::process::id(), Ordering::Relaxed);
        loop {
            entry
                .state
                .store(WorkerState::Idle as u32, Ordering::Relaxed);
            let id = slot::wait_for_work(self.region, self.index, self.spin);
            entry
                .state
                .store(WorkerState::Busy as u32, Ordering::Relaxed);
            let handover = self.serve(id);
            slot::clear_current(self.region, self.index);
            let served = entry.served.fetch_add(1, Ordering::Relaxed) + 1;
            if let Handover::Deliver { conn, conn_gen } = handover {
                self.wake(conn, conn_gen);
            }
            // Retire at a request boundary; poold forks the replacement at once.
            let too_many = self.max_requests.is_some_and(|m| served >= m);
            let too_big = self
                .max_rss
                .is_some_and(|m| own_rss().is_some_and(|rss| rss > m));
            if too_many || too_big {
                entry
                    .state
                    .store(WorkerState::Exited as u32, Ordering::Relaxed);
                std::process::exit(EXIT_RECYCLE);
            }
        }
    }

    fn serve(&mut self, id: slot::SlotId) -> Handover {
        let Some((head, len)) = slot::request(self.region, id) else {
            return slot::fail(self.region, id, FailReason::BadRequest);
        };
        let bytes = match read_chain(self.region, head, len) {
            Ok(b) => b,
            Err(e) => {
                log!(
                    "error",
                    "worker {}: request in slot {}: {e}",
                    std::process::id(),
                    id.index
                );
                return slot::fail(self.region, id, FailReason::BadRequest);
            }
        };
        slot::drop_request_body(self.region, id);
        let view = match decode_request(&bytes) {
            Ok(v) => v,
            Err(e) => {
                log!("error", "worker {}: {e}", std::process::id());
                return slot::fail(self.region, id, FailReason::BadRequest);
            }
        };
        let region = self.region;
        let cancelled = move || slot::state_of(region, id) == Some(slot::SlotState::Abandoned);
        let req = Request::new(view, &cancelled);
        let mut resp = Response::default();
        self.handler.handle(&req, &mut resp);
        let Some(mut w) = slot::response_writer(self.region, id) else {
            return slot::fail(self.region, id, FailReason::Other);
        };
        let headers: Vec<(&[u8], &[u8])> =
            resp.headers.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let written = encode_response_head(&mut w, resp.status, &headers, resp.body.len() as u64)
            .and_then(|_| w.append(&resp.body).map_err(Into::into));
        if let Err(e) = written {
            log!(
                "error",
                "worker {}: response to \"{}\" ({} body bytes) not delivered: {e}",
                std::process::id(),
                req.uri(),
                resp.body.len()
            );
            // Free the partial chain before the slot is handed back: nginx may release the
            // slot (and its response head) the moment it sees Failed.
            drop(w);
            return slot::fail(self.region, id, FailReason::ResponseTooLarge);
        }
        let (head, len) = w.finish();
        slot::finish(self.region, id, head, len)
    }

    fn wake(&mut self, conn: u32, conn_gen: u32) {
        if !slot::needs_wake(self.region, conn, conn_gen) {
            return;
        }
        if self.conns.get(&conn).map(|(g, _)| *g) != Some(conn_gen) {
            self.refresh_conns();
        }
        match self.conns.get(&conn) {
            Some((g, fd)) if *g == conn_gen => {
                let _ = nix::unistd::write(fd.as_fd(), &1u64.to_ne_bytes());
            }
            _ => log!(
                "error",
                "worker {}: no eventfd for nginx connection {conn}",
                std::process::id()
            ),
        }
    }

    /// Takes every eventfd poold has sent since the last look.
    fn refresh_conns(&mut self) {
        while let Ok(Some((frame, fd))) = recv_frame(&self.control, MsgFlags::MSG_DONTWAIT) {
            if let (CONN_FD, Some(fd)) = (frame.kind, fd) {
                self.conns.insert(frame.a, (frame.b, fd));
            }
        }
    }
}
