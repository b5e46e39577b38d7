//! The host's function table, called safely: the one module of the SDK with `unsafe` calls
//! into the host (and the error-log functions built on it).

use ngx_pool_abi::{self as abi, ngx_pool_header, ngx_pool_host, ngx_pool_request, ngx_pool_str};
use std::sync::atomic::{AtomicPtr, Ordering};

/// The host's table, checked once: of our major version and at least as large as the fields
/// this SDK calls. It lives as long as the process (the host's contract).
#[derive(Clone, Copy)]
pub(crate) struct Host(&'static ngx_pool_host);

/// The table of the host that last called us, for [`log`] from anywhere in a handler. One host
/// per process (poold's), so the latest is the one.
static CURRENT: AtomicPtr<ngx_pool_host> = AtomicPtr::new(std::ptr::null_mut());

impl Host {
    /// # Safety
    /// `table` is NULL or points at a host table that stays valid for the process's life.
    pub(crate) unsafe fn new(table: *const ngx_pool_host) -> Option<Host> {
        // SAFETY: the caller's contract; a NULL pointer gives None.
        let t = unsafe { table.as_ref() }?;
        if t.abi_major != abi::NGX_POOL_ABI_MAJOR || t.size < abi::NGX_POOL_HOST_V1_SIZE {
            return None;
        }
        // Relaxed: the table is immutable; whoever reads the pointer only needs the pointer.
        CURRENT.store(table as *mut _, Ordering::Relaxed);
        // SAFETY: valid for the process's life, per the contract above.
        Some(Host(unsafe { &*table }))
    }

    fn current() -> Option<Host> {
        let p = CURRENT.load(Ordering::Relaxed);
        // SAFETY: CURRENT only ever holds tables that passed `new`, valid for the process.
        (!p.is_null()).then(|| Host(unsafe { &*p }))
    }
}

/// Bytes of a host string, `None` if absent.
///
/// # Safety
/// `s` came from the host during the current call: `len` readable bytes at `data`, valid until
/// that call returns (the lifetime the caller picks must not outlive it).
unsafe fn bytes<'a>(s: ngx_pool_str) -> Option<&'a [u8]> {
    if s.data.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { std::slice::from_raw_parts(s.data, s.len) })
}

/// A request handle with the host that gave it. Only made by the `handle` trampoline, for the
/// duration of that call; every borrowed string it returns lives no longer than `'r`.
#[derive(Clone, Copy)]
pub(crate) struct Call<'r> {
    host: Host,
    r: *mut ngx_pool_request,
    _call: std::marker::PhantomData<&'r ()>,
}

