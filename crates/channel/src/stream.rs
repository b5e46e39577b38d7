//! Streaming a slot's request or response through the arena, with credit-based flow control.
//!
//! Each direction of a slot is one byte stream: a head (the encoded request or response head)
//! followed by the body. The writer appends chunks at the tail and publishes how many bytes it
//! has written; the reader follows from the slot's anchor, hands bytes on, and frees each chunk
//! once it is done with it, publishing how many bytes it has freed. The writer never has more
//! than [`crate::Geometry::stream_window`] bytes published and not yet freed, so a body of any
//! size passes through a bounded part of the arena, and a slow reader (an nginx worker whose
//! client reads slowly) holds back the writer (the handler) instead of filling memory.
//!
//! Chunk `k` of a stream holds stream bytes `[k·D, (k+1)·D)` (D = chunk payload), because a
//! writer fills each chunk before it links the next. Ownership at the boundary is simple: the
//! writer touches only its tail chunk, and the reader frees a chunk only once it has a
//! successor, so the two never touch the same chunk's link. The last chunk of a stream is
//! freed with the slot ([`crate::slot::release`]), never by the reader.
//!
//! Who waits on whom: a pool worker blocks (futex on the slot's `worker_seq`); an nginx worker
//! never blocks, it sets the slot's `nginx_waiting` flag and is woken through its eventfd.

use crate::chain::ChainError;
use crate::freelist;
use crate::region::Region;
use crate::slot::SlotId;
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// Which of a slot's two streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// nginx → pool worker.
    Request,
    /// pool worker → nginx.
    Response,
}

/// The shared words of one stream.
struct Ends<'r> {
    anchor: &'r AtomicU32,
    written: &'r AtomicU64,
    consumed: &'r AtomicU64,
}

fn ends(region: &Region, id: SlotId, dir: Direction) -> Option<Ends<'_>> {
    let s = region.slot(id.index)?;
    Some(match dir {
        Direction::Request => Ends {
            anchor: &s.req_head,
            written: &s.req_written,
            consumed: &s.req_consumed,
        },
        Direction::Response => Ends {
            anchor: &s.resp_head,
            written: &s.resp_written,
            consumed: &s.resp_consumed,
        },
    })
}

/// Bytes published on a stream so far.
pub fn published(region: &Region, id: SlotId, dir: Direction) -> u64 {
    // Acquire: pairs with the writer's Release in `publish`; every chunk link and payload byte
    // below the value read is visible to us.
    ends(region, id, dir).map_or(0, |e| e.written.load(Ordering::Acquire))
}

/// The writing end of a stream. Holds no borrow, so it can live across event-loop turns.
#[derive(Debug, Default)]
pub struct StreamWriter {
    tail: u32,
    tail_len: u32,
    written: u64,
    /// A window smaller than the geometry's (see [`StreamWriter::limit_window`]); 0: none.
    window: u64,
}

