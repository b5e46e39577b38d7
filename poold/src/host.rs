//! The host side of the handler ABI: the `ngx_pool_host` table poold passes to handlers, as
//! `extern "C"` functions over the running [`Exchange`].
//!
//! The request handle a handler gets is a number, new for every request, that is never
//! dereferenced: every function looks it up against the one request this worker is running (a
//! handle kept past its `handle` call, or made up, gets an error value), checks every pointer
//! it is given, and catches panics: nothing unwinds into the handler's frames.

use crate::exchange::Exchange;
use crate::fanout::Calls;
use crate::log;
use ngx_pool_abi::{
    self as abi, ngx_pool_header, ngx_pool_host, ngx_pool_request, ngx_pool_str, HostStatus,
};
use std::cell::Cell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The table every handler gets: it lives as long as the process.
pub static HOST: ngx_pool_host = ngx_pool_host {
    abi_major: abi::NGX_POOL_ABI_MAJOR,
    abi_minor: abi::NGX_POOL_ABI_MINOR,
    size: std::mem::size_of::<ngx_pool_host>() as u32,
    method: Some(method),
    uri: Some(uri),
    path: Some(path),
    query: Some(query),
    http_version: Some(http_version),
    client_addr: Some(client_addr),
    client_port: Some(client_port),
    header_count: Some(header_count),
    header_at: Some(header_at),
    header: Some(header),
    param_count: Some(param_count),
    param_at: Some(param_at),
    param: Some(param),
    body_length: Some(body_length),
    read: Some(read),
    start: Some(start),
    write: Some(write),
    flush: Some(flush),
    is_cancelled: Some(is_cancelled),
    log: Some(log_line),
    task_submit: Some(task_submit),
    task_wait: Some(task_wait),
    task_result: Some(task_result),
    task_release: Some(task_release),
    pool_workers: Some(pool_workers),
    read_wait: Some(read_wait),
    waker: Some(waker),
    wake: Some(wake),
    closing: Some(closing),
};

/// The request (or task) being run: its handle (a serial number) and its exchange
/// (type-erased: its lifetime is that of `run_with`'s borrow, which `Clear` ends).
#[derive(Clone, Copy)]
struct Current {
    handle: usize,
    exchange: *mut (),
}

/// The fan-out tasks of the request (or task) being run, with its handle: unlike the exchange,
/// reachable from every thread of the worker (a handler's own threads, e.g. Python's
/// `concurrent.futures` threads, submit and wait too), one host function at a time (this
/// lock); `Clear` takes the lock to end the borrow, so no other thread uses it past `run_with`.
///
/// A worker with lanes (`crate::lanes`) runs several requests at once, each on its own thread:
/// one entry per request being run, by handle.
static CALLS: std::sync::Mutex<Vec<(usize, CallsPtr)>> = std::sync::Mutex::new(Vec::new());

/// A type-erased `&mut Calls` of `run_with`.
#[derive(Clone, Copy)]
struct CallsPtr(*mut ());
// SAFETY: only dereferenced under the `CALLS` lock while `run_with` lasts (see `with_calls`).
unsafe impl Send for CallsPtr {}

fn calls_lock() -> std::sync::MutexGuard<'static, Vec<(usize, CallsPtr)>> {
    CALLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A request handle as the handler gets it: a number, never an address.
#[derive(Clone, Copy, Debug)]
pub struct RequestHandle(usize);

impl RequestHandle {
    /// The handle as the ABI passes it.
    pub fn as_ptr(self) -> *mut ngx_pool_request {
        self.0 as *mut ngx_pool_request
    }
}

thread_local! {
    /// The request this worker is running; `None` between requests.
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
}

