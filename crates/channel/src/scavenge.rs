//! Returning the slots and arena chunks a process took with it when it died, at a moment the
//! pool is idle.
//!
//! Whole chains are never lost: each hangs from a slot's anchor, and whoever reclaims the slot
//! frees them. But a process killed between taking a chunk off the free list and linking it, or
//! between unlinking one and pushing it back, leaves that one chunk in neither place. Nothing
//! marks it, because marking would be a second step with the same window. Likewise a process
//! killed between taking a slot off its free list and marking it `Filling`, or between marking
//! one `Free` and pushing it back, leaves a slot that is `Free` yet on no list (with whatever its
//! chains still held).
//!
//! So poold looks for them when no request is in flight: every slot is either on the slot free
//! list or `Free` and off it, and no live process is inside a marker window (the two-step spans
//! above, bracketed by each process's `slot_op` marker, see [`crate::slot`]). In that state no
//! live process can hold or touch a chunk (every chunk operation happens for a slot its process
//! holds, and a slot goes back on its list only after its chains are freed) or be taking or
//! giving back a slot, so a `Free` slot off the list and a chunk off its list were lost. Two
//! checks make the look trustworthy: the markers read before and after it are equal and even (a
//! sequence lock's reader), and the slot free list's head carries a tag that grows on every push
//! and pop, so if it is the same before and after, no slot was taken or returned in between. A
//! lost slot or chunk cannot be taken by anyone (it is on no list), so returning it after the look
//! races with nobody.
//!
//! Under constant load the pool is never idle and what was lost waits for the next lull; it is
//! lost only by a process killed inside a window of a few instructions.

use crate::freelist;
use crate::region::Region;
use crate::sync::{fence, Ordering};

/// Why [`return_lost`] found nothing to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotNow {
    /// A request is in flight, or a live process is taking or giving back a slot: not idle.
    Busy,
    /// A slot was taken or returned while we looked.
    Moved,
    /// A free list is longer than its table or loops: a corrupt region.
    Corrupt,
}

/// What [`return_lost`] put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Returned {
    pub slots: u32,
    pub chunks: u32,
}

/// Puts every `Free` slot that is on no free list back on the slot free list, and every chunk
/// on no free list back on the chunk free list, if the pool is idle; returns how many (poold,
/// after a process died).
pub fn return_lost(region: &Region) -> Result<Returned, NotNow> {
    return_lost_racing(region, || {})
}

/// [`return_lost`], with `meanwhile` run between the look and its checks (for tests: what
/// another process might do at the worst moment).
fn return_lost_racing(region: &Region, meanwhile: impl FnOnce()) -> Result<Returned, NotNow> {
    let lost = look(region, meanwhile)?;
    let h = region.header();
    let g = region.geometry();
    for &index in &lost.chunks {
        if let Some(c) = region.chunk_head(index) {
            c.next.store(0, Ordering::Relaxed);
            c.len.store(0, Ordering::Relaxed);
        }
        freelist::push(&h.chunk_free, g.chunks, index, |i| {
            region.chunk_head(i).map(|c| &c.next_free)
        });
    }
    for &index in &lost.slots {
        if let Some(s) = region.slot(index) {
            // Their chains' chunks were on no list either: they are among those just returned.
            s.req_head.store(0, Ordering::Relaxed);
            s.resp_head.store(0, Ordering::Relaxed);
        }
        freelist::push(&h.slot_free, g.slots, index, |i| {
            region.slot(i).map(|s| &s.next_free)
        });
    }
    Ok(Returned {
        slots: lost.slots.len() as u32,
        chunks: lost.chunks.len() as u32,
    })
}

/// What one look found lost.
struct Lost {
    slots: Vec<u32>,
    chunks: Vec<u32>,
}

/// Every process's marker (nginx workers', then pool workers').
fn markers(region: &Region, order: Ordering) -> Vec<u32> {
    let g = region.geometry();
    let conns = (0..g.max_conns).filter_map(|i| region.conn(i).map(|c| &c.slot_op));
    let workers = (0..g.max_workers).filter_map(|i| region.worker(i).map(|w| &w.slot_op));
    conns.chain(workers).map(|m| m.load(order)).collect()
}

