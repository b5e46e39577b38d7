//! Giving the arena's idle pages back to the kernel.
//!
//! The arena lives in a memfd: a page exists from its first write and then stays, in every
//! process that maps the region, for the pool's life. After a burst (a few large uploads, many
//! 1 MiB answers at once) the pages it wrote would stay resident however quiet the pool gets.
//! So pool worker 0, once it has had no work for [`QUIET`] and no request is in flight, gives
//! back the pages of the free chunks that have any (`MADV_REMOVE`: they read as zeros until
//! written again), as an allocator trims its heap. One worker only: trims running side by side
//! would hold more than half the arena between them.
//!
//! Which chunks: the free list is a stack, and a chunk only ever leaves it from the top and
//! comes back on top, so the chunks ever written sit above the ones never taken. A trim takes
//! chunks off the top while they are resident, discards their pages, and pushes every chunk it
//! took back in the order it found them, so the list keeps its shape. It holds at most half of
//! the arena at once, so a request that starts meanwhile still finds chunks.
//!
//! A chunk a trim holds is on no list; the scavenger ([`crate::scavenge`]) would take it for
//! lost. So a trim runs inside its worker's marker window ([`crate::slot`]), which the scavenger
//! waits out. A worker killed inside it leaves what it held to the scavenger, as any process
//! killed between a pop and a push does.

use crate::freelist;
use crate::region::Region;
use crate::slot::WorkerWindow;
use crate::sync::Ordering;

pub use crate::slot::QUIET;

/// Whether the chunk on top of the free list has pages in memory: something to give back.
pub fn pending(region: &Region) -> bool {
    // Relaxed: a hint; `run` looks at each chunk it takes.
    let top = region.header().chunk_free.load(Ordering::Relaxed) as u32;
    top.checked_sub(1)
        .is_some_and(|index| region.chunk_resident(index))
}

/// Pool worker `worker`: gives back the pages of the resident chunks at the top of the free
/// list. Returns how many chunks it discarded.
pub fn run(region: &Region, worker: u32) -> u32 {
    let g = region.geometry();
    let h = region.header();
    let link = |i: u32| region.chunk_head(i).map(|c| &c.next_free);
    let _window = WorkerWindow::open(region, worker);
    let mut held = Vec::new();
    let mut discarded = 0;
    while held.len() < (g.chunks / 2) as usize {
        let Some(index) = freelist::pop(&h.chunk_free, g.chunks, link) else {
            break;
        };
        held.push(index);
        if !region.chunk_resident(index) {
            break;
        }
        if region.chunk_discard(index) {
            discarded += 1;
        }
    }
    for index in held.into_iter().rev() {
        freelist::push(&h.chunk_free, g.chunks, index, link);
    }
    discarded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Geometry;
    use crate::sync::Ordering;

    fn region() -> Region {
        let g = Geometry {
            chunk_size: 16384,
            chunks: 64,
            ..Geometry::for_tests(8, 64)
        };
        Region::create("trim-test", g, std::process::id()).expect("region")
    }

    fn free_list(region: &Region) -> Vec<u32> {
        let mut out = Vec::new();
        let mut next = region.header().chunk_free.load(Ordering::Acquire) as u32;
        while let Some(index) = next.checked_sub(1) {
            out.push(index);
            next = region
                .chunk_head(index)
                .unwrap()
                .next_free
                .load(Ordering::Relaxed);
        }
        out
    }

    #[test]
    fn written_chunks_are_given_back_and_the_list_keeps_its_order() {
        let r = region();
        let h = r.header();
        let link = |i: u32| r.chunk_head(i).map(|c| &c.next_free);
        // A burst: six chunks taken, written, given back.
        let taken: Vec<u32> = (0..6)
            .map(|_| freelist::pop(&h.chunk_free, 64, link).unwrap())
            .collect();
        for &i in &taken {
            assert!(r.chunk_write(i, 0, &[7u8; 16384]));
        }
        for &i in taken.iter().rev() {
            freelist::push(&h.chunk_free, 64, i, link);
        }
        let before = free_list(&r);
        assert_eq!(before.len(), 64);
        assert!(pending(&r));
        assert_eq!(run(&r, 0), 6);
        assert_eq!(free_list(&r), before, "same chunks, same order");
        assert!(!pending(&r));
        for &i in &taken {
            assert!(!r.chunk_resident(i));
        }
        // The marker window is closed again, and a second trim finds nothing.
        assert_eq!(r.worker(0).unwrap().slot_op.load(Ordering::Relaxed) & 1, 0);
        assert_eq!(run(&r, 0), 0);
        assert_eq!(free_list(&r), before);
        // (Reading a discarded page makes it again, so this comes last.)
        for &i in &taken {
            let mut back = [1u8; 16];
            assert!(r.chunk_read(i, 0, &mut back));
            assert_eq!(back, [0u8; 16], "a discarded chunk reads as zeros");
        }
    }

    #[test]
    fn the_scavenger_does_not_take_a_trims_chunks_for_lost() {
        let r = region();
        let h = r.header();
        let link = |i: u32| r.chunk_head(i).map(|c| &c.next_free);
        // A trim in progress: its worker's window open, a chunk off the list in its hands.
        let window = WorkerWindow::open(&r, 1);
        let held = freelist::pop(&h.chunk_free, 64, link).unwrap();
        assert!(matches!(
            crate::scavenge::return_lost(&r),
            Err(crate::scavenge::NotNow::Busy)
        ));
        freelist::push(&h.chunk_free, 64, held, link);
        drop(window);
        let back = crate::scavenge::return_lost(&r).expect("idle");
        assert_eq!((back.slots, back.chunks), (0, 0));
        assert_eq!(free_list(&r).len(), 64);
    }

    #[test]
    fn a_trim_holds_at_most_half_the_arena() {
        let r = region();
        let h = r.header();
        let link = |i: u32| r.chunk_head(i).map(|c| &c.next_free);
        let all: Vec<u32> = (0..64)
            .map(|_| freelist::pop(&h.chunk_free, 64, link).unwrap())
            .collect();
        for &i in &all {
            assert!(r.chunk_write(i, 0, b"x"));
        }
        for &i in all.iter().rev() {
            freelist::push(&h.chunk_free, 64, i, link);
        }
        assert_eq!(run(&r, 0), 32);
        assert!(!pending(&r), "the top half is given back first");
        assert_eq!(free_list(&r).len(), 64);
    }
}
