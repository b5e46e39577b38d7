//! Byte streams stored as chains of arena chunks: writing, reading (validated), freeing.

use crate::freelist;
use crate::region::Region;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a chain could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// No free chunk left in the arena.
    ArenaFull,
    /// The message would exceed the region's per-message limit.
    TooLarge,
    /// A link, length or count read from the region is out of bounds or inconsistent.
    Corrupt,
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChainError::ArenaFull => "shared-memory arena is full",
            ChainError::TooLarge => "message exceeds the region's message limit",
            ChainError::Corrupt => "corrupt chunk chain in shared memory",
        })
    }
}

impl std::error::Error for ChainError {}

impl From<ChainError> for std::io::Error {
    fn from(e: ChainError) -> Self {
        std::io::Error::other(e)
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

/// Returns every chunk of the chain starting at `head_plus_one` (index + 1; 0 = none).
pub fn free_chain(region: &Region, head_plus_one: u32) {
    let g = region.geometry();
    let h = region.header();
    let mut next = head_plus_one;
    // A chain can hold each chunk at most once; more hops means a cycle.
    for _ in 0..g.chunks {
        if next == 0 || next > g.chunks {
            return;
        }
        let index = next - 1;
        let Some(c) = region.chunk_head(index) else {
            return;
        };
        next = c.next.swap(0, Ordering::Relaxed);
        h.stats.chunks_in_use.fetch_sub(1, Ordering::Relaxed);
        freelist::push(&h.chunk_free, g.chunks, index, |i| {
            region.chunk_head(i).map(|c| &c.next_free)
        });
    }
}

/// Frees the chain whose head `anchor` holds, one chunk at a time, moving the anchor past each
/// chunk before freeing it: if this process dies midway, whoever reclaims the slot frees the
/// rest from the anchor (at most the one chunk in hand is lost; never one freed twice).
pub fn free_anchored(region: &Region, anchor: &AtomicU32) {
    let g = region.geometry();
    let h = region.header();
    for _ in 0..g.chunks {
        let head = anchor.load(Ordering::Relaxed);
        if head == 0 || head > g.chunks {
            anchor.store(0, Ordering::Relaxed);
            return;
        }
        let index = head - 1;
        let Some(c) = region.chunk_head(index) else {
            return;
        };
        anchor.store(c.next.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        h.stats.chunks_in_use.fetch_sub(1, Ordering::Relaxed);
        freelist::push(&h.chunk_free, g.chunks, index, |i| {
            region.chunk_head(i).map(|c| &c.next_free)
        });
    }
    anchor.store(0, Ordering::Relaxed);
}

/// Appends bytes to a new chain, taking chunks as it goes.
pub struct ChainWriter<'r> {
    region: &'r Region,
    head: u32,
    tail: u32,
    tail_len: u32,
    total: u64,
    done: bool,
    anchor: Option<&'r AtomicU32>,
}

impl<'r> ChainWriter<'r> {
    pub fn new(region: &'r Region) -> Self {
        ChainWriter {
            region,
            head: 0,
            tail: 0,
            tail_len: 0,
            total: 0,
            done: false,
            anchor: None,
        }
    }

    /// A writer that records its first chunk in `anchor` (a slot's request or response head)
    /// as soon as it takes it: if the writing process dies, whoever reclaims the slot frees the
    /// chunks from there, so none leaks.
    pub fn anchored(region: &'r Region, anchor: &'r AtomicU32) -> Self {
        ChainWriter {
            anchor: Some(anchor),
            ..ChainWriter::new(region)
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Appends all of `data`.
    pub fn append(&mut self, mut data: &[u8]) -> Result<(), ChainError> {
        let g = self.region.geometry();
        if self.total + data.len() as u64 > g.message_limit() {
            return Err(ChainError::TooLarge);
        }
        let cap = g.chunk_data();
        while !data.is_empty() {
            if self.tail == 0 || self.tail_len == cap {
                let i = alloc_chunk(self.region).ok_or(ChainError::ArenaFull)?;
                let c = self.region.chunk_head(i).ok_or(ChainError::Corrupt)?;
                c.next.store(0, Ordering::Relaxed);
                c.len.store(0, Ordering::Relaxed);
                if self.tail == 0 {
                    self.head = i + 1;
                    if let Some(a) = self.anchor {
                        a.store(i + 1, Ordering::Relaxed);
                    }
                } else if let Some(t) = self.region.chunk_head(self.tail - 1) {
                    t.next.store(i + 1, Ordering::Relaxed);
                }
                self.tail = i + 1;
                self.tail_len = 0;
            }
            let n = ((cap - self.tail_len) as usize).min(data.len());
            if !self
                .region
                .chunk_write(self.tail - 1, self.tail_len, &data[..n])
            {
                return Err(ChainError::Corrupt);
            }
            self.tail_len += n as u32;
            if let Some(t) = self.region.chunk_head(self.tail - 1) {
                t.len.store(self.tail_len, Ordering::Relaxed);
            }
            self.total += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends the chain: returns (head index + 1, total length). The chunks now belong to whoever
    /// the caller publishes the head to (the publishing Release covers these Relaxed stores).
    pub fn finish(mut self) -> (u32, u64) {
        self.done = true;
        (self.head, self.total)
    }
}

impl Drop for ChainWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Some(a) = self.anchor {
                a.store(0, Ordering::Relaxed);
            }
            free_chain(self.region, self.head);
        }
    }
}

impl std::io::Write for ChainWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a whole chain of `len` bytes starting at `head_plus_one` into a new vector, checking
/// every link and length on the way.
pub fn read_chain(region: &Region, head_plus_one: u32, len: u64) -> Result<Vec<u8>, ChainError> {
    if len > region.geometry().message_limit() {
        return Err(ChainError::Corrupt);
    }
    let mut out = vec![0u8; len as usize];
    read_chain_into(region, head_plus_one, &mut out)?;
    Ok(out)
}

/// Fills `out` from the chain starting at `head_plus_one`, checking every link and length.
pub fn read_chain_into(
    region: &Region,
    head_plus_one: u32,
    out: &mut [u8],
) -> Result<(), ChainError> {
    let g = region.geometry();
    if out.len() as u64 > g.message_limit() {
        return Err(ChainError::Corrupt);
    }
    let mut filled = 0usize;
    let mut next = head_plus_one;
    let mut hops = 0u32;
    while filled < out.len() {
        if next == 0 || next > g.chunks || hops >= g.chunks {
            return Err(ChainError::Corrupt);
        }
        hops += 1;
        let index = next - 1;
        let c = region.chunk_head(index).ok_or(ChainError::Corrupt)?;
        let n = c.len.load(Ordering::Relaxed) as usize;
        next = c.next.load(Ordering::Relaxed);
        if n > g.chunk_data() as usize || n > out.len() - filled || (n == 0 && next != 0) {
            return Err(ChainError::Corrupt);
        }
        if !region.chunk_read(index, 0, &mut out[filled..filled + n]) {
            return Err(ChainError::Corrupt);
        }
        filled += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Geometry;

    fn region() -> Region {
        let g = Geometry {
            slots: 4,
            chunk_size: 1024,
            chunks: 64,
            max_conns: 1,
            max_workers: 1,
        };
        Region::create("c", g, 1).unwrap()
    }

    #[test]
    fn round_trip_across_chunks_and_free_everything() {
        let r = region();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut w = ChainWriter::new(&r);
        w.append(&data[..3]).unwrap();
        w.append(&data[3..]).unwrap();
        let (head, len) = w.finish();
        assert_eq!(len, 10_000);
        assert_eq!(read_chain(&r, head, len).unwrap(), data);
        assert!(r.header().stats.chunks_in_use.load(Ordering::Relaxed) > 0);
        free_chain(&r, head);
        assert_eq!(r.header().stats.chunks_in_use.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn over_the_limit_is_refused_and_dropped_writer_frees() {
        let r = region();
        let mut w = ChainWriter::new(&r);
        w.append(&[1; 5000]).unwrap();
        assert_eq!(w.append(&vec![0; 20_000]), Err(ChainError::TooLarge));
        drop(w);
        assert_eq!(r.header().stats.chunks_in_use.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_cycle_or_short_chain_is_corrupt_not_a_hang() {
        let r = region();
        let mut w = ChainWriter::new(&r);
        w.append(&[1; 2000]).unwrap();
        let (head, _) = w.finish();
        r.chunk_head(head - 1)
            .unwrap()
            .next
            .store(head, Ordering::Relaxed); // self loop
                                             // A cycle can only ever yield the requested number of (wrong) bytes, never a hang.
        let _ = read_chain(&r, head, 16_000);
        assert_eq!(read_chain(&r, head, 1 << 20), Err(ChainError::Corrupt));
        assert_eq!(read_chain(&r, 0, 10), Err(ChainError::Corrupt));
        assert_eq!(read_chain(&r, 9999, 10), Err(ChainError::Corrupt));
    }
}