impl<'r> Call<'r> {
    /// # Safety
    /// `r` is the request the host passed to the running `handle` call, and `'r` ends before
    /// that call returns.
    pub(crate) unsafe fn new(host: Host, r: *mut ngx_pool_request) -> Call<'r> {
        Call {
            host,
            r,
            _call: std::marker::PhantomData,
        }
    }

    fn str_of(
        &self,
        f: Option<unsafe extern "C" fn(*mut ngx_pool_request) -> ngx_pool_str>,
    ) -> Option<&'r [u8]> {
        // SAFETY: a host function called with the request it gave us, during its call; what it
        // returns is valid until that call returns, which outlives 'r.
        f.and_then(|f| unsafe { bytes(f(self.r)) })
    }

    pub fn method(&self) -> &'r [u8] {
        self.str_of(self.host.0.method).unwrap_or_default()
    }
    pub fn uri(&self) -> &'r [u8] {
        self.str_of(self.host.0.uri).unwrap_or_default()
    }
    pub fn path(&self) -> &'r [u8] {
        self.str_of(self.host.0.path).unwrap_or_default()
    }
    pub fn query(&self) -> &'r [u8] {
        self.str_of(self.host.0.query).unwrap_or_default()
    }
    pub fn client_addr(&self) -> &'r [u8] {
        self.str_of(self.host.0.client_addr).unwrap_or_default()
    }
    pub fn http_version(&self) -> u32 {
        // SAFETY: as in `str_of`.
        self.host.0.http_version.map_or(0, |f| unsafe { f(self.r) })
    }
    pub fn client_port(&self) -> u16 {
        // SAFETY: as in `str_of`.
        self.host.0.client_port.map_or(0, |f| unsafe { f(self.r) })
    }
    pub fn body_length(&self) -> u64 {
        // SAFETY: as in `str_of`.
        self.host.0.body_length.map_or(0, |f| unsafe { f(self.r) })
    }
    pub fn is_cancelled(&self) -> bool {
        // SAFETY: as in `str_of`.
        self.host
            .0
            .is_cancelled
            .is_some_and(|f| unsafe { f(self.r) } != 0)
    }

    fn pair_at(
        &self,
        count: Option<unsafe extern "C" fn(*mut ngx_pool_request) -> usize>,
        at: Option<unsafe extern "C" fn(*mut ngx_pool_request, usize, *mut ngx_pool_header) -> i32>,
    ) -> impl Iterator<Item = (&'r [u8], &'r [u8])> + 'r {
        let call = *self;
        // SAFETY: as in `str_of`.
        let n = count.map_or(0, |f| unsafe { f(call.r) });
        (0..n).filter_map(move |i| {
            let mut out = ngx_pool_header {
                name: ngx_pool_str::ABSENT,
                value: ngx_pool_str::ABSENT,
            };
            // SAFETY: as in `str_of`; `out` is a valid place for the host to write.
            let rc = at.map_or(abi::NGX_POOL_ERR_NOT_FOUND, |f| unsafe {
                f(call.r, i, &mut out)
            });
            if rc != abi::NGX_POOL_OK {
                return None;
            }
            // SAFETY: strings the host just returned for this call.
            unsafe { Some((bytes(out.name)?, bytes(out.value).unwrap_or_default())) }
        })
    }

    pub fn headers(&self) -> impl Iterator<Item = (&'r [u8], &'r [u8])> + 'r {
        self.pair_at(self.host.0.header_count, self.host.0.header_at)
    }
    pub fn params(&self) -> impl Iterator<Item = (&'r [u8], &'r [u8])> + 'r {
        self.pair_at(self.host.0.param_count, self.host.0.param_at)
    }

    /// The request's handle without the borrow: see [`Detached`].
    pub fn detached(&self) -> Detached {
        Detached {
            host: self.host,
            r: self.r,
        }
    }
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, i32> {
        self.detached().read(buf)
    }
    pub fn start(&self, status: u16, headers: &[ngx_pool_header]) -> i32 {
        self.detached().start(status, headers)
    }
    pub fn write(&self, data: &[u8]) -> i32 {
        self.detached().write(data)
    }
    pub fn flush(&self) -> i32 {
        self.detached().flush()
    }
    pub fn log(&self, level: Level, msg: &str) {
        self.detached().log(level, msg);
    }
}

/// A request handle that may outlive its `handle` call: it offers only the operations that
/// borrow nothing from the host (body reads, the response, cancellation, logging). Sound after
/// the call because the ABI makes the host check every handle it is given: a stale one gets
/// `NGX_POOL_ERR_STATE` (docs/abi.md, "Request handles"), it is never dereferenced by us.
#[derive(Clone, Copy)]
pub(crate) struct Detached {
    host: Host,
    r: *mut ngx_pool_request,
}

// SAFETY: `r` is an opaque handle the host validates on every call, never dereferenced here;
// the host table is immutable for the process's life.
unsafe impl Send for Detached {}
// SAFETY: as above; no call through it mutates anything of ours.
unsafe impl Sync for Detached {}

