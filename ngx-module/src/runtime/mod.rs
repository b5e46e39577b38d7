//! Per-worker state: each nginx worker's attachment to each pool, and its event-loop hooks.
//!
//! A worker attaches to a pool by connecting to its socket, sending its eventfd and receiving the
//! region's memfd ([`ngx_pool_channel::handshake`]). Both descriptors then join nginx's event
//! loop as connections (`ngx_get_connection`, per the development guide's "Events" section):
//! the eventfd fires when pool workers completed requests of ours, the socket fires only when
//! poold goes away, and then every request in flight is answered 502 at once.
//!
//! nginx workers are single-threaded, so the state is a thread-local; no borrow of it is held
//! while calling back into nginx (finalizing a request can re-enter us through cleanups).

pub mod attach;

use crate::directives::{Module, PoolEntry};
use crate::log::{cycle_log, log};
use nginx_sys::{
    ngx_connection_t, ngx_cycle_t, ngx_event_t, ngx_http_request_t, NGX_LOG_ALERT, NGX_LOG_ERR,
};
use ngx::http::HttpModuleMainConf;
use ngx_pool_channel::handshake::recv_frame;
use ngx_pool_channel::slot::{self, SlotId, SlotState};
use ngx_pool_channel::Region;
use nix::sys::socket::MsgFlags;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

/// A request of ours that a pool holds.
pub struct InFlight {
    pub gen: u32,
    pub r: *mut ngx_http_request_t,
    /// Whom to tell of what happens to it (the runtime does not know what a request is).
    pub told: &'static Tell,
}

/// What the runtime tells a request in flight: the pool made progress on it (its eventfd), or
/// the pool's poold went away with it.
pub struct Tell {
    pub progress: fn(*mut ngx_http_request_t),
    pub lost: fn(*mut ngx_http_request_t),
}

/// A live attachment.
pub struct Attached {
    /// Shared with the contexts of requests whose buffers may point into it.
    pub region: Rc<Region>,
    pub conn: u32,
    pub conn_gen: u32,
    /// Requests queued in this event-loop iteration whose wake-up is still owed.
    pub wakes_owed: u32,
    pub(crate) socket_c: *mut ngx_connection_t,
    pub(crate) eventfd_c: *mut ngx_connection_t,
    /// poold was told this region is corrupt (once is enough: it starts a new generation).
    pub(crate) reported_corrupt: bool,
}

/// A request of pool `i` met what a region written over would explain (a broken stream, a
/// slot in a state nobody sets, no slot to be had): if the region fails its checks, say so
/// once and ask poold for a new one. poold starts a new generation; this worker attaches to it
/// as after any poold death. Cheap (a few loads), so callers need not be sure.
pub fn suspect_corruption(i: usize) {
    report_corruption(i, None);
}

/// As [`suspect_corruption`], with `evidence` of corruption the region's checks cannot see
/// (a state no correct process makes): reported without them, and poold trusts it (only
/// nginx's workers can send it).
pub fn report_corruption(i: usize, evidence: Option<&str>) {
    let report = with_pool(i, |p| {
        let a = p.attached.as_mut()?;
        if a.reported_corrupt {
            return None;
        }
        let why = match evidence {
            Some(e) => e.to_string(),
            None => a.region.verify().err()?,
        };
        a.reported_corrupt = true;
        Some((p.name.clone(), why, a.socket_c))
    })
    .ok()
    .flatten();
    if let Some((name, why, c)) = report {
        log(
            NGX_LOG_ERR,
            &format!("pool \"{name}\": its shared region is corrupt ({why}); poold is told to start a new one"),
        );
        crate::runtime::attach::report_corrupt(c);
    }
}