/// The last handle given out (never 0, so no handle is NULL); one count for the process, so
/// that requests run at once on several lanes never share a handle.
static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `handle` with `ex` as the current request (or task) and `calls` as its fan-out tasks,
/// under a handle of its own.
pub fn run_with<T>(
    ex: &mut Exchange<'_>,
    calls: &mut Calls<'_>,
    handle: impl FnOnce(RequestHandle) -> T,
) -> T {
    let serial = SERIAL
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add(1)
        .max(1);
    CURRENT.with(|c| {
        c.set(Some(Current {
            handle: serial,
            // Restored as a fresh borrow in `with`, which only runs while this call (and so
            // `ex`'s borrow) lasts: `Clear` ends it.
            exchange: (ex as *mut Exchange<'_>).cast::<()>(),
        }))
    });
    calls_lock().push((serial, CallsPtr((calls as *mut Calls<'_>).cast())));
    // Cleared however `handle` ends; the fan-out's borrow once no other thread is in a host
    // function with it.
    struct Clear(usize);
    impl Drop for Clear {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(None));
            calls_lock().retain(|(h, _)| *h != self.0);
        }
    }
    let _clear = Clear(serial);
    handle(RequestHandle(serial))
}

/// Runs `f` on the exchange of request handle `r`, or gives `otherwise` if `r` is not the
/// request being run (or `f` panics).
fn with<T>(r: *mut ngx_pool_request, otherwise: T, f: impl FnOnce(&mut Exchange<'_>) -> T) -> T {
    let Some(current) = CURRENT.with(Cell::get) else {
        return otherwise;
    };
    if current.handle != r as usize {
        return otherwise;
    }
    // SAFETY: `exchange` is the Exchange that `run_with` is running the handler with: it lives
    // (borrowed mutably by `run_with`, whose caller does not touch it meanwhile) until the
    // handler returns, when CURRENT is cleared; this worker is single-threaded, and no host
    // function calls another while it holds this borrow, so no other reference is in use.
    let ex = unsafe { &mut *current.exchange.cast::<Exchange<'_>>() };
    catch_unwind(AssertUnwindSafe(|| f(ex))).unwrap_or(otherwise)
}

/// [`with`] for the request's fan-out tasks.
/// Any thread of the worker may call it (one at a time).
fn with_calls<T>(r: *mut ngx_pool_request, otherwise: T, f: impl FnOnce(&mut Calls<'_>) -> T) -> T {
    let current = calls_lock();
    let Some(&(_, calls)) = current.iter().find(|(h, _)| *h == r as usize) else {
        return otherwise;
    };
    // SAFETY: the Calls `run_with` was given: alive until the handler returns, whose `Clear`
    // waits for this lock (held until `f` returns), and used by one host function at a time
    // (this lock), apart from the exchange.
    let calls = unsafe { &mut *calls.0.cast::<Calls<'_>>() };
    let out = catch_unwind(AssertUnwindSafe(|| f(calls))).unwrap_or(otherwise);
    drop(current);
    out
}

/// How many workers the pool may run (set in each pool worker before its first request).
static POOL_WORKERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

pub fn set_pool_workers(n: u32) {
    POOL_WORKERS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

fn out(b: &[u8]) -> ngx_pool_str {
    ngx_pool_str {
        data: b.as_ptr(),
        len: b.len(),
    }
}

fn out_opt(b: Option<&[u8]>) -> ngx_pool_str {
    b.map_or(ngx_pool_str::ABSENT, out)
}

/// Bytes the handler gives us.
///
/// # Safety
/// `data` is NULL (then `len` must be 0) or points at `len` readable bytes.
unsafe fn given<'a>(data: *const u8, len: usize) -> Option<&'a [u8]> {
    if data.is_null() {
        return (len == 0).then_some(&[]);
    }
    if len > isize::MAX as usize {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { std::slice::from_raw_parts(data, len) })
}

/// A NUL-terminated name the handler gives us.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
unsafe fn given_name<'a>(name: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: the caller's contract; NULL is refused first.
    (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_bytes())
}

unsafe extern "C" fn method(r: *mut ngx_pool_request) -> ngx_pool_str {
    with(r, ngx_pool_str::ABSENT, |ex| out(ex.view.method))
}
unsafe extern "C" fn uri(r: *mut ngx_pool_request) -> ngx_pool_str {
    with(r, ngx_pool_str::ABSENT, |ex| out(ex.view.uri))
}
unsafe extern "C" fn path(r: *mut ngx_pool_request) -> ngx_pool_str {
    with(r, ngx_pool_str::ABSENT, |ex| out(ex.path()))
}
unsafe extern "C" fn query(r: *mut ngx_pool_request) -> ngx_pool_str {
    with(r, ngx_pool_str::ABSENT, |ex| out(ex.query()))
}
unsafe extern "C" fn http_version(r: *mut ngx_pool_request) -> u32 {
    with(r, 0, |ex| {
        u32::from(ex.view.version.0) * 1000 + u32::from(ex.view.version.1)
    })
}
unsafe extern "C" fn client_addr(r: *mut ngx_pool_request) -> ngx_pool_str {
    with(r, ngx_pool_str::ABSENT, |ex| out(ex.view.client))
}
unsafe extern "C" fn client_port(r: *mut ngx_pool_request) -> u16 {
    with(r, 0, |ex| ex.view.client_port)
}
unsafe extern "C" fn header_count(r: *mut ngx_pool_request) -> usize {
    with(r, 0, |ex| ex.view.headers.len())
}
unsafe extern "C" fn param_count(r: *mut ngx_pool_request) -> usize {
    with(r, 0, |ex| ex.params().len())
}

fn pair_at(pairs: &[(&[u8], &[u8])], index: usize, o: *mut ngx_pool_header) -> i32 {
    if o.is_null() {
        return HostStatus::Invalid.raw();
    }
    let Some((n, v)) = pairs.get(index) else {
        return HostStatus::NotFound.raw();
    };
    // SAFETY: `o` is non-NULL and, per the ABI, points at an ngx_pool_header the handler owns.
    unsafe {
        o.write(ngx_pool_header {
            name: out(n),
            value: out(v),
        })
    };
    HostStatus::Ok.raw()
}

unsafe extern "C" fn header_at(r: *mut ngx_pool_request, i: usize, o: *mut ngx_pool_header) -> i32 {
    with(r, HostStatus::State.raw(), |ex| {
        pair_at(&ex.view.headers, i, o)
    })
}
unsafe extern "C" fn param_at(r: *mut ngx_pool_request, i: usize, o: *mut ngx_pool_header) -> i32 {
    with(r, HostStatus::State.raw(), |ex| pair_at(ex.params(), i, o))
}
unsafe extern "C" fn header(r: *mut ngx_pool_request, name: *const c_char) -> ngx_pool_str {
    with(r, ngx_pool_str::ABSENT, |ex| {
        // SAFETY: per the ABI, `name` is NULL or NUL-terminated.
        let name = unsafe { given_name(name) };
        out_opt(name.and_then(|n| ex.header(n)))
    })
}
unsafe extern "C" fn param(r: *mut ngx_pool_request, name: *const c_char) -> ngx_pool_str {
    with(r, ngx_pool_str::ABSENT, |ex| {
        // SAFETY: per the ABI, `name` is NULL or NUL-terminated.
        let name = unsafe { given_name(name) };
        out_opt(name.and_then(|n| ex.param(n)))
    })
}
unsafe extern "C" fn body_length(r: *mut ngx_pool_request) -> u64 {
    with(r, 0, |ex| ex.body_len())
}
unsafe extern "C" fn read(r: *mut ngx_pool_request, buf: *mut u8, len: usize) -> isize {
    with(r, HostStatus::State.raw() as isize, |ex| {
        if buf.is_null() || len > isize::MAX as usize {
            return HostStatus::Invalid.raw() as isize;
        }
        // SAFETY: per the ABI, `buf` points at `len` writable bytes the handler owns.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        match ex.read(buf) {
            Ok(n) => n as isize,
            Err(status) => status.raw() as isize,
        }
    })
}
unsafe extern "C" fn read_wait(
    r: *mut ngx_pool_request,
    buf: *mut u8,
    len: usize,
    timeout_ms: i64,
) -> isize {
    with(r, HostStatus::State.raw() as isize, |ex| {
        if buf.is_null() || len > isize::MAX as usize {
            return HostStatus::Invalid.raw() as isize;
        }
        // SAFETY: per the ABI, `buf` points at `len` writable bytes the handler owns.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        let limit = u64::try_from(timeout_ms)
            .ok()
            .map(std::time::Duration::from_millis);
        match ex.read_wait(buf, limit) {
            Ok(Some(n)) => n as isize,
            Ok(None) => HostStatus::Again.raw() as isize,
            Err(status) => status.raw() as isize,
        }
    })
}
unsafe extern "C" fn waker(r: *mut ngx_pool_request) -> u64 {
    with(r, 0, |ex| ex.waker())
}
unsafe extern "C" fn wake(token: u64) {
    let _ = catch_unwind(|| crate::wakers::wake(token));
}
unsafe extern "C" fn closing(r: *mut ngx_pool_request) -> u32 {
    with(r, 0, |ex| ex.closing())
}
unsafe extern "C" fn start(
    r: *mut ngx_pool_request,
    status: u16,
    headers: *const ngx_pool_header,
    count: usize,
) -> i32 {
    with(r, HostStatus::State.raw(), |ex| {
        let list: &[ngx_pool_header] = if count == 0 {
            &[]
        } else if headers.is_null() || count > (1 << 16) {
            return HostStatus::Invalid.raw();
        } else {
            // SAFETY: per the ABI, `headers` points at `count` entries the handler owns.
            unsafe { std::slice::from_raw_parts(headers, count) }
        };
        // SAFETY: per the ABI, each string is NULL-and-empty or `len` readable bytes, valid
        // during this call (the exchange copies what it keeps).
        let pair = |h: &ngx_pool_header| unsafe {
            (
                given(h.name.data, h.name.len),
                given(h.value.data, h.value.len),
            )
        };
        if list
            .iter()
            .map(pair)
            .any(|(n, v)| n.is_none() || v.is_none())
        {
            return HostStatus::Invalid.raw();
        }
        let pairs = list
            .iter()
            .map(pair)
            .map(|(n, v)| (n.unwrap_or_default(), v.unwrap_or_default()));
        ex.start(status, pairs)
            .map_or_else(HostStatus::raw, |()| HostStatus::Ok.raw())
    })
}
unsafe extern "C" fn write(r: *mut ngx_pool_request, data: *const u8, len: usize) -> i32 {
    with(r, HostStatus::State.raw(), |ex| {
        // SAFETY: per the ABI, `data` points at `len` readable bytes.
        match unsafe { given(data, len) } {
            Some(d) => ex
                .write(d)
                .map_or_else(HostStatus::raw, |()| HostStatus::Ok.raw()),
            None => HostStatus::Invalid.raw(),
        }
    })
}
unsafe extern "C" fn flush(r: *mut ngx_pool_request) -> i32 {
    with(r, HostStatus::State.raw(), |ex| {
        ex.flush()
            .map_or_else(HostStatus::raw, |()| HostStatus::Ok.raw())
    })
}
unsafe extern "C" fn is_cancelled(r: *mut ngx_pool_request) -> i32 {
    with(r, 1, |ex| i32::from(ex.is_cancelled()))
}

unsafe extern "C" fn task_submit(
    r: *mut ngx_pool_request,
    input: *const u8,
    len: usize,
    task: *mut u64,
) -> i32 {
    with_calls(r, HostStatus::State.raw(), |calls| {
        // SAFETY: per the ABI, `input` points at `len` readable bytes (copied before return).
        let Some(input) = (unsafe { given(input, len) }) else {
            return HostStatus::Invalid.raw();
        };
        if task.is_null() {
            return HostStatus::Invalid.raw();
        }
        match calls.submit(input) {
            Ok(h) => {
                // SAFETY: non-NULL, and per the ABI a u64 the handler owns.
                unsafe { task.write(h) };
                HostStatus::Ok.raw()
            }
            Err(status) => status.raw(),
        }
    })
}

unsafe extern "C" fn task_wait(
    r: *mut ngx_pool_request,
    tasks: *const u64,
    count: usize,
    timeout_ms: i64,
    task: *mut u64,
) -> i32 {
    with_calls(r, HostStatus::State.raw(), |calls| {
        if tasks.is_null() || task.is_null() || count == 0 || count > (1 << 20) {
            return HostStatus::Invalid.raw();
        }
        // SAFETY: per the ABI, `tasks` points at `count` handles the handler owns.
        let wanted = unsafe { std::slice::from_raw_parts(tasks, count) };
        let timeout = u64::try_from(timeout_ms).ok();
        match calls.wait(wanted, timeout) {
            Ok((status, h)) => {
                // SAFETY: non-NULL, and per the ABI a u64 the handler owns.
                unsafe { task.write(h) };
                status.raw()
            }
            Err(status) => status.raw(),
        }
    })
}

unsafe extern "C" fn task_result(r: *mut ngx_pool_request, task: u64, o: *mut ngx_pool_str) -> i32 {
    with_calls(r, HostStatus::State.raw(), |calls| {
        if o.is_null() {
            return HostStatus::Invalid.raw();
        }
        match calls.result(task) {
            Ok(bytes) => {
                // SAFETY: non-NULL, and per the ABI an ngx_pool_str the handler owns; the bytes
                // live in the Calls until the task is released or the call returns.
                unsafe { o.write(out(bytes)) };
                HostStatus::Ok.raw()
            }
            Err(status) => status.raw(),
        }
    })
}

unsafe extern "C" fn task_release(r: *mut ngx_pool_request, task: u64) {
    with_calls(r, (), |calls| calls.release(task));
}

unsafe extern "C" fn pool_workers() -> u32 {
    POOL_WORKERS.load(std::sync::atomic::Ordering::Relaxed)
}

fn level_name(level: u32) -> Option<&'static str> {
    Some(match level {
        abi::NGX_POOL_LOG_EMERG => "emerg",
        abi::NGX_POOL_LOG_ALERT => "alert",
        abi::NGX_POOL_LOG_CRIT => "crit",
        abi::NGX_POOL_LOG_ERR => "error",
        abi::NGX_POOL_LOG_WARN => "warn",
        abi::NGX_POOL_LOG_NOTICE => "notice",
        abi::NGX_POOL_LOG_INFO => "info",
        // Debug lines are not written: poold does not know nginx's error_log level, and a
        // handler's debug output would flood a production log.
        _ => return None,
    })
}

/// Set once a forked pool worker starts: a handler's log lines then say "worker PID", before
/// (its `init`, in poold) "poold PID".
static IN_POOL_WORKER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How many poolds before this one failed to load the handler in a row (set by the watchdog,
/// inherited through its fork): the handler's multi-line errors are then shortened.
static FAILED_LOADS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub fn failed_loads() -> u32 {
    FAILED_LOADS.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn set_failed_loads(n: u32) {
    FAILED_LOADS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// This process is a pool worker from now on (for the log lines' prefix).
pub fn in_pool_worker() {
    IN_POOL_WORKER.store(true, std::sync::atomic::Ordering::Relaxed);
}

unsafe extern "C" fn log_line(r: *mut ngx_pool_request, level: u32, msg: *const u8, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let Some(level) = level_name(level) else {
            return;
        };
        // SAFETY: per the ABI, `msg` points at `len` readable bytes.
        let Some(msg) = (unsafe { given(msg, len) }) else {
            return;
        };
        // A message of several lines (a Python traceback) is several log lines, each with our
        // prefix (continuations marked "|"), so a handler's newline cannot forge a line.
        let text = String::from_utf8_lossy(msg);
        let mut lines = text.split(['\n', '\r']).filter(|l| !l.trim().is_empty());
        let text = lines.next().unwrap_or("").to_string();
        let pid = std::process::id();
        let in_worker = IN_POOL_WORKER.load(std::sync::atomic::Ordering::Relaxed);
        let who = if in_worker { "worker" } else { "poold" };
        let uri = if r.is_null() {
            None
        } else {
            with(r, None, |ex| {
                Some(String::from_utf8_lossy(ex.view.uri).into_owned())
            })
        };
        match uri {
            Some(uri) => log::line(
                level,
                format_args!("{who} {pid}: {text} (request \"{uri}\")"),
            ),
            None => log::line(level, format_args!("{who} {pid}: {text}")),
        }
        let retried = failed_loads();
        if !in_worker && retried > 0 {
            // The same load failing again: its first and last lines, not the whole traceback
            // every 10 s.
            let rest: Vec<&str> = lines.collect();
            if let Some(last) = rest.last() {
                log::line(
                    level,
                    format_args!(
                        "{who} {pid}: | … {last} (attempt {}; the whole text is above, at the first)",
                        retried + 1
                    ),
                );
            }
            return;
        }
        for more in lines {
            log::line(level, format_args!("{who} {pid}: | {more}"));
        }
    }));
}