impl Detached {
    /// Reads body bytes: the count (0 at the end) or the host's status.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, i32> {
        let Some(f) = self.host.0.read else {
            return Err(abi::NGX_POOL_ERR_STATE);
        };
        // SAFETY: `buf` is valid for `buf.len()` bytes of writing; the request is ours.
        let n = unsafe { f(self.r, buf.as_mut_ptr(), buf.len()) };
        usize::try_from(n).map_err(|_| i32::try_from(n).unwrap_or(abi::NGX_POOL_ERR_IO))
    }

    pub fn start(&self, status: u16, headers: &[ngx_pool_header]) -> i32 {
        self.host.0.start.map_or(abi::NGX_POOL_ERR_STATE, |f| {
            // SAFETY: `headers` points at `len` valid entries whose strings live through the
            // call (the host copies them).
            unsafe { f(self.r, status, headers.as_ptr(), headers.len()) }
        })
    }
    pub fn write(&self, data: &[u8]) -> i32 {
        self.host.0.write.map_or(abi::NGX_POOL_ERR_STATE, |f| {
            // SAFETY: `data` is valid for `len` bytes; the host copies them.
            unsafe { f(self.r, data.as_ptr(), data.len()) }
        })
    }
    pub fn flush(&self) -> i32 {
        // SAFETY: a host function given a handle it validates.
        self.host
            .0
            .flush
            .map_or(abi::NGX_POOL_ERR_STATE, |f| unsafe { f(self.r) })
    }
    pub fn log(&self, level: Level, msg: &str) {
        log_with(self.host, self.r, level, msg);
    }
    pub fn is_cancelled(&self) -> bool {
        // SAFETY: a host function given a handle it validates.
        self.host
            .0
            .is_cancelled
            .is_some_and(|f| unsafe { f(self.r) } != 0)
    }

    fn has_tasks(&self) -> bool {
        has_tasks(self.host)
    }

    /// `task_submit`: the task's handle, or the host's status.
    pub fn task_submit(&self, input: &[u8]) -> Result<u64, i32> {
        let f = self.host.0.task_submit.filter(|_| self.has_tasks());
        let Some(f) = f else {
            return Err(abi::NGX_POOL_ERR_FULL);
        };
        let mut task = 0u64;
        // SAFETY: `input` is valid for its length (the host copies it); `task` is ours.
        match unsafe { f(self.r, input.as_ptr(), input.len(), &mut task) } {
            abi::NGX_POOL_OK => Ok(task),
            rc => Err(rc),
        }
    }

    /// `task_wait`: (status, task) for OK and TASK_YOURS, else the status.
    pub fn task_wait(&self, tasks: &[u64], timeout_ms: i64) -> Result<(i32, u64), i32> {
        let f = self.host.0.task_wait.filter(|_| self.has_tasks());
        let Some(f) = f else {
            return Err(abi::NGX_POOL_ERR_STATE);
        };
        let mut task = 0u64;
        // SAFETY: `tasks` is valid for its length; `task` is ours.
        match unsafe { f(self.r, tasks.as_ptr(), tasks.len(), timeout_ms, &mut task) } {
            rc @ (abi::NGX_POOL_OK | abi::NGX_POOL_TASK_YOURS) => Ok((rc, task)),
            rc => Err(rc),
        }
    }

    /// `task_result`, copied out.
    pub fn task_result(&self, task: u64) -> Result<Vec<u8>, i32> {
        let f = self.host.0.task_result.filter(|_| self.has_tasks());
        let Some(f) = f else {
            return Err(abi::NGX_POOL_ERR_STATE);
        };
        let mut out = ngx_pool_str::ABSENT;
        // SAFETY: `out` is ours; what the host puts there is valid until the task is released.
        match unsafe { f(self.r, task, &mut out) } {
            // SAFETY: a host string just returned, copied before anything else is called.
            abi::NGX_POOL_OK => Ok(unsafe { bytes(out) }.unwrap_or_default().to_vec()),
            rc => Err(rc),
        }
    }

    /// `task_release`.
    pub fn task_release(&self, task: u64) {
        if let Some(f) = self.host.0.task_release.filter(|_| self.has_tasks()) {
            // SAFETY: a host function given a handle it validates.
            unsafe { f(self.r, task) }
        }
    }

    /// `pool_workers`, 1 from a host without it.
    pub fn pool_workers(&self) -> u32 {
        pool_workers_of(self.host)
    }
}

/// Whether the host has the fan-out functions of ABI 1.2 (its table reaches them).
/// Whether the host has ABI 1.3's functions (`read_wait`, `waker`, `wake`, `closing`).
fn has_waits(host: Host) -> bool {
    let end = std::mem::offset_of!(ngx_pool_host, closing)
        + std::mem::size_of::<Option<unsafe extern "C" fn(*mut ngx_pool_request) -> u32>>();
    host.0.size as usize >= end
}

/// A token that names a request to [`Detached::wake_token`]'s host, from any thread.
#[derive(Clone, Copy)]
pub struct WakeToken {
    host: Host,
    token: u64,
}

// SAFETY: a number the host looks up (never dereferenced) and its immutable table.
unsafe impl Send for WakeToken {}
// SAFETY: as above.
unsafe impl Sync for WakeToken {}

