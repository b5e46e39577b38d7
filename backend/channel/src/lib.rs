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
//! No process ever holds a lock another process waits on. Every value read from the region is
//! validated before use: the other side may have crashed mid-write or be buggy, and a bad value
//! fails one request, never the reader.
//!
//! All `unsafe` code of the crate lives in [`region`] (the mapping and raw byte copies) and
//! [`sys`] (futex); the rest is safe Rust over the accessors they provide.

pub mod chain;
pub mod freelist;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod layout;
pub mod message;
pub mod queue;
pub mod region;
pub mod slot;
pub mod status;
pub mod stream;
pub mod sys;

pub use layout::Geometry;
pub use region::Region;
pub use slot::{SlotId, SlotState};
