//! The bounded lock-free MPMC request queue (Vyukov's sequence-numbered cells).
//!
//! Producers are nginx workers, consumers are pool workers. Each cell's `seq` says whose turn it
//! is: `seq == pos` free for the producer at `pos`, `seq == pos + 1` full for the consumer at
//! `pos`. Positions only grow; the cell is `pos & (cap - 1)`.

use crate::region::Region;
use crate::sync::Ordering;

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    Full,
    Corrupt,
}

/// Appends `value`.
pub fn push(region: &Region, value: u64) -> Result<(), PushError> {
    let h = region.header();
    let cap = region.geometry().queue_cap() as u64;
    let mut pos = h.enqueue_pos.load(Ordering::Relaxed);
    loop {
        let cell = region
            .cell((pos & (cap - 1)) as u32)
            .ok_or(PushError::Corrupt)?;
        // Acquire: pairs with the consumer's Release that freed this cell, so our value store
        // cannot overtake its read of the previous value.
        let seq = cell.seq.load(Ordering::Acquire);
        let diff = seq as i64 - pos as i64;
        if diff == 0 {
            match h.enqueue_pos.compare_exchange_weak(
                pos,
                pos + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    cell.value.store(value, Ordering::Relaxed);
                    // Release: publishes `value` to the consumer that Acquires `seq`.
                    cell.seq.store(pos + 1, Ordering::Release);
                    return Ok(());
                }
                Err(seen) => pos = seen,
            }
        } else if diff < 0 {
            return Err(PushError::Full);
        } else {
            // Another producer took `pos` and has moved enqueue_pos on. If it has not, the
            // cell's sequence is corrupt: fail rather than spin on it forever.
            let now = h.enqueue_pos.load(Ordering::Relaxed);
            if now == pos {
                return Err(PushError::Corrupt);
            }
            pos = now;
        }
    }
}

/// Takes the oldest value, or `None` if the queue is empty.
pub fn pop(region: &Region) -> Option<u64> {
    let h = region.header();
    let cap = region.geometry().queue_cap() as u64;
    let mut pos = h.dequeue_pos.load(Ordering::Relaxed);
    loop {
        let cell = region.cell((pos & (cap - 1)) as u32)?;
        // Acquire: pairs with the producer's Release of `seq`, making `value` visible.
        let seq = cell.seq.load(Ordering::Acquire);
        let diff = seq as i64 - (pos + 1) as i64;
        if diff == 0 {
            match h.dequeue_pos.compare_exchange_weak(
                pos,
                pos + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let value = cell.value.load(Ordering::Relaxed);
                    // Release: hands the cell back to the producer one lap later.
                    cell.seq.store(pos + cap, Ordering::Release);
                    return Some(value);
                }
                Err(seen) => pos = seen,
            }
        } else if diff < 0 {
            return None;
        } else {
            // As in `push`: an unchanged position means a corrupt cell, not a racing consumer.
            let now = h.dequeue_pos.load(Ordering::Relaxed);
            if now == pos {
                return None;
            }
            pos = now;
        }
    }
}

/// Requests queued and not yet taken (approximate under concurrency).
pub fn depth(region: &Region) -> u64 {
    let h = region.header();
    let e = h.enqueue_pos.load(Ordering::Relaxed);
    let d = h.dequeue_pos.load(Ordering::Relaxed);
    e.saturating_sub(d)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::Geometry;

    #[test]
    fn fifo_and_full() {
        let g = Geometry {
            slots: 4,
            chunk_size: 1024,
            chunks: 8,
            max_conns: 1,
            max_workers: 1,
        };
        let r = Region::create("q", g, 1).unwrap();
        for i in 0..4 {
            push(&r, i).unwrap();
        }
        assert_eq!(push(&r, 9), Err(PushError::Full));
        assert_eq!(depth(&r), 4);
        for i in 0..4 {
            assert_eq!(pop(&r), Some(i));
        }
        assert_eq!(pop(&r), None);
        for lap in 0..10 {
            push(&r, lap).unwrap();
            assert_eq!(pop(&r), Some(lap));
        }
    }

    #[test]
    fn threads_lose_and_duplicate_nothing() {
        let g = Geometry {
            slots: 64,
            chunk_size: 1024,
            chunks: 8,
            max_conns: 1,
            max_workers: 1,
        };
        let r = std::sync::Arc::new(Region::create("q", g, 1).unwrap());
        let per = 20_000u64;
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        while push(&r, p * per + i).is_err() {
                            std::hint::spin_loop();
                        }
                    }
                })
            })
            .collect();
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let (r, taken) = (r.clone(), taken.clone());
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while taken.load(Ordering::Relaxed) < 2 * per {
                        if let Some(v) = pop(&r) {
                            got.push(v);
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    got
                })
            })
            .collect();
        producers.into_iter().for_each(|t| t.join().unwrap());
        let mut all: Vec<u64> = consumers
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        assert_eq!(all, (0..2 * per).collect::<Vec<_>>());
    }
}