/// One pool as this worker sees it.
pub struct PoolRt {
    pub name: String,
    /// The pool's `handler=`, for log lines about what it sent.
    pub handler: String,
    pub socket: PathBuf,
    pub timeout_ms: u64,
    pub queue_timeout_ms: Option<u64>,
    pub attached: Option<Attached>,
    /// A handshake under way ([`crate::runtime::attach`]).
    pub(crate) attaching: Option<crate::runtime::attach::Attaching>,
    pub(crate) next_attempt: Option<Instant>,
    pub(crate) last_failure_logged: Option<Instant>,
    /// Attached once in this worker's life: a pool that stops answering after that is a fault;
    /// before it, a slow start (an app's import) for a while.
    pub(crate) ever_attached: bool,
    /// Since when the attempts fail (none once attached).
    pub(crate) failing_since: Option<Instant>,
    /// Retries the attachment while no request asks ([`crate::runtime::attach`]).
    pub(crate) retry_timer: *mut ngx_event_t,
    pub inflight: InFlightMap,
}

thread_local! {
    static POOLS: RefCell<Vec<PoolRt>> = const { RefCell::new(Vec::new()) };
    /// The posted event that wakes pool workers once per event-loop iteration.
    static WAKE_EVENT: std::cell::Cell<*mut ngx_event_t> = const { std::cell::Cell::new(std::ptr::null_mut()) };
    /// A queued request could not be counted as owing a wake-up: wake a worker of every pool.
    static WAKE_ALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A request of pool `i` was queued: pool workers are woken when this event-loop iteration has
/// handled its other events (a posted event, per the development guide's "Events" section), so
/// a burst of requests costs one futex call and the workers find them all in the queue.
pub fn wake_workers_later(i: usize) {
    let owed = with_pool(i, |p| {
        if let Some(a) = &mut p.attached {
            a.wakes_owed += 1;
        }
    });
    if owed.is_err() {
        // Not counted: the posted event then wakes a worker of every pool, so the request is
        // never left in the queue with every worker asleep.
        WAKE_ALL.with(|w| w.set(true));
    }
    let ev = WAKE_EVENT.with(|w| w.get());
    if ev.is_null() {
        return; // no pools in this process: nothing can have been queued
    }
    // SAFETY: `ev` is the event leaked in `on_init_process`; nginx's posted queue is a global
    // of this thread.
    unsafe { nginx_sys::ngx_post_event(ev, std::ptr::addr_of_mut!(nginx_sys::ngx_posted_events)) };
}

unsafe extern "C" fn on_wake_event(_ev: *mut ngx_event_t) {
    crate::edge::guard("wake", || (), wake_owed);
}

fn wake_owed() {
    let all = WAKE_ALL.with(|w| w.replace(false));
    let done = POOLS.with(|p| {
        let Ok(mut pools) = p.try_borrow_mut() else {
            return false;
        };
        for a in pools.iter_mut().filter_map(|p| p.attached.as_mut()) {
            let n = if all {
                a.wakes_owed.max(1)
            } else {
                a.wakes_owed
            };
            if n > 0 {
                slot::wake_workers(a.region.nginx_side(), n);
                a.wakes_owed = 0;
            }
        }
        true
    });
    if !done {
        // In use (a bug, see `with_pool`): try again in this event-loop iteration's next round.
        WAKE_ALL.with(|w| w.set(all));
        let ev = WAKE_EVENT.with(|w| w.get());
        // SAFETY: the event leaked in `on_init_process`, re-posted on nginx's queue.
        unsafe {
            nginx_sys::ngx_post_event(ev, std::ptr::addr_of_mut!(nginx_sys::ngx_posted_events))
        };
    }
}

/// Why [`with_pool`] could not run its closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolAccess {
    /// No pool has that index (this worker has none, or the configuration has fewer).
    Unknown,
    /// The pools' state is in use further up this call stack: a closure given to `with_pool`
    /// called back into code that wants it. A bug; logged at alert where it happened.
    Busy,
}

thread_local! {
    /// In-flight entries whose removal found the state busy: removed by the next `with_pool`
    /// of their pool before its closure runs, so no closure ever sees a request that is gone.
    static DEFERRED_REMOVALS: RefCell<Vec<(usize, u32, u32, *mut ngx_http_request_t)>> =
        const { RefCell::new(Vec::new()) };
}