/// The slots and chunks lost while the pool is idle, or why it cannot tell now. Also sets the
/// in-use counts right (a process may have died between a free-list change and its count).
fn look(region: &Region, meanwhile: impl FnOnce()) -> Result<Lost, NotNow> {
    let g = region.geometry();
    let h = region.header();
    // Acquire: pairs with each marker's closing Release, so a window seen closed shows its
    // slot where it was left (`Filling`, or on the list).
    let marks = markers(region, Ordering::Acquire);
    if marks.iter().any(|m| m & 1 == 1) {
        return Err(NotNow::Busy);
    }
    // Acquire: pairs with the Release of the last slot push or pop, so what that process did
    // before (its chunk pushes in `recycle`, its marker's opening) is visible below.
    let before = h.slot_free.load(Ordering::Acquire);
    let on_list = walk(before as u32, g.slots, |i| {
        region.slot(i).map(|s| s.next_free.load(Ordering::Relaxed))
    })?;
    let mut slots = Vec::new();
    for index in (0..g.slots).filter(|&i| !on_list[i as usize]) {
        // Any state but Free off the list is a request in flight (or one poold has still to
        // reclaim): not idle. Acquire: see `crate::slot::view`.
        match crate::slot::view(region, index).and_then(|v| v.state) {
            Some(crate::slot::SlotState::Free) => slots.push(index),
            _ => return Err(NotNow::Busy),
        }
    }
    // Acquire: pairs with the chunk pushes' Release (their links are what we follow).
    let chunk_head = h.chunk_free.load(Ordering::Acquire);
    let chunks_on_list = walk(chunk_head as u32, g.chunks, |i| {
        region
            .chunk_head(i)
            .map(|c| c.next_free.load(Ordering::Relaxed))
    })?;
    let counted_chunks = h.stats.chunks_in_use.load(Ordering::Relaxed);
    let counted_slots = h.stats.slots_in_use.load(Ordering::Relaxed);
    meanwhile();
    // Acquire fence, then the markers again (a sequence lock's reader): if we saw anything a
    // process did inside a window (a slot it popped, a slot it marked Free), the fence pairs
    // with that window's opening fence and we read its odd marker or a later value.
    fence(Ordering::Acquire);
    if markers(region, Ordering::Relaxed) != marks {
        return Err(NotNow::Moved);
    }
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
    // Idle, so the true counts are 0; subtract what we read rather than store 0, because a
    // request may have started since.
    if counted_chunks != 0 {
        h.stats
            .chunks_in_use
            .fetch_sub(counted_chunks, Ordering::Relaxed);
    }
    if counted_slots != 0 {
        h.stats
            .slots_in_use
            .fetch_sub(counted_slots, Ordering::Relaxed);
    }
    Ok(Lost {
        slots,
        chunks: (0..g.chunks)
            .filter(|&i| !chunks_on_list[i as usize])
            .collect(),
    })
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

    fn slots_in_use(r: &Region) -> u64 {
        r.header().stats.slots_in_use.load(Ordering::Relaxed)
    }

    fn chunks(n: u32) -> Returned {
        Returned {
            slots: 0,
            chunks: n,
        }
    }

    /// Opens nginx connection `conn`'s marker window by hand, as `slot::alloc` does first.
    fn open_window(r: &Region, conn: u32) {
        let m = &r.conn(conn).unwrap().slot_op;
        m.store(m.load(Ordering::Relaxed) | 1, Ordering::Relaxed);
    }

    /// Takes a slot off its free list, as `slot::alloc` does second (before it marks it).
    fn pop_slot(r: &Region) -> u32 {
        let h = r.header();
        freelist::pop(&h.slot_free, 4, |i| r.slot(i).map(|s| &s.next_free)).unwrap()
    }

    /// Every slot can be taken (each once) and given back.
    fn assert_all_slots_usable(r: &Region) {
        let ids: Vec<_> = (0..4)
            .map(|_| slot::alloc(r.nginx_side(), 0, 1).unwrap())
            .collect();
        assert_eq!(slot::alloc(r.nginx_side(), 0, 1), None);
        let mut indexes: Vec<_> = ids.iter().map(|id| id.index).collect();
        indexes.sort();
        assert_eq!(indexes, [0, 1, 2, 3]);
        for id in ids {
            assert!(slot::release(r.nginx_side(), id));
        }
        assert_eq!((slots_in_use(r), in_use(r)), (0, 0));
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
        let id = slot::alloc(r.nginx_side(), 0, 1).unwrap();
        stream::write_all(&r, id, Direction::Request, &[&[7u8; 3000]]).unwrap();
        assert_eq!(return_lost(&r), Err(NotNow::Busy));
        assert_eq!(in_use(&r), 4);
        assert!(slot::release(r.nginx_side(), id));
        assert_eq!(return_lost(&r), Ok(chunks(1)));
        assert_eq!(in_use(&r), 0);
        assert_eq!(return_lost(&r), Ok(Returned::default()));
        // Every chunk can be taken again, each once.
        let id = slot::alloc(r.nginx_side(), 0, 1).unwrap();
        let whole = 16 * r.geometry().chunk_data() as usize;
        stream::write_all(&r, id, Direction::Request, &[&vec![1u8; whole]]).unwrap();
        assert_eq!(in_use(&r), 16);
        assert!(stream::write_all(&r, id, Direction::Response, &[b"x"]).is_err());
    }

    #[test]
    fn a_request_started_while_it_looked_is_not_taken_for_lost() {
        let r = region();
        let mut started = None;
        let got = return_lost_racing(&r, || {
            let id = slot::alloc(r.nginx_side(), 0, 1).unwrap();
            stream::write_all(&r, id, Direction::Request, &[b"mine"]).unwrap();
            started = Some(id);
        });
        assert_eq!(got, Err(NotNow::Moved));
        assert_eq!(in_use(&r), 1);
        // Even one that also ended meanwhile: its slot came and went, so the look is void.
        assert!(slot::release(r.nginx_side(), started.unwrap()));
        let got = return_lost_racing(&r, || {
            let id = slot::alloc(r.nginx_side(), 0, 1).unwrap();
            stream::write_all(&r, id, Direction::Request, &[b"again"]).unwrap();
            assert!(slot::release(r.nginx_side(), id));
        });
        assert_eq!(got, Err(NotNow::Moved));
        assert_eq!(return_lost(&r), Ok(Returned::default()));
    }

    #[test]
    fn a_slot_lost_by_an_nginx_worker_killed_while_taking_it_comes_back_once_reclaimed() {
        let r = region();
        let conn_gen = slot::open_conn(r.pool_side(), 1, 77).unwrap();
        // Killed between taking the slot off the list and marking it Filling.
        open_window(&r, 1);
        pop_slot(&r);
        // Until poold reclaims the dead worker, its open window keeps the look off.
        assert_eq!(return_lost(&r), Err(NotNow::Busy));
        slot::close_conn(r.pool_side(), 1);
        assert_eq!(slot::reclaim_conn(r.pool_side(), 1, conn_gen), 0);
        assert_eq!(
            return_lost(&r),
            Ok(Returned {
                slots: 1,
                chunks: 0
            })
        );
        assert_all_slots_usable(&r);
    }

    #[test]
    fn a_slot_lost_while_being_given_back_comes_back_with_its_chunks() {
        let r = region();
        let conn_gen = slot::open_conn(r.pool_side(), 1, 77).unwrap();
        let id = slot::alloc(r.nginx_side(), 1, conn_gen).unwrap();
        stream::write_all(&r, id, Direction::Request, &[&[7u8; 3000]]).unwrap();
        // Killed in `release` after marking the slot Free, before freeing its chains and
        // putting it back: the slot, its three chunks and both counts are left behind.
        open_window(&r, 1);
        let s = r.slot(id.index).unwrap();
        s.state.store(u64::from(id.gen) << 32, Ordering::Release);
        assert_eq!(return_lost(&r), Err(NotNow::Busy));
        slot::close_conn(r.pool_side(), 1);
        slot::reclaim_conn(r.pool_side(), 1, conn_gen);
        assert_eq!(
            return_lost(&r),
            Ok(Returned {
                slots: 1,
                chunks: 3
            })
        );
        assert_eq!((slots_in_use(&r), in_use(&r)), (0, 0));
        assert_all_slots_usable(&r);
        assert_eq!(return_lost(&r), Ok(Returned::default()));
    }

    #[test]
    fn a_slot_a_live_process_is_taking_is_not_taken_for_lost() {
        let r = region();
        // A live nginx worker between taking a slot and marking it: its slot is Free and on
        // no list, and only its marker says it is not lost.
        open_window(&r, 0);
        let index = pop_slot(&r);
        assert_eq!(return_lost(&r), Err(NotNow::Busy));
        // The same process opening its window while we look (after our first reading).
        let m = &r.conn(0).unwrap().slot_op;
        m.fetch_add(1, Ordering::Relaxed);
        let got = return_lost_racing(&r, || {
            open_window(&r, 0);
        });
        assert_eq!(got, Err(NotNow::Moved));
        // ... or opening and closing it again.
        m.fetch_add(1, Ordering::Relaxed);
        let got = return_lost_racing(&r, || {
            m.fetch_add(2, Ordering::Relaxed);
        });
        assert_eq!(got, Err(NotNow::Moved));
        // Were it returned, the live worker would mark a listed slot Filling: taken twice.
        let h = r.header();
        freelist::push(&h.slot_free, 4, index, |i| r.slot(i).map(|s| &s.next_free));
        assert_eq!(return_lost(&r), Ok(Returned::default()));
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
        assert_eq!(return_lost(&r), Err(NotNow::Corrupt));
        r.chunk_head(0)
            .unwrap()
            .next_free
            .store(999, Ordering::Relaxed);
        assert_eq!(return_lost(&r), Err(NotNow::Corrupt));
    }
}