impl StreamWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes appended so far (published or not).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes that still fit in the chunk last taken, without taking another.
    pub fn tail_space(&self, region: &Region) -> u64 {
        if self.tail == 0 {
            0
        } else {
            u64::from(region.geometry().chunk_data().saturating_sub(self.tail_len))
        }
    }

    /// Holds this stream to a window of `bytes` (at least two chunks' worth, below which a
    /// reader could not free a chunk to give credit; at most the geometry's window).
    pub fn limit_window(&mut self, region: &Region, bytes: u64) {
        let g = region.geometry();
        self.window = bytes
            .max(2 * u64::from(g.chunk_data()))
            .min(g.stream_window());
    }

    /// How many more bytes the window allows now.
    pub fn room(&self, region: &Region, id: SlotId, dir: Direction) -> u64 {
        let Some(e) = ends(region, id, dir) else {
            return 0;
        };
        // Acquire: pairs with the reader's Release in `StreamReader::release`: the chunks it
        // freed are back on the free list before we count on them.
        let consumed = e.consumed.load(Ordering::Acquire);
        let window = match self.window {
            0 => region.geometry().stream_window(),
            w => w,
        };
        window.saturating_sub(self.written.saturating_sub(consumed))
    }

    /// Appends all of `data`, taking chunks as needed. The bytes reach the reader at the next
    /// [`publish`](Self::publish). On `ArenaFull` the bytes before the failure stay appended.
    pub fn append(
        &mut self,
        region: &Region,
        id: SlotId,
        dir: Direction,
        mut data: &[u8],
    ) -> Result<(), ChainError> {
        let e = ends(region, id, dir).ok_or(ChainError::Corrupt)?;
        let cap = region.geometry().chunk_data();
        while !data.is_empty() {
            if self.tail == 0 || self.tail_len == cap {
                let i = alloc_chunk(region).ok_or(ChainError::ArenaFull)?;
                let c = region.chunk_head(i).ok_or(ChainError::Corrupt)?;
                c.next.store(0, Ordering::Relaxed);
                c.len.store(0, Ordering::Relaxed);
                if self.tail == 0 {
                    // Relaxed: the anchor of an unpublished stream is ours; `publish` releases.
                    e.anchor.store(i + 1, Ordering::Relaxed);
                } else {
                    let t = region
                        .chunk_head(self.tail - 1)
                        .ok_or(ChainError::Corrupt)?;
                    // Release: the reader may free our old tail as soon as it sees this link;
                    // everything we wrote into that tail happens before.
                    t.next.store(i + 1, Ordering::Release);
                }
                self.tail = i + 1;
                self.tail_len = 0;
            }
            let n = ((cap - self.tail_len) as usize).min(data.len());
            if !region.chunk_write(self.tail - 1, self.tail_len, &data[..n]) {
                return Err(ChainError::Corrupt);
            }
            self.tail_len += n as u32;
            if let Some(t) = region.chunk_head(self.tail - 1) {
                t.len.store(self.tail_len, Ordering::Relaxed);
            }
            self.written += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Makes everything appended visible to the reader.
    pub fn publish(&self, region: &Region, id: SlotId, dir: Direction) {
        if let Some(e) = ends(region, id, dir) {
            // Release: pairs with the reader's Acquire in `published`.
            e.written.store(self.written, Ordering::Release);
        }
    }
}

fn alloc_chunk(region: &Region) -> Option<u32> {
    let h = region.header();
    let i = freelist::pop(&h.chunk_free, region.geometry().chunks, |i| {
        region.chunk_head(i).map(|c| &c.next_free)
    })?;
    h.stats.chunks_in_use.fetch_add(1, Ordering::Relaxed);
    Some(i)
}

/// A contiguous run of stream bytes inside one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub chunk: u32,
    pub offset: u32,
    pub len: u32,
}

/// The reading end of a stream. Holds no borrow, so it can live across event-loop turns.
#[derive(Debug, Default)]
pub struct StreamReader {
    /// Next stream byte to hand out.
    pos: u64,
    /// Chunk (index + 1) holding the bytes from `cur_start`; 0 before the first.
    cur: u32,
    cur_start: u64,
    /// Stream offset where the anchor chunk begins: everything before it is freed.
    freed: u64,
}

