//! Writing a request into its slot's stream: the head, then the body from nginx's memory
//! buffers or its temporary file, as the pool worker's credit allows.
//!
//! nginx reads the whole body from the client first (into memory or its temp file, as with
//! `proxy_request_buffering on`); from there it streams into the arena in windows, so a body up
//! to `client_max_body_size` never needs an arena that large. A request still waiting in the
//! queue holds only the chunks of its head (and what of the body fits beside it there).

use ngx_pool_channel::chain::ChainError;
use ngx_pool_channel::stream::{Direction, StreamWriter};
use ngx_pool_channel::{Region, SlotId};
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;

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
    writer: StreamWriter,
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
            writer: StreamWriter::new(),
            file_buf: Vec::new(),
            arriving,
        }
    }

    /// More of an arriving body.
    pub fn add(&mut self, parts: impl IntoIterator<Item = BodyPart>) {
        self.parts.extend(parts);
    }

    pub fn head_len(&self) -> u32 {
        self.head.len() as u32
    }

    /// Head plus body, in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Writes the head onto a fresh slot's stream. On `ArenaFull` the caller releases the slot
    /// (which frees what was written) and tries again later with a new one.
    pub fn write_head(&mut self, region: &Region, id: SlotId) -> Result<(), ChainError> {
        self.writer = StreamWriter::new();
        self.writer
            .append(region, id, Direction::Request, &self.head)?;
        self.writer.publish(region, id, Direction::Request);
        Ok(())
    }

    /// Writes body bytes while the window (the queued window while `queued`) and the arena
    /// allow. The caller wakes the pool worker afterwards.
    pub fn pump(&mut self, region: &Region, id: SlotId, queued: bool) -> Pumped {
        let g = region.geometry();
        loop {
            if self.writer.written() >= self.total {
                return Pumped::Done;
            }
            let mut room = self.writer.room(region, id, Direction::Request);
            if queued {
                // A request waiting in the queue takes no chunk beyond its head's: the body
                // stays in nginx's buffers or temp file until a worker takes the request, so
                // waiting requests never hold what running ones need (the arena cannot
                // deadlock, whatever the burst of uploads).
                room = room.min(self.writer.tail_space(region));
            }
            if room == 0 {
                return Pumped::Waiting;
            }
            // Request bodies may take three quarters of the arena: the rest stays for
            // responses, so running requests can always answer and free what they hold.
            let in_use = region.header().stats.chunks_in_use.load(Ordering::Relaxed);
            if in_use * 4 >= u64::from(g.chunks) * 3 {
                return Pumped::ArenaFull;
            }
            let Some(part) = self.parts.get(self.part) else {
                if self.arriving {
                    return Pumped::NeedBody;
                }
                return Pumped::Failed("the request body is shorter than announced".into());
            };
            let n = (part.len() - self.at).min(room).min(STEP) as usize;
            let before = self.writer.written();
            let res = match part {
                BodyPart::Memory(..) | BodyPart::Arriving(_) => {
                    let bytes = part.bytes(self.at, n);
                    self.writer.append(region, id, Direction::Request, bytes)
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
                    self.writer
                        .append(region, id, Direction::Request, &self.file_buf[..got])
                }
            };
            self.at += self.writer.written() - before;
            if self.at >= part.len() {
                part.taken();
                self.part += 1;
                self.at = 0;
                if self.writer.written() >= self.total {
                    self.arriving = false;
                }
            }
            self.writer.publish(region, id, Direction::Request);
            match res {
                Ok(()) => {}
                Err(ChainError::ArenaFull) => return Pumped::ArenaFull,
                Err(e) => return Pumped::Failed(e.to_string()),
            }
        }
    }
}
