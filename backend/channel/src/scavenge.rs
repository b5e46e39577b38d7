//! Returning arena chunks that a process took with it when it died, at a moment the pool is idle.
//!
//! Whole chains are never lost: each hangs from a slot's anchor, and whoever reclaims the slot
//! frees them. But a process killed between taking a chunk off the free list and linking it, or
//! between unlinking one and pushing it back, leaves that one chunk in neither place. Nothing
//! marks it, because marking would be a second step with the same window.
//!
//! So poold looks for such chunks when no slot is held: every slot is on the slot free list. In
//! that state no live process can hold or touch a chunk (every chunk operation happens for a
//! slot its process holds, and a slot goes back on its list only after its chains are freed),
//! so every chunk must be on the chunk free list, and one that is not was lost. The slot free
//! list's head carries a tag that grows on every push and pop: if it is the same before and
//! after the look, no slot was taken or returned in between, so nothing moved while we looked.
//! A lost chunk cannot be taken by anyone (it is on no list), so returning it after the look
//! races with nobody.
//!
//! Under constant load the pool is never idle and a lost chunk waits for the next lull; a chunk
//! is lost only by a process killed inside a window of a few instructions.

use crate::freelist;
use crate::region::Region;
use crate::sync::Ordering;

/// Why [`lost_chunks`] found nothing to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotNow {
    /// A slot is held (a request in flight, or a slot lost with its process): not idle.
    Busy,
    /// A slot was taken or returned while we looked.
    Moved,
    /// A free list is longer than its table or loops: a corrupt region.
    Corrupt,
}

/// Puts every chunk that is on no free list back on the chunk free list, if the pool is idle;
/// returns how many (poold, after a process died).
pub fn return_lost_chunks(region: &Region) -> Result<u32, NotNow> {
    return_lost_chunks_racing(region, || {})
}

/// [`return_lost_chunks`], with `meanwhile` run between the look and its check (for tests: what
/// another process might do at the worst moment).
fn return_lost_chunks_racing(region: &Region, meanwhile: impl FnOnce()) -> Result<u32, NotNow> {
    let lost = lost_chunks(region, meanwhile)?;
    let h = region.header();
    let g = region.geometry();
    for &index in &lost {
        if let Some(c) = region.chunk_head(index) {
            c.next.store(0, Ordering::Relaxed);
            c.len.store(0, Ordering::Relaxed);
        }
        freelist::push(&h.chunk_free, g.chunks, index, |i| {
            region.chunk_head(i).map(|c| &c.next_free)
        });
    }
    Ok(lost.len() as u32)
}

/// The chunks on no free list while every slot is free, or why it cannot tell now. Also sets the
/// `chunks_in_use` count right (a process may have died between a free-list change and the count).
fn lost_chunks(region: &Region, meanwhile: impl FnOnce()) -> Result<Vec<u32>, NotNow> {
    let g = region.geometry();
    let h = region.header();
    // The count is only a hint (a death can skew it), but a pool with requests in flight is
    // the common case after a death, and it saves walking every slot on each try.
    if h.stats.slots_in_use.load(Ordering::Relaxed) != 0 {
        return Err(NotNow::Busy);
    }
    // Acquire: pairs with the Release of the last slot push, so the chunk pushes that process
    // made before returning its slot (in `recycle`) are visible to the walk below.
    let before = h.slot_free.load(Ordering::Acquire);
    let free_slots = walk(before as u32, g.slots, |i| {
        region.slot(i).map(|s| s.next_free.load(Ordering::Relaxed))
    })?;
    if free_slots.iter().filter(|f| **f).count() != g.slots as usize {
        return Err(NotNow::Busy);
    }
    // Acquire: pairs with the chunk pushes' Release (their links are what we follow).
    let chunk_head = h.chunk_free.load(Ordering::Acquire);
    let on_list = walk(chunk_head as u32, g.chunks, |i| {
        region
            .chunk_head(i)
            .map(|c| c.next_free.load(Ordering::Relaxed))
    })?;
    let counted = h.stats.chunks_in_use.load(Ordering::Relaxed);
    meanwhile();
    // The head again, by a compare-and-swap that writes back what it finds: a read-modify-write
    // always reads the newest value in the head's modification order, so if it still equals
    // `before`, no slot was taken or returned since we read `before` (every change bumps the
    // tag), and so no chunk moved while we walked. A plain load could, in the memory model,
    // return a value older than a pop whose chunk operations our walk did not see.
    // AcqRel/Acquire: as the free list's own pops.
    if h.slot_free
        .compare_exchange(before, before, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(NotNow::Moved);
    }
    // Idle, so the true count is 0; subtract what we read rather than store 0, because a
    // request may have started since.
    if counted != 0 {
        h.stats.chunks_in_use.fetch_sub(counted, Ordering::Relaxed);
    }
    Ok((0..g.chunks).filter(|&i| !on_list[i as usize]).collect())
}

