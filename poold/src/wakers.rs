//! Waking a lane that sleeps in `read_wait` from another thread (ABI 1.3 `waker` and `wake`),
//! and why a long-lived request should end now (`closing`).
//!
//! A lane reading an upgraded connection's body waits on its slot's futex, which nginx bumps
//! on every byte; the app's thread has news for it too (a WebSocket message to send). `wake`
//! sets the request's flag and then bumps the same futex ([`stream::notify_worker`]); the lane
//! looks at the flag after it armed its wait, so neither wake-up is lost. Tokens are looked up
//! in a table, never dereferenced: a stale or made-up one does nothing.

use ngx_pool_channel::slot::{self, SlotId};
use ngx_pool_channel::stream;
use ngx_pool_channel::Region;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

/// WebSocket close code for a worker that retires (RFC 6455 1001, "going away").
pub const GOING_AWAY: u32 = 1001;
/// WebSocket close code for a pool or nginx that restarts (IANA 1012, "service restart").
pub const RESTART: u32 = 1012;

/// Why this process's long-lived requests should end (0: they need not).
static CLOSING: AtomicU32 = AtomicU32::new(0);

/// The requests whose waker was asked for, by token (a worker may hold thousands of
/// WebSockets, each woken per message the app sends).
static TABLE: OnceLock<Mutex<HashMap<u64, Arc<RequestWake>>>> = OnceLock::new();

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

fn table() -> MutexGuard<'static, HashMap<u64, Arc<RequestWake>>> {
    TABLE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The region a pool worker serves, for wake-ups from threads that hold no borrow of it.
#[derive(Clone, Copy)]
struct RegionRef(*const Region);
// SAFETY: a `Region` is shared by the lanes' threads already (it is `Sync`); the pointer is
// only read through `get`, under its own rule.
unsafe impl Send for RegionRef {}
// SAFETY: as above.
unsafe impl Sync for RegionRef {}

impl RegionRef {
    fn get(&self) -> &Region {
        // SAFETY: made in `RequestWake::new` from the worker's region, which its process maps
        // and holds from before the first request until it exits (`Worker::run` and
        // `Lanes::run` never return); entries leave the table when their request ends.
        unsafe { &*self.0 }
    }
}

/// One request's wake-up state.
pub struct RequestWake {
    region: RegionRef,
    id: SlotId,
    woken: AtomicBool,
    /// The closing code `read_wait` last returned for (it returns once per change).
    seen_closing: AtomicU32,
    /// Its token, once given.
    token: OnceLock<u64>,
}

impl RequestWake {
    pub fn new(region: &Region, id: SlotId) -> RequestWake {
        RequestWake {
            region: RegionRef(region),
            id,
            woken: AtomicBool::new(false),
            seen_closing: AtomicU32::new(0),
            token: OnceLock::new(),
        }
    }

    fn wake(&self) {
        // SeqCst: the flag is seen by the lane's `interrupted`, which it asks after arming its
        // wait (`stream::worker_wait`'s fence pairs with `notify_worker`'s).
        self.woken.store(true, Ordering::SeqCst);
        stream::notify_worker(self.region.get(), self.id);
    }

    /// Why the request should end now (see the ABI's `closing`).
    pub fn closing(&self) -> u32 {
        let process = CLOSING.load(Ordering::SeqCst);
        if process != 0 {
            return process;
        }
        if slot::notice(self.region.get(), self.id) == slot::NOTICE_GOING_AWAY {
            return RESTART;
        }
        0
    }

    /// For `read_wait`: whether it should return without a byte (only looks).
    pub fn interrupted(&self) -> bool {
        self.woken.load(Ordering::SeqCst)
            || self.closing() != self.seen_closing.load(Ordering::SeqCst)
    }

    /// `read_wait` returns for the interruption: it is taken, before the caller looks at why.
    pub fn take(&self) {
        self.woken.store(false, Ordering::SeqCst);
        self.seen_closing.store(self.closing(), Ordering::SeqCst);
    }
}

/// A token for `req`, entered in the table until [`forget`] (the request's end).
pub fn token(req: &Arc<RequestWake>) -> u64 {
    *req.token.get_or_init(|| {
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed) + 1;
        table().insert(token, req.clone());
        token
    })
}

/// Takes `req` out of the table: its token does nothing from now on.
pub fn forget(req: &Arc<RequestWake>) {
    if let Some(token) = req.token.get() {
        table().remove(token);
    }
}

/// Wakes the request named by `token`, if it is still running.
pub fn wake(token: u64) {
    let found = table().get(&token).cloned();
    if let Some(w) = found {
        w.wake();
    }
}

/// This process's long-lived requests are to end with `code` ([`GOING_AWAY`], [`RESTART`]):
/// every request that asked for a waker is woken to see it.
pub fn close_all(code: u32) {
    if CLOSING
        .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return;
    }
    let all: Vec<Arc<RequestWake>> = table().values().cloned().collect();
    for w in all {
        w.wake();
    }
}