/// Runs `f` on pool `i`. The closures given here only read and change the pool's state: they
/// never call into nginx (finalizing a request runs cleanups that come back here), so nesting
/// is a bug, reported as [`PoolAccess::Busy`] with an alert naming the caller.
#[track_caller]
pub fn with_pool<T>(i: usize, f: impl FnOnce(&mut PoolRt) -> T) -> Result<T, PoolAccess> {
    let caller = std::panic::Location::caller();
    let result = POOLS.with(|p| {
        let Ok(mut pools) = p.try_borrow_mut() else {
            return Err(PoolAccess::Busy);
        };
        let pool = pools.get_mut(i).ok_or(PoolAccess::Unknown)?;
        DEFERRED_REMOVALS.with(|d| {
            d.borrow_mut().retain(|&(pi, index, gen, r)| {
                if pi != i {
                    return true;
                }
                pool.forget(index, gen, r);
                false
            })
        });
        Ok(f(pool))
    });
    if result.is_err() && result.as_ref().err() == Some(&PoolAccess::Busy) {
        log(
            NGX_LOG_ALERT,
            &format!("ngx-pool: the pools' state was wanted again while in use, at {caller} (a bug); handled"),
        );
    }
    result
}

/// Removes request `r`'s in-flight entry for slot (`index`, `gen`) of pool `i`, now or, if the
/// state is in use, before anything reads it next.
pub fn forget_inflight(i: usize, index: u32, gen: u32, r: *mut ngx_http_request_t) {
    if with_pool(i, |p| p.forget(index, gen, r)) == Err(PoolAccess::Busy) {
        DEFERRED_REMOVALS.with(|d| d.borrow_mut().push((i, index, gen, r)));
    }
}

impl PoolRt {
    /// Drops the in-flight entry of slot `index` if it is still request `r`'s (after a
    /// re-attach, another request may hold the same index and generation in the new region).
    fn forget(&mut self, index: u32, gen: u32, r: *mut ngx_http_request_t) {
        if let std::collections::hash_map::Entry::Occupied(e) = self.inflight.entry(index) {
            if e.get().gen == gen && e.get().r == r {
                e.remove();
            }
        }
    }
}

/// How many pools this worker knows.
pub fn pool_count() -> usize {
    POOLS.with(|p| p.try_borrow().map_or(0, |p| p.len()))
}

pub fn on_init_process(cycle: *mut ngx_cycle_t) {
    // SAFETY: reading nginx's process-role global in its only thread.
    if unsafe { nginx_sys::ngx_process } == nginx_sys::NGX_PROCESS_WORKER as nginx_sys::ngx_uint_t {
        // Only the master keeps the lifeline; with `master_process off` this process is the
        // master too, and closing it would stop every poold at once.
        crate::managed::close_lifeline_in_worker();
        crate::isolation::on_init_process(cycle);
    }
    // SAFETY: `cycle` is the worker's cycle, fully configured.
    let Some(main) = Module::main_conf(unsafe { &*cycle }) else {
        return;
    };
    let pools: Vec<PoolRt> = main.pools.iter().enumerate().map(pool_rt).collect();
    crate::rejections::init(&pools.iter().map(|p| p.name.clone()).collect::<Vec<_>>());
    POOLS.with(|p| *p.borrow_mut() = pools);
    // SAFETY: ngx_event_t is a plain C struct for which all-zero is the idle state; leaked, so
    // its address stays valid for the process's life (it may sit in the posted queue).
    let ev: &'static mut ngx_event_t = Box::leak(Box::new(unsafe { std::mem::zeroed() }));
    ev.handler = Some(on_wake_event);
    ev.log = cycle_log();
    WAKE_EVENT.with(|w| w.set(ev));
    for i in 0..main.pools.len() {
        ensure_attached(i);
    }
}

fn pool_rt((i, e): (usize, &PoolEntry)) -> PoolRt {
    PoolRt {
        name: e.conf.settings.name.clone(),
        handler: e.conf.settings.handler.clone(),
        socket: e.socket.clone(),
        timeout_ms: e
            .conf
            .settings
            .timeout_ms
            .unwrap_or(ngx_pool_conf::DEFAULT_TIMEOUT_MS),
        queue_timeout_ms: e.conf.queue_timeout_ms,
        attached: None,
        attaching: None,
        next_attempt: None,
        last_failure_logged: None,
        ever_attached: false,
        failing_since: None,
        retry_timer: crate::runtime::attach::new_retry_timer(i),
        inflight: InFlightMap::default(),
    }
}