impl StreamReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes handed out so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next piece of at most `max` published bytes, advancing past it; `None` if every
    /// published byte has been handed out. Every link is validated.
    pub fn next_piece(
        &mut self,
        region: &Region,
        id: SlotId,
        dir: Direction,
        max: u64,
    ) -> Result<Option<Piece>, ChainError> {
        let e = ends(region, id, dir).ok_or(ChainError::Corrupt)?;
        let g = region.geometry();
        let cap = g.chunk_data() as u64;
        // Acquire: see `published`.
        let written = e.written.load(Ordering::Acquire);
        if written <= self.pos || max == 0 {
            return Ok(None);
        }
        if self.cur == 0 {
            self.cur = e.anchor.load(Ordering::Relaxed);
            self.cur_start = self.freed;
        } else if self.pos == self.cur_start + cap {
            let c = region.chunk_head(self.cur - 1).ok_or(ChainError::Corrupt)?;
            self.cur = c.next.load(Ordering::Acquire);
            self.cur_start += cap;
        }
        if self.cur == 0 || self.cur > g.chunks {
            return Err(ChainError::Corrupt);
        }
        // Our own bookkeeping, but a peer rewriting the anchor under us can skew it (found by
        // the fuzz target): check rather than trust.
        let offset = self
            .pos
            .checked_sub(self.cur_start)
            .filter(|o| *o < cap)
            .ok_or(ChainError::Corrupt)?;
        let in_chunk = cap - offset;
        let len = (written - self.pos).min(in_chunk).min(max);
        let c = region.chunk_head(self.cur - 1).ok_or(ChainError::Corrupt)?;
        // The writer stored the fill length before publishing; it must cover what we take.
        if (c.len.load(Ordering::Relaxed) as u64) < offset + len {
            return Err(ChainError::Corrupt);
        }
        self.pos += len;
        Ok(Some(Piece {
            chunk: self.cur - 1,
            offset: offset as u32,
            len: len as u32,
        }))
    }

    /// Copies published bytes into `out`; returns how many (0 when none are published yet).
    pub fn read(
        &mut self,
        region: &Region,
        id: SlotId,
        dir: Direction,
        out: &mut [u8],
    ) -> Result<usize, ChainError> {
        let mut n = 0;
        while n < out.len() {
            let Some(p) = self.next_piece(region, id, dir, (out.len() - n) as u64)? else {
                break;
            };
            if !region.chunk_read(p.chunk, p.offset, &mut out[n..n + p.len as usize]) {
                return Err(ChainError::Corrupt);
            }
            n += p.len as usize;
        }
        Ok(n)
    }

    /// The reader is done with every byte before `done` (at most what it was handed): frees
    /// the chunks wholly before it that have a successor, and publishes the credit. Returns
    /// true if it freed any (the writer may be waiting for that).
    pub fn release(&mut self, region: &Region, id: SlotId, dir: Direction, done: u64) -> bool {
        let Some(e) = ends(region, id, dir) else {
            return false;
        };
        let g = region.geometry();
        let cap = g.chunk_data() as u64;
        let done = done.min(self.pos);
        let mut any = false;
        while self.freed + cap <= done {
            let head = e.anchor.load(Ordering::Relaxed);
            if head == 0 || head > g.chunks {
                break;
            }
            let Some(c) = region.chunk_head(head - 1) else {
                break;
            };
            // Acquire: pairs with the writer's Release when it linked the successor; after
            // it, the writer never touches this chunk again.
            let next = c.next.load(Ordering::Acquire);
            if next == 0 || next > g.chunks {
                break;
            }
            // Move the anchor first: if we die now, the slot's release frees from `next`
            // (this one chunk is lost, never freed twice).
            e.anchor.store(next, Ordering::Relaxed);
            c.next.store(0, Ordering::Relaxed);
            let h = region.header();
            h.stats.chunks_in_use.fetch_sub(1, Ordering::Relaxed);
            freelist::push(&h.chunk_free, g.chunks, head - 1, |i| {
                region.chunk_head(i).map(|c| &c.next_free)
            });
            if self.cur == head && self.cur_start == self.freed {
                // The next `next_piece` will step from here; keep it reachable.
                self.cur = next;
                self.cur_start += cap;
            }
            self.freed += cap;
            any = true;
        }
        if any {
            // Release: pairs with the writer's Acquire in `room`.
            e.consumed.store(self.freed, Ordering::Release);
        }
        any
    }
}

/// Writes a whole message of `parts` on a fresh stream and publishes it, ignoring the window:
/// for messages the caller knows to be small (or a test's own geometry). Returns its length.
pub fn write_all(
    region: &Region,
    id: SlotId,
    dir: Direction,
    parts: &[&[u8]],
) -> Result<u64, ChainError> {
    let mut w = StreamWriter::new();
    for p in parts {
        w.append(region, id, dir, p)?;
    }
    w.publish(region, id, dir);
    Ok(w.written())
}

#[cfg(any(test, feature = "testing"))]
/// Reads the first `len` bytes of a stream none of which has been freed yet; an error if fewer
/// are published or anything read is inconsistent.
pub fn read_all(
    region: &Region,
    id: SlotId,
    dir: Direction,
    len: u64,
) -> Result<Vec<u8>, ChainError> {
    if len > region.geometry().region_size() {
        return Err(ChainError::Corrupt);
    }
    let mut out = vec![0u8; len as usize];
    let n = StreamReader::new().read(region, id, dir, &mut out)?;
    if n as u64 != len {
        return Err(ChainError::Corrupt);
    }
    Ok(out)
}

/// A pool worker's wait for progress on slot `id` (request bytes, response credit, or a state
/// change): sleeps until nginx signals or `limit` passes, unless `ready` already holds.
pub fn worker_wait(
    region: &Region,
    id: SlotId,
    limit: std::time::Duration,
    ready: impl Fn() -> bool,
) {
    let Some(s) = region.slot(id.index) else {
        return;
    };
    s.worker_waiting.store(1, Ordering::SeqCst);
    // SeqCst fence: pairs with the one in `notify_worker` (Dekker): either nginx sees our flag
    // and bumps the word, or we see its progress in `ready`.
    fence(Ordering::SeqCst);
    let seq = s.worker_seq.load(Ordering::SeqCst);
    if !ready() {
        let _ = crate::sys::futex_wait(&s.worker_seq, seq, Some(limit));
    }
    s.worker_waiting.store(0, Ordering::Relaxed);
}