impl WakeToken {
    /// Ends the `read_wait` its request sleeps in (or makes its next one return at once).
    pub fn wake(&self) {
        if let Some(f) = self.host.0.wake.filter(|_| has_waits(self.host)) {
            // SAFETY: the host looks the token up; a stale one does nothing (the ABI).
            unsafe { f(self.token) }
        }
    }
}

impl Detached {
    /// `read_wait`: `Ok(Some(n))` bytes (0 at the end), `Ok(None)` when the wait ended without
    /// one, or the host's status.
    pub fn read_wait(&self, buf: &mut [u8], timeout_ms: Option<u64>) -> Result<Option<usize>, i32> {
        let Some(f) = self.host.0.read_wait.filter(|_| has_waits(self.host)) else {
            return Err(abi::NGX_POOL_ERR_STATE);
        };
        let ms = timeout_ms.map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
        // SAFETY: `buf` is valid for `buf.len()` bytes of writing; the request is ours.
        let n = unsafe { f(self.r, buf.as_mut_ptr(), buf.len(), ms) };
        if n == abi::NGX_POOL_AGAIN as isize {
            return Ok(None);
        }
        usize::try_from(n)
            .map(Some)
            .map_err(|_| i32::try_from(n).unwrap_or(abi::NGX_POOL_ERR_IO))
    }

    /// `waker`: a token for [`WakeToken::wake`] (`None` from a host without it).
    pub fn wake_token(&self) -> Option<WakeToken> {
        let f = self.host.0.waker.filter(|_| has_waits(self.host))?;
        // SAFETY: a host function given a handle it validates.
        let token = unsafe { f(self.r) };
        (token != 0).then_some(WakeToken {
            host: self.host,
            token,
        })
    }

    /// `closing`: 0, or the WebSocket close code the request should end with now.
    pub fn closing(&self) -> u32 {
        match self.host.0.closing.filter(|_| has_waits(self.host)) {
            // SAFETY: a host function given a handle it validates.
            Some(f) => unsafe { f(self.r) },
            None => 0,
        }
    }
}

fn has_tasks(host: Host) -> bool {
    let end = std::mem::offset_of!(ngx_pool_host, pool_workers)
        + std::mem::size_of::<Option<unsafe extern "C" fn() -> u32>>();
    host.0.size as usize >= end
}

fn pool_workers_of(host: Host) -> u32 {
    match host.0.pool_workers.filter(|_| has_tasks(host)) {
        // SAFETY: a host function without arguments.
        Some(f) => unsafe { f() },
        None => 1,
    }
}

/// How many workers the pool may run at once (ABI 1.2; 1 from an older host, or before poold
/// first called the handler). Needs no request: a Pool made at import time may ask.
pub fn pool_workers() -> u32 {
    Host::current().map_or(1, pool_workers_of)
}

/// An error_log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Emerg = abi::NGX_POOL_LOG_EMERG as isize,
    Alert = abi::NGX_POOL_LOG_ALERT as isize,
    Crit = abi::NGX_POOL_LOG_CRIT as isize,
    Error = abi::NGX_POOL_LOG_ERR as isize,
    Warn = abi::NGX_POOL_LOG_WARN as isize,
    Notice = abi::NGX_POOL_LOG_NOTICE as isize,
    Info = abi::NGX_POOL_LOG_INFO as isize,
    Debug = abi::NGX_POOL_LOG_DEBUG as isize,
}

fn log_with(host: Host, r: *mut ngx_pool_request, level: Level, msg: &str) {
    if let Some(f) = host.0.log {
        // SAFETY: `msg` is valid for its length; `r` is NULL or the running request.
        unsafe { f(r, level as u32, msg.as_ptr(), msg.len()) };
    }
}

/// Writes `msg` to nginx's error_log at `level`, tagged with the pool and the worker's pid.
/// Works in `init`, `worker_init`, `handle` and `worker_exit` (a request's own log line, with
/// its URI, is [`crate::Request::log`]). Before poold first called the handler: stderr.
pub fn log(level: Level, msg: &str) {
    match Host::current() {
        Some(h) => log_with(h, std::ptr::null_mut(), level, msg),
        None => eprintln!("{msg}"),
    }
}
