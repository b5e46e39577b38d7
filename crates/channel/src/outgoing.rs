//! The nginx side of one request, as one operation per step: [`open`] it (take a slot for the
//! connection and write the head), write its body as the window allows
//! ([`RequestOut::room`], [`RequestOut::write`]), [`RequestOut::enqueue`] it for the pool's
//! workers; its answer is read with [`crate::answer`]. The module and the channel's
//! multi-process test write requests through these alone, so the rules that keep the arena
//! from deadlocking under a burst of uploads are written once, here:
//!
//! - a request joins the queue only while the arena stays at most half full with it: waiting
//!   requests hold just their head, and the other half is for running requests' bodies and
//!   answers, so those can always finish and free what the waiting ones need;
//! - a queued request takes no chunk beyond its head's (its body stays with nginx until a
//!   worker takes it);
//! - request bodies may take three quarters of the arena; the rest stays for answers.

use crate::chain::ChainError;
use crate::region::Region;
use crate::slot::{self, SlotId};
use crate::stream::{Direction, StreamWriter};
use std::sync::atomic::Ordering;

/// Why a request could not be opened now.
#[derive(Debug, PartialEq, Eq)]
pub enum NotOpened {
    /// Every slot is in use (the queue is full).
    NoSlot,
    /// The arena has no room for another waiting request now: try again shortly.
    ArenaFull,
    /// The head could not be written (a chain broken by a write over the region).
    Broken(ChainError),
}

/// How much of the body may be written now.
#[derive(Debug, PartialEq, Eq)]
pub enum Room {
    /// Up to this many bytes.
    Bytes(u64),
    /// The window is used up: the pool worker's reading gives more room (it wakes us).
    Waiting,
    /// The arena is (nearly) full: try again shortly.
    ArenaFull,
}

/// A request on its way from an nginx worker into its slot.
#[derive(Debug)]
pub struct RequestOut {
    id: SlotId,
    head_len: u32,
    total: u64,
    writer: StreamWriter,
}

/// Opens a request of `head` and `total` bytes in all (head and body) for connection `conn`
/// (generation `conn_gen`): a slot taken and the head written onto its stream, not yet
/// queued. Whatever fails gives the slot back.
pub fn open(
    region: &Region,
    conn: u32,
    conn_gen: u32,
    head: &[u8],
    total: u64,
) -> Result<RequestOut, NotOpened> {
    let g = region.geometry();
    let in_use = region.header().stats.chunks_in_use.load(Ordering::Relaxed);
    let head_chunks = (head.len() as u64).div_ceil(u64::from(g.chunk_data()).max(1));
    if (in_use + head_chunks.max(1)) * 2 > u64::from(g.chunks) {
        return Err(NotOpened::ArenaFull);
    }
    let id = slot::alloc(region.nginx_side(), conn, conn_gen).ok_or(NotOpened::NoSlot)?;
    let mut writer = StreamWriter::new();
    if total.saturating_sub(head.len() as u64) >= crate::message::OPEN_BODY {
        // An upgrade nginx offers: its body may flow for hours, on a small window.
        writer.limit_window(region, g.tunnel_window());
    }
    if let Err(e) = writer.append(region, id, Direction::Request, head) {
        slot::release(region.nginx_side(), id);
        return Err(match e {
            ChainError::ArenaFull => NotOpened::ArenaFull,
            e => NotOpened::Broken(e),
        });
    }
    writer.publish(region, id, Direction::Request);
    Ok(RequestOut {
        id,
        head_len: head.len() as u32,
        total,
        writer,
    })
}

impl RequestOut {
    pub fn id(&self) -> SlotId {
        self.id
    }

    pub fn head_len(&self) -> u32 {
        self.head_len
    }

    /// Head plus body, in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many bytes (head and body) are written.
    pub fn written(&self) -> u64 {
        self.writer.written()
    }

    /// Whether every byte (head and body) is written.
    pub fn written_all(&self) -> bool {
        self.writer.written() >= self.total
    }

    /// How much of the body may be written now; `queued` while no worker has taken the
    /// request.
    pub fn room(&self, region: &Region, queued: bool) -> Room {
        let mut room = self.writer.room(region, self.id, Direction::Request);
        if queued {
            // A request waiting in the queue takes no chunk beyond its head's: the body stays
            // in nginx's buffers or temp file until a worker takes the request, so waiting
            // requests never hold what running ones need (the arena cannot deadlock, whatever
            // the burst of uploads).
            room = room.min(self.writer.tail_space(region));
        }
        room = room.min(self.total.saturating_sub(self.writer.written()));
        if room == 0 {
            return Room::Waiting;
        }
        let g = region.geometry();
        let in_use = region.header().stats.chunks_in_use.load(Ordering::Relaxed);
        if in_use * 4 >= u64::from(g.chunks) * 3 {
            return Room::ArenaFull;
        }
        Room::Bytes(room)
    }

    /// Writes (at most [`room`](Self::room)'s worth of) `bytes` and publishes them; returns how
    /// many were taken, which is fewer than asked only with an error (on `ArenaFull`, those
    /// before it are taken). The caller wakes the pool worker afterwards.
    pub fn write(&mut self, region: &Region, bytes: &[u8]) -> (usize, Result<(), ChainError>) {
        let before = self.writer.written();
        let res = self
            .writer
            .append(region, self.id, Direction::Request, bytes);
        self.writer.publish(region, self.id, Direction::Request);
        ((self.writer.written() - before) as usize, res)
    }

    /// Puts the request in the pool's queue with its own deadline (`timeout_ms`, for poold to
    /// enforce too), without waking a worker (the caller batches wake-ups); false if the queue
    /// refused it (only a region written over does that: the caller gives the slot back).
    pub fn enqueue(&self, region: &Region, timeout_ms: Option<u64>) -> bool {
        if let Some(ms) = timeout_ms {
            slot::set_timeout(region.nginx_side(), self.id, ms);
        }
        slot::enqueue(region.nginx_side(), self.id, self.head_len, self.total)
    }
}