/// nginx: wakes the pool worker of slot `id` if it waits for progress.
pub fn notify_worker(region: &Region, id: SlotId) {
    let Some(s) = region.slot(id.index) else {
        return;
    };
    // SeqCst fence: see `worker_wait`.
    fence(Ordering::SeqCst);
    if s.worker_waiting.load(Ordering::SeqCst) != 0 {
        s.worker_seq.fetch_add(1, Ordering::SeqCst);
        let _ = crate::sys::futex_wake(&s.worker_seq, 1);
    }
}

/// nginx: asks for an eventfd wake-up at the next progress on slot `id`. The caller must look
/// at the slot again after this (the progress may have happened just before).
pub fn want_nginx_wake(region: &Region, id: SlotId) {
    if let Some(s) = region.slot(id.index) {
        s.nginx_waiting.store(1, Ordering::SeqCst);
        // SeqCst fence: pairs with the one in `nginx_wants_wake`.
        fence(Ordering::SeqCst);
    }
}

/// Pool worker, after progress on slot `id`: true if the nginx worker asked to be told (the
/// flag is cleared; the caller then wakes its connection). For a fan-out task the waiting
/// party is its caller, woken here (false: no connection to wake).
pub fn nginx_wants_wake(region: &Region, id: SlotId) -> bool {
    let Some(s) = region.slot(id.index) else {
        return false;
    };
    fence(Ordering::SeqCst);
    let wants = s.nginx_waiting.load(Ordering::SeqCst) != 0
        && s.nginx_waiting.swap(0, Ordering::SeqCst) != 0;
    if wants {
        if crate::slot::is_task(s) {
            crate::slot::wake_caller(region, s);
            return false;
        }
        crate::slot::post_completion(region.pool_side(), s.conn.load(Ordering::Relaxed), id);
    }
    wants
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::Geometry;
    use crate::slot;

    fn region() -> Region {
        Region::create("s", Geometry::for_tests(2, 64), 1).unwrap()
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_stream_larger_than_the_arena_passes_within_the_window() {
        let r = region();
        let id = slot::alloc(r.nginx_side(), 0, 1).unwrap();
        let data = pattern(300_000); // ~4.6x the whole arena
        let window = r.geometry().stream_window();
        let (mut w, mut rd) = (StreamWriter::new(), StreamReader::new());
        let (mut sent, mut got) = (0usize, Vec::new());
        let mut buf = vec![0u8; 777];
        while got.len() < data.len() {
            let room = w.room(&r, id, Direction::Request) as usize;
            let n = room.min(data.len() - sent).min(5000);
            w.append(&r, id, Direction::Request, &data[sent..sent + n])
                .unwrap();
            sent += n;
            w.publish(&r, id, Direction::Request);
            assert!(
                w.written() - r.slot(0).unwrap().req_consumed.load(Ordering::Relaxed) <= window
            );
            let k = rd.read(&r, id, Direction::Request, &mut buf).unwrap();
            got.extend_from_slice(&buf[..k]);
            rd.release(&r, id, Direction::Request, rd.position());
            let in_use = r.header().stats.chunks_in_use.load(Ordering::Relaxed);
            assert!(in_use * 1024 <= window + 2 * 1024, "{in_use} chunks in use");
        }
        assert_eq!(got, data);
        assert!(slot::release(r.nginx_side(), id));
        assert_eq!(r.header().stats.chunks_in_use.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_corrupt_anchor_or_length_is_an_error_not_a_read_out_of_bounds() {
        let r = region();
        let id = slot::alloc(r.nginx_side(), 0, 1).unwrap();
        let mut w = StreamWriter::new();
        w.append(&r, id, Direction::Response, &pattern(3000))
            .unwrap();
        w.publish(&r, id, Direction::Response);
        let s = r.slot(0).unwrap();
        s.resp_head.store(9999, Ordering::Relaxed);
        let mut out = vec![0u8; 3000];
        assert_eq!(
            StreamReader::new().read(&r, id, Direction::Response, &mut out),
            Err(ChainError::Corrupt)
        );
        s.resp_written.store(u64::MAX, Ordering::Relaxed);
        s.resp_head.store(1, Ordering::Relaxed);
        let mut rd = StreamReader::new();
        let mut big = vec![0u8; 100_000];
        assert!(rd.read(&r, id, Direction::Response, &mut big).is_err());
    }
}
