//! The shared-memory channel between nginx workers and pool workers.
//!
//! One region per pool, created by poold in a memfd and handed to every nginx worker over the
//! pool's unix socket ([`handshake`]). Inside the region ([`layout`]):
//!
//! * a table of request **slots**, each with a state word changed only by compare-and-swap and
//!   carrying a generation, so a stale completion is recognised and dropped ([`slot`]);
//! * a bounded lock-free MPMC **request queue** that idle pool workers pull from ([`queue`]);
//! * a **chunk arena** of fixed-size chunks on a lock-free free list; requests and responses are
//!   byte streams stored as chains of chunks ([`chain`]);
//! * one **connection** entry per attached nginx worker, with its wake-up flag.
//!
//! A chunk lost with a process killed mid-operation is returned at the next idle moment
//! ([`scavenge`]); the pages of written free chunks go back to the kernel once a worker has
//! been without work for a while ([`trim`]).
//!
//! Each side goes through one operation per step of a request: the nginx side writes it with
//! [`outgoing`] and reads the answer with [`answer`]; the pool side takes, reads and answers it
//! with [`incoming`]. The building blocks under them ([`slot`], [`stream`], [`chain`]) are what
//! those operations, poold's supervision and the tests' corruption checks are made of.
//!
//! No process ever holds a lock another process waits on. Every value read from the region is
//! validated before use: the other side may have crashed mid-write or be buggy, and a bad value
//! fails one request, never the reader.
//!
//! All `unsafe` code of the crate lives in [`region`] (the mapping and raw byte copies),
//! [`sys`] (futex) and [`handshake`] (descriptor passing); the rest is safe Rust over the
//! accessors they provide. Built with `--cfg loom`, the same protocol code runs over a heap
//! twin of the region under the loom model checker ([`sync`]).

pub mod answer;
pub mod chain;
pub mod freelist;
/// The corruption exerciser of the property test and the fuzz target (feature `testing`).
#[cfg(all(not(loom), any(test, feature = "testing")))]
pub mod fuzzing;
#[cfg(not(loom))]
pub mod handshake;
#[cfg(not(loom))]
pub mod incoming;
pub mod layout;
#[cfg(all(test, loom))]
mod loom_models;
pub mod message;
#[cfg(not(loom))]
pub mod outgoing;
pub mod queue;
#[cfg(not(loom))]
pub mod region;
#[cfg(loom)]
#[path = "region_loom.rs"]
pub mod region;
pub mod scavenge;
pub mod slot;
pub mod socket_file;
pub mod spin;
#[cfg(not(loom))]
pub mod status;
pub mod stream;
pub mod sync;
pub mod sys;
#[cfg(not(loom))]
pub mod trim;

pub use layout::Geometry;
pub use region::Region;
pub use slot::{SlotId, SlotState};