pub fn on_exit_process() {
    let n = POOLS.with(|p| p.borrow().len());
    for i in 0..n {
        crate::runtime::attach::cancel_retry(i);
        detach(i, None);
        // A handshake still under way: its connection and timer go (outside the borrow).
        let attaching = with_pool(i, |p| p.attaching.take());
        drop(attaching);
    }
}

/// Where pool `i`'s attachment stands; starts a handshake if one is due (never waits for it).
pub fn ensure_attached(i: usize) -> crate::runtime::attach::State {
    crate::runtime::attach::ensure(i)
}

/// Hands `fd` to nginx as a connection whose read events call `handler`; `c->data` is the pool
/// index. Returns null on failure (the descriptor is then closed).
pub(crate) fn register(
    fd: OwnedFd,
    pool: usize,
    handler: unsafe extern "C" fn(*mut ngx_event_t),
) -> *mut ngx_connection_t {
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an open descriptor we own and hand over to the connection (closed by
    // ngx_close_connection). The connection, its read event and log come from nginx and are
    // valid until that close.
    unsafe {
        let c = nginx_sys::ngx_get_connection(raw, cycle_log());
        if c.is_null() {
            libc::close(raw);
            return c;
        }
        (*c).data = pool as *mut std::ffi::c_void;
        let rev = (*c).read;
        (*rev).handler = Some(handler);
        (*rev).log = cycle_log();
        (*(*c).write).log = cycle_log();
        if nginx_sys::ngx_handle_read_event(rev, 0) != nginx_sys::NGX_OK as isize {
            nginx_sys::ngx_close_connection(c);
            return std::ptr::null_mut();
        }
        c
    }
}

pub(crate) fn close_connection(c: *mut ngx_connection_t) {
    if !c.is_null() {
        // SAFETY: `c` came from ngx_get_connection and is closed exactly once (we forget it).
        unsafe { nginx_sys::ngx_close_connection(c) };
    }
}

/// Pool index stored in an event's connection.
///
/// # Safety
/// `ev` must be the read event of a connection made by [`register`].
pub(crate) unsafe fn pool_of(ev: *mut ngx_event_t) -> (usize, *mut ngx_connection_t) {
    // SAFETY: per the contract, ev->data is our connection and c->data the pool index.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        ((*c).data as usize, c)
    }
}

/// The socket to poold is readable: poold only ever closes it (it died or stopped).
pub(crate) unsafe extern "C" fn on_socket_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls this with the read event of our socket connection.
    crate::edge::guard("socket", || (), || unsafe { socket_event(ev) });
}

/// # Safety
/// `ev` is the read event of a socket connection made by [`register`].
unsafe fn socket_event(ev: *mut ngx_event_t) {
    // SAFETY: the caller's contract.
    let (i, c) = unsafe { pool_of(ev) };
    // SAFETY: as above; the descriptor is open while the connection is.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw((*c).fd) };
    match recv_frame(fd, MsgFlags::MSG_DONTWAIT) {
        Ok(Some(_)) => return,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return,
        _ => {}
    }
    // SAFETY: still our event; clearing `ready` is how an edge-triggered handler says "drained".
    unsafe { (*ev).set_ready(0) };
    detach(i, Some("poold closed the connection"));
    crate::runtime::attach::retry_soon(i);
}

/// Pool workers finished requests of ours.
pub(crate) unsafe extern "C" fn on_eventfd_event(ev: *mut ngx_event_t) {
    // A panic here leaves the requests it did not reach to their deadline timers (504), never
    // hanging: each has one.
    // SAFETY: nginx calls this with the read event of our eventfd connection.
    crate::edge::guard("eventfd", || (), || unsafe { eventfd_event(ev) });
}