/// Marks the entries of a free list that starts at `head_plus_one`, following `link`.
fn walk(
    head_plus_one: u32,
    count: u32,
    link: impl Fn(u32) -> Option<u32>,
) -> Result<Vec<bool>, NotNow> {
    let mut seen = vec![false; count as usize];
    let mut next = head_plus_one;
    while next != 0 {
        let index = next.checked_sub(1).filter(|i| *i < count);
        let Some(index) = index else {
            return Err(NotNow::Corrupt);
        };
        if std::mem::replace(&mut seen[index as usize], true) {
            return Err(NotNow::Corrupt);
        }
        next = link(index).ok_or(NotNow::Corrupt)?;
    }
    Ok(seen)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::Geometry;
    use crate::slot;
    use crate::stream::{self, Direction};

    fn region() -> Region {
        Region::create("s", Geometry::for_tests(4, 16), 1).unwrap()
    }

    fn in_use(r: &Region) -> u64 {
        r.header().stats.chunks_in_use.load(Ordering::Relaxed)
    }

    /// A process that dies right after taking a chunk off the free list: the chunk is on no
    /// list and the count says one in use.
    fn die_holding_a_chunk(r: &Region) -> u32 {
        let h = r.header();
        let i =
            freelist::pop(&h.chunk_free, 16, |i| r.chunk_head(i).map(|c| &c.next_free)).unwrap();
        h.stats.chunks_in_use.fetch_add(1, Ordering::Relaxed);
        i
    }

    #[test]
    fn a_chunk_lost_with_its_process_comes_back_when_idle_and_only_then() {
        let r = region();
        die_holding_a_chunk(&r);
        let id = slot::alloc(&r, 0, 1).unwrap();
        stream::write_all(&r, id, Direction::Request, &[&[7u8; 3000]]).unwrap();
        assert_eq!(return_lost_chunks(&r), Err(NotNow::Busy));
        assert_eq!(in_use(&r), 4);
        assert!(slot::release(&r, id));
        assert_eq!(return_lost_chunks(&r), Ok(1));
        assert_eq!(in_use(&r), 0);
        assert_eq!(return_lost_chunks(&r), Ok(0));
        // Every chunk can be taken again, each once.
        let id = slot::alloc(&r, 0, 1).unwrap();
        let whole = 16 * r.geometry().chunk_data() as usize;
        stream::write_all(&r, id, Direction::Request, &[&vec![1u8; whole]]).unwrap();
        assert_eq!(in_use(&r), 16);
        assert!(stream::write_all(&r, id, Direction::Response, &[b"x"]).is_err());
    }

    #[test]
    fn a_request_started_while_it_looked_is_not_taken_for_lost() {
        let r = region();
        let mut started = None;
        let got = return_lost_chunks_racing(&r, || {
            let id = slot::alloc(&r, 0, 1).unwrap();
            stream::write_all(&r, id, Direction::Request, &[b"mine"]).unwrap();
            started = Some(id);
        });
        assert_eq!(got, Err(NotNow::Moved));
        assert_eq!(in_use(&r), 1);
        // Even one that also ended meanwhile: its slot came and went, so the look is void.
        assert!(slot::release(&r, started.unwrap()));
        let got = return_lost_chunks_racing(&r, || {
            let id = slot::alloc(&r, 0, 1).unwrap();
            stream::write_all(&r, id, Direction::Request, &[b"again"]).unwrap();
            assert!(slot::release(&r, id));
        });
        assert_eq!(got, Err(NotNow::Moved));
        assert_eq!(return_lost_chunks(&r), Ok(0));
    }

    #[test]
    fn a_corrupt_free_list_is_reported_not_followed() {
        let r = region();
        // A loop: chunk 0's link points at chunk 0.
        r.header().chunk_free.store(1, Ordering::Relaxed);
        r.chunk_head(0)
            .unwrap()
            .next_free
            .store(1, Ordering::Relaxed);
        assert_eq!(return_lost_chunks(&r), Err(NotNow::Corrupt));
        r.chunk_head(0)
            .unwrap()
            .next_free
            .store(999, Ordering::Relaxed);
        assert_eq!(return_lost_chunks(&r), Err(NotNow::Corrupt));
    }
}
