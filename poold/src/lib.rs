//! poold: ngx-pool's pool manager and the handler SDK its workers run.
//!
//! poold creates a pool's shared-memory region, listens on the pool's unix socket for nginx
//! workers, forks a bounded set of pool workers from its preloaded state (the handler is loaded
//! before forking), supervises them, and reclaims the work of any party that dies. It is not on
//! the data path: pool workers take requests straight from the region.

pub mod builtin;
pub mod cgroup;
pub mod config;
pub mod exchange;
pub mod fanout;
pub mod handler;
pub mod host;
pub mod lanes;
pub mod log;
pub mod reaper;
pub mod run;
pub mod supervisor;
pub mod sys;
pub mod wakers;
pub mod watchdog;
pub mod worker;
