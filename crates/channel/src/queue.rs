//! Bounded lock-free MPMC rings (Vyukov's sequence-numbered cells): the request queue, the task
//! queue, and one completion ring per nginx connection.
//!
//! Request queue: producers are nginx workers, consumers are pool workers. Task queue: producers
//! and consumers are pool workers (fan-out, [`crate::slot::task`]). Completion ring: producers
//! are pool workers and poold, the consumer is one nginx worker.
//!
//! Each cell's sequence number says whose turn it is: `pos` free for the producer at `pos`,
//! `pos + 1` full for the consumer at `pos`. Positions only grow; the cell is `pos & (cap - 1)`.
//! A cell stores its sequence number minus its own index, so that a zero-filled region is an
//! empty ring: nothing is written at creation (the completion rings, one per possible
//! connection, then cost no memory until used).

use crate::layout::Cell;
use crate::region::Region;
use crate::sync::{AtomicU64, Ordering};

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    Full,
    Corrupt,
}

#[derive(Clone, Copy)]
enum Which {
    Requests,
    Tasks,
    Completions(u32),
}

/// One bounded ring in the region: its two positions and its cells.
pub struct Ring<'r> {
    region: &'r Region,
    which: Which,
    enqueue_pos: &'r AtomicU64,
    dequeue_pos: &'r AtomicU64,
    cap: u64,
}

impl<'r> Ring<'r> {
    /// The request queue (nginx workers push, pool workers pop).
    pub fn requests(region: &'r Region) -> Ring<'r> {
        let h = region.header();
        Ring {
            region,
            which: Which::Requests,
            enqueue_pos: &h.enqueue_pos,
            dequeue_pos: &h.dequeue_pos,
            cap: region.geometry().queue_cap() as u64,
        }
    }

    /// The task queue (pool workers push their fan-out tasks and pop others').
    pub fn tasks(region: &'r Region) -> Ring<'r> {
        let h = region.header();
        Ring {
            region,
            which: Which::Tasks,
            enqueue_pos: &h.task_enqueue_pos,
            dequeue_pos: &h.task_dequeue_pos,
            cap: region.geometry().queue_cap() as u64,
        }
    }

    /// The completion ring of nginx connection `conn` (pool workers and poold push the slots
    /// the nginx worker must look at; it pops them).
    pub fn completions(region: &'r Region, conn: u32) -> Option<Ring<'r>> {
        let c = region.conn(conn)?;
        Some(Ring {
            region,
            which: Which::Completions(conn),
            enqueue_pos: &c.enqueue_pos,
            dequeue_pos: &c.dequeue_pos,
            cap: region.geometry().completion_cap() as u64,
        })
    }

    fn cell(&self, i: u32) -> Option<&'r Cell> {
        match self.which {
            Which::Requests => self.region.cell(i),
            Which::Tasks => self.region.task_cell(i),
            Which::Completions(c) => self.region.completion_cell(c, i),
        }
    }

    /// Appends `value`.
    pub fn push(&self, value: u64) -> Result<(), PushError> {
        let mut pos = self.enqueue_pos.load(Ordering::Relaxed);
        loop {
            let i = (pos & (self.cap - 1)) as u32;
            let cell = self.cell(i).ok_or(PushError::Corrupt)?;
            // Acquire: pairs with the consumer's Release that freed this cell, so our value
            // store cannot overtake its read of the previous value.
            let seq = cell.seq.load(Ordering::Acquire).wrapping_add(i as u64);
            let diff = seq.wrapping_sub(pos) as i64;
            if diff == 0 {
                match self.enqueue_pos.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        cell.value.store(value, Ordering::Relaxed);
                        // Release: publishes `value` to the consumer that Acquires `seq`.
                        cell.seq.store(
                            pos.wrapping_add(1).wrapping_sub(i as u64),
                            Ordering::Release,
                        );
                        return Ok(());
                    }
                    Err(seen) => pos = seen,
                }
            } else if diff < 0 {
                return Err(PushError::Full);
            } else {
                // Another producer took `pos` and has moved the position on. If it has not,
                // the cell's sequence is corrupt: fail rather than spin on it forever.
                let now = self.enqueue_pos.load(Ordering::Relaxed);
                if now == pos {
                    return Err(PushError::Corrupt);
                }
                pos = now;
            }
        }
    }

    /// Takes the oldest value, or `None` if the ring is empty (or corrupt).
    pub fn pop(&self) -> Option<u64> {
        let mut pos = self.dequeue_pos.load(Ordering::Relaxed);
        loop {
            let i = (pos & (self.cap - 1)) as u32;
            let cell = self.cell(i)?;
            // Acquire: pairs with the producer's Release of `seq`, making `value` visible.
            let seq = cell.seq.load(Ordering::Acquire).wrapping_add(i as u64);
            let diff = seq.wrapping_sub(pos.wrapping_add(1)) as i64;
            if diff == 0 {
                match self.dequeue_pos.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let value = cell.value.load(Ordering::Relaxed);
                        // Release: hands the cell back to the producer one lap later.
                        cell.seq.store(
                            pos.wrapping_add(self.cap).wrapping_sub(i as u64),
                            Ordering::Release,
                        );
                        return Some(value);
                    }
                    Err(seen) => pos = seen,
                }
            } else if diff < 0 {
                return None;
            } else {
                // As in `push`: an unchanged position means a corrupt cell, not a racing
                // consumer.
                let now = self.dequeue_pos.load(Ordering::Relaxed);
                if now == pos {
                    return None;
                }
                pos = now;
            }
        }
    }

    /// Values pushed and not yet popped (approximate under concurrency).
    pub fn depth(&self) -> u64 {
        // Positions come from shared memory: wrapping arithmetic, never an overflow panic.
        let e = self.enqueue_pos.load(Ordering::Relaxed);
        let d = self.dequeue_pos.load(Ordering::Relaxed);
        e.saturating_sub(d)
    }
}

/// Appends `value` to the request queue.
pub fn push(region: &Region, value: u64) -> Result<(), PushError> {
    Ring::requests(region).push(value)
}

/// Takes the oldest request, or `None` if the queue is empty.
pub fn pop(region: &Region) -> Option<u64> {
    Ring::requests(region).pop()
}

/// Requests queued and not yet taken (approximate under concurrency).
pub fn depth(region: &Region) -> u64 {
    Ring::requests(region).depth()
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