/// # Safety
/// `ev` is the read event of an eventfd connection made by [`register`].
unsafe fn eventfd_event(ev: *mut ngx_event_t) {
    // SAFETY: the caller's contract.
    let (i, c) = unsafe { pool_of(ev) };
    let mut buf = [0u8; 8];
    // SAFETY: the eventfd is open while the connection is. One read resets its counter (it is
    // not a semaphore eventfd), so a second would only return EAGAIN.
    unsafe { libc::read((*c).fd, buf.as_mut_ptr().cast(), 8) };
    // SAFETY: as in on_socket_event.
    unsafe { (*ev).set_ready(0) };
    if !complete_ready(i) {
        // The pools' state was in use (a bug, logged): look again later in this iteration,
        // since the eventfd will not fire again for what it already said.
        // SAFETY: our connection's read event, re-posted on nginx's queue.
        unsafe {
            nginx_sys::ngx_post_event(ev, std::ptr::addr_of_mut!(nginx_sys::ngx_posted_events))
        };
    }
}

/// Drives the requests of pool `i` the pool made progress on: those its completion ring names
/// (O(completions), whatever the number in flight), or, when the ring overflowed, every one not
/// still waiting in the queue. False if the pools' state was in use and nothing was looked at.
pub fn complete_ready(i: usize) -> bool {
    // Buffers reused from one wake-up to the next (taken out, so a nested call cannot clash).
    let (mut ids, mut candidates) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    candidates.clear();
    let looked = with_pool(i, |p| {
        let Some(a) = &p.attached else {
            return;
        };
        slot::clear_wake(a.region.nginx_side(), a.conn);
        if slot::take_completions_into(a.region.nginx_side(), a.conn, &mut ids) {
            // A slot may be posted more than once (progress, then its end).
            ids.sort_unstable_by_key(|id| id.encode());
            ids.dedup();
            candidates.extend(ids.iter().filter_map(|id| {
                let f = p.inflight.get(&id.index).filter(|f| f.gen == id.gen)?;
                Some((id.index, f.gen, f.r, f.told))
            }));
        } else {
            candidates.extend(
                p.inflight
                    .iter()
                    .filter(|(index, f)| {
                        let id = SlotId {
                            index: **index,
                            gen: f.gen,
                        };
                        slot::state_of(&a.region, id) != Some(SlotState::Queued)
                    })
                    .map(|(index, f)| (*index, f.gen, f.r, f.told)),
            );
        }
    });
    for &(index, gen, r, told) in &candidates {
        // An earlier one may have ended and freed this request meanwhile; look it up again.
        let live = with_pool(i, |p| {
            p.inflight
                .get(&index)
                .is_some_and(|f| f.gen == gen && f.r == r)
        });
        // (A request whose entry cannot be read now is not lost: its deadline timer ends it.)
        if live == Ok(true) {
            (told.progress)(r);
        }
    }
    SCRATCH.with(|s| *s.borrow_mut() = (ids, candidates));
    looked != Err(PoolAccess::Busy)
}

type Candidates = Vec<(u32, u32, *mut ngx_http_request_t, &'static Tell)>;

/// The requests in flight on a pool, by slot index.
pub type InFlightMap = HashMap<u32, InFlight, std::hash::BuildHasherDefault<SlotIndexHasher>>;

/// Hashes slot indices with one multiplication. They are small integers the region hands out,
/// not attacker-chosen keys, so SipHash's defence against flooding buys nothing here, and it
/// cost about a hundred instructions a lookup on every request.
#[derive(Default)]
pub struct SlotIndexHasher(u64);

impl std::hash::Hasher for SlotIndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

thread_local! {
    static SCRATCH: RefCell<(Vec<SlotId>, Candidates)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Drops the attachment of pool `i`; with a reason, answers every request in flight with 502.
pub fn detach(i: usize, reason: Option<&str>) {
    let taken = with_pool(i, |p| {
        let a = p.attached.take();
        let inflight: Vec<InFlight> = p.inflight.drain().map(|(_, f)| f).collect();
        p.next_attempt = None;
        (a, inflight, p.name.clone())
    });
    let Ok((attached, inflight, name)) = taken else {
        return;
    };
    if let Some(a) = attached {
        close_connection(a.socket_c);
        close_connection(a.eventfd_c);
    }
    if let Some(reason) = reason {
        log(
            NGX_LOG_ERR,
            &format!(
                "pool \"{name}\": {reason}; {} requests in flight get 502",
                inflight.len()
            ),
        );
        for f in inflight {
            (f.told.lost)(f.r);
        }
    }
}
