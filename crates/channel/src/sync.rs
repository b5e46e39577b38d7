//! The atomics the channel is built on: std's, or loom's when model checking (`--cfg loom`).
//!
//! Under loom the region lives on the heap ([`crate::region`] is swapped for a loom twin) and
//! futexes become yields, so loom can explore every interleaving of the queue, the slot state
//! machine and the streams with the very code the module and poold run.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
