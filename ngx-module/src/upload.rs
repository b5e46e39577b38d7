//! Writing a request into its slot's stream: the head, then the body from nginx's memory
//! buffers or its temporary file, as the pool worker's credit allows. The steps on the region
//! (open, room, write, enqueue) and the rules that keep the arena from deadlocking are the
//! channel's ([`ngx_pool_channel::outgoing`]); this file reads nginx's body parts.
//!
//! nginx reads the whole body from the client first (into memory or its temp file, as with
//! `proxy_request_buffering on`); from there it streams into the arena in windows, so a body up
//! to `client_max_body_size` never needs an arena that large. A request still waiting in the
//! queue holds only the chunks of its head (and what of the body fits beside it there).

use ngx_pool_channel::chain::ChainError;
use ngx_pool_channel::outgoing::{self, NotOpened, RequestOut, Room};
use ngx_pool_channel::{Region, SlotId};
use std::os::fd::BorrowedFd;

/// One piece of the request body as nginx holds it.
pub enum BodyPart {
    /// Bytes in a buffer of the request's pool.
    Memory(*const u8, usize),
    /// Bytes of a buffer nginx reuses once we have taken them (`pool_request_buffering off`):
    /// the buffer's `pos` is moved to `last` when the bytes are in the arena.
    Arriving(*mut nginx_sys::ngx_buf_t),
    /// A range of nginx's temporary file for the body.
    File { fd: i32, from: i64, to: i64 },
}

impl BodyPart {
    pub fn len(&self) -> u64 {
        match self {
            BodyPart::Memory(_, n) => *n as u64,
            // SAFETY: a live buffer of the request's body (see the variant).
            BodyPart::Arriving(b) => unsafe { (**b).last.offset_from((**b).pos).max(0) as u64 },
            BodyPart::File { from, to, .. } => (to - from).max(0) as u64,
        }
    }

    /// The bytes at `at..at + n` of a memory part.
    fn bytes(&self, at: u64, n: usize) -> &[u8] {
        // SAFETY: memory parts live in the request's pool, which outlives the upload (it is
        // dropped with the request context), and an arriving buffer's bytes stay until we mark
        // them taken; `at + n` stays within the part's length (the caller's bound).
        unsafe {
            match self {
                BodyPart::Memory(p, _) => std::slice::from_raw_parts(p.add(at as usize), n),
                BodyPart::Arriving(b) => std::slice::from_raw_parts((**b).pos.add(at as usize), n),
                BodyPart::File { .. } => &[],
            }
        }
    }

    /// All of this part is in the arena: an arriving buffer goes back to nginx.
    fn taken(&self) {
        if let BodyPart::Arriving(b) = self {
            // SAFETY: as in `bytes`; nginx reads the buffer again only after we mark it.
            unsafe { (**b).pos = (**b).last };
        }
    }
}

/// How far a pump got.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// The whole request is written.
    Done,
    /// The window is used up: the pool worker's reading gives more room.
    Waiting,
    /// The arena is (nearly) full: try again shortly.
    ArenaFull,
    /// Everything nginx has of the body is written; the rest is still on its way from the
    /// client (`pool_request_buffering off`).
    NeedBody,
    /// The body could not be read; the request fails.
    Failed(String),
}

/// A request on its way into the arena.
pub struct Upload {
    head: Vec<u8>,
    parts: Vec<BodyPart>,
    part: usize,
    at: u64,
    total: u64,
    /// Once a slot is taken and the head written.
    out: Option<RequestOut>,
    file_buf: Vec<u8>,
    /// The body arrives while the request runs (`pool_request_buffering off`).
    arriving: bool,
}

/// Most body bytes copied per step (and the temp-file read size).
const STEP: u64 = 64 << 10;

impl Upload {
    /// A request whose head is `head` and whose body, `body_len` bytes, nginx holds in `parts`,
    /// all of it, or (`arriving`) what has come so far, the rest to be [`add`](Self::add)ed.
    pub fn new(head: Vec<u8>, parts: Vec<BodyPart>, body_len: u64, arriving: bool) -> Self {
        let total = head.len() as u64 + body_len;
        Upload {
            head,
            parts,
            part: 0,
            at: 0,
            total,
            out: None,
            file_buf: Vec::new(),
            arriving,
        }
    }

    /// More of an arriving body.
    pub fn add(&mut self, parts: impl IntoIterator<Item = BodyPart>) {
        // Parts already written go: an upgraded connection adds parts for as long as it lasts.
        self.parts.drain(..self.part);
        self.part = 0;
        self.parts.extend(parts);
    }

    /// Takes a slot for connection `conn` (generation `conn_gen`) and writes the head onto it
    /// (see [`outgoing::open`]); the slot is given back on any failure.
    pub fn open(&mut self, region: &Region, conn: u32, conn_gen: u32) -> Result<SlotId, NotOpened> {
        let out = outgoing::open(region, conn, conn_gen, &self.head, self.total)?;
        let id = out.id();
        self.out = Some(out);
        Ok(id)
    }

    /// Puts the opened request in the pool's queue (see [`RequestOut::enqueue`]).
    pub fn enqueue(&self, region: &Region, timeout_ms: Option<u64>) -> bool {
        self.out
            .as_ref()
            .is_some_and(|o| o.enqueue(region, timeout_ms))
    }

    /// Writes body bytes while the window (none beyond the head's chunk while `queued`) and the
    /// arena allow. The caller wakes the pool worker afterwards.
    pub fn pump(&mut self, region: &Region, queued: bool) -> Pumped {
        let Some(out) = self.out.as_mut() else {
            return Pumped::Failed("the request has no slot".into());
        };
        loop {
            if out.written_all() {
                return Pumped::Done;
            }
            let room = match out.room(region, queued) {
                Room::Bytes(n) => n,
                Room::Waiting => return Pumped::Waiting,
                Room::ArenaFull => return Pumped::ArenaFull,
            };
            let Some(part) = self.parts.get(self.part) else {
                if self.arriving {
                    return Pumped::NeedBody;
                }
                return Pumped::Failed("the request body is shorter than announced".into());
            };
            let n = (part.len() - self.at).min(room).min(STEP) as usize;
            let (taken, res) = match part {
                BodyPart::Memory(..) | BodyPart::Arriving(_) => {
                    out.write(region, part.bytes(self.at, n))
                }
                BodyPart::File { fd, from, .. } => {
                    self.file_buf.resize(STEP as usize, 0);
                    // SAFETY: nginx keeps the body's temp file open for the request's life.
                    let file = unsafe { BorrowedFd::borrow_raw(*fd) };
                    let got = match nix::sys::uio::pread(
                        file,
                        &mut self.file_buf[..n],
                        from + self.at as i64,
                    ) {
                        Ok(0) => return Pumped::Failed("the body's temp file is short".into()),
                        Ok(k) => k,
                        Err(e) => {
                            return Pumped::Failed(format!("reading the body's temp file: {e}"))
                        }
                    };
                    out.write(region, &self.file_buf[..got])
                }
            };
            self.at += taken as u64;
            if self.at >= part.len() {
                part.taken();
                self.part += 1;
                self.at = 0;
                if out.written_all() {
                    self.arriving = false;
                }
            }
            match res {
                Ok(()) => {}
                Err(ChainError::ArenaFull) => return Pumped::ArenaFull,
                Err(e) => return Pumped::Failed(e.to_string()),
            }
        }
    }
}
