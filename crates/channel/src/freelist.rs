//! A lock-free free list (Treiber stack) of table indices, shared by slots and chunks.
//!
//! The head word packs `tag << 32 | (index + 1)`; 0 in the low half means empty. The tag grows
//! on every successful change, so a pop that read a stale link (ABA) fails its compare-and-swap.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

const EMPTY: u32 = 0;

/// Pops one index, or `None` when the list is empty (or its head is corrupt).
pub fn pop<'a>(
    head: &AtomicU64,
    count: u32,
    link: impl Fn(u32) -> Option<&'a AtomicU32>,
) -> Option<u32> {
    // Acquire: synchronises with the Release of the `push` that published the head, so the
    // link we read below is the one that pusher wrote.
    let mut cur = head.load(Ordering::Acquire);
    loop {
        let plus_one = cur as u32;
        if plus_one == EMPTY || plus_one > count {
            return None;
        }
        let index = plus_one - 1;
        // Relaxed: a stale value is harmless, the tagged CAS below rejects it.
        let next = link(index)?.load(Ordering::Relaxed);
        if next > count {
            return None;
        }
        let new = (((cur >> 32) + 1) << 32) | next as u64;
        // AcqRel on success: Acquire pairs with other pushers' Release; Release orders our
        // read of `link` before anyone may reuse the entry.
        match head.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(index),
            Err(seen) => cur = seen,
        }
    }
}

/// Pushes `index` (which the caller owns and no longer uses) back on the list.
pub fn push<'a>(
    head: &AtomicU64,
    count: u32,
    index: u32,
    link: impl Fn(u32) -> Option<&'a AtomicU32>,
) {
    let Some(my_link) = link(index) else { return };
    debug_assert!(index < count);
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        my_link.store(cur as u32, Ordering::Relaxed);
        let new = (((cur >> 32) + 1) << 32) | (index as u64 + 1);
        // Release: publishes our link store (and everything we did with the entry) to the next
        // popper's Acquire.
        match head.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pops_every_index_once_then_empty() {
        let links: Vec<AtomicU32> = (0..8u32)
            .map(|i| AtomicU32::new(if i < 7 { i + 2 } else { 0 }))
            .collect();
        let head = AtomicU64::new(1);
        let link = |i: u32| links.get(i as usize);
        let mut got: Vec<u32> = std::iter::from_fn(|| pop(&head, 8, link)).collect();
        got.sort();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        push(&head, 8, 3, link);
        assert_eq!(pop(&head, 8, link), Some(3));
        assert_eq!(pop(&head, 8, link), None);
    }

    #[test]
    fn corrupt_head_reads_as_empty() {
        let links: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
        let head = AtomicU64::new(99);
        assert_eq!(pop(&head, 4, |i| links.get(i as usize)), None);
    }
}
