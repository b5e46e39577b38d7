//! Whole chains of arena chunks: reading them (validated) and freeing them.

use crate::freelist;
use crate::region::Region;
use crate::sync::{AtomicU32, Ordering};

/// Why a chain could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// No free chunk left in the arena.
    ArenaFull,
    /// A link, length or count read from the region is out of bounds or inconsistent.
    Corrupt,
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChainError::ArenaFull => "shared-memory arena is full",
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

#[cfg(any(test, feature = "testing"))]
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::Geometry;
    use crate::slot;
    use crate::stream::{Direction, StreamWriter};

    fn region() -> Region {
        Region::create("c", Geometry::for_tests(4, 64), 1).unwrap()
    }

    fn written(r: &Region, data: &[u8]) -> u32 {
        let id = slot::alloc(r.nginx_side(), 0, 1).unwrap();
        let mut w = StreamWriter::new();
        w.append(r, id, Direction::Request, data).unwrap();
        w.publish(r, id, Direction::Request);
        r.slot(id.index)
            .unwrap()
            .req_head
            .swap(0, Ordering::Relaxed)
    }

    #[test]
    fn round_trip_across_chunks_and_free_everything() {
        let r = region();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let head = written(&r, &data);
        assert_eq!(read_chain(&r, head, 10_000).unwrap(), data);
        assert!(r.header().stats.chunks_in_use.load(Ordering::Relaxed) > 0);
        free_chain(&r, head);
        assert_eq!(r.header().stats.chunks_in_use.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_cycle_or_short_chain_is_corrupt_not_a_hang() {
        let r = region();
        let head = written(&r, &[1; 2000]);
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
