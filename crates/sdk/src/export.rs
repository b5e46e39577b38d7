//! The trampolines behind [`crate::handler_descriptor!`]: the host calls them through the
//! descriptor, they call the [`Handler`]. Every one catches panics, so no unwinding crosses the
//! boundary: a panic is an error status and an error_log line.

use crate::error::Error;
use crate::host::{self, Call, Host, Level};
use crate::{Handler, Request, Response};
use ngx_pool_abi::{self as abi, ngx_pool_host, ngx_pool_request, ngx_pool_str};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

/// Where a handler type's instance lives once `init` made it (one static per descriptor),
/// with the name its descriptor gives it (for log lines).
pub struct State<T> {
    handler: OnceLock<T>,
    name: &'static str,
}

impl<T> State<T> {
    pub const fn new(name: &'static str) -> State<T> {
        State {
            handler: OnceLock::new(),
            name,
        }
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs `f`, turning a panic into `NGX_POOL_ERR` and a log line.
fn guarded(what: &str, handler: &str, f: impl FnOnce() -> i32) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc,
        Err(payload) => {
            // Formatting the message could itself panic (a Display impl): guard that too.
            let _ = catch_unwind(AssertUnwindSafe(|| {
                host::log(
                    Level::Error,
                    &format!(
                        "handler \"{handler}\" panicked in {what}: {}",
                        panic_text(&*payload)
                    ),
                )
            }));
            abi::NGX_POOL_ERR
        }
    }
}

/// # Safety
/// `host` is NULL or the host's table; `args` is a host string valid during the call.
pub unsafe fn init<T: Handler>(
    state: &State<T>,
    host: *const ngx_pool_host,
    args: ngx_pool_str,
) -> i32 {
    // SAFETY: the caller's contract.
    if unsafe { Host::new(host) }.is_none() {
        return abi::NGX_POOL_ERR_INVALID;
    }
    let args = if args.data.is_null() {
        &[][..]
    } else {
        // SAFETY: a host string: `len` readable bytes, valid during this call.
        unsafe { std::slice::from_raw_parts(args.data, args.len) }
    };
    guarded("init", state.name, || {
        let Ok(args) = std::str::from_utf8(args) else {
            host::log(Level::Error, "handler_args are not UTF-8");
            return abi::NGX_POOL_ERR_INVALID;
        };
        match T::init(args) {
            Ok(h) => {
                // A second init (poold never does this) keeps the first instance.
                let _ = state.handler.set(h);
                abi::NGX_POOL_OK
            }
            Err(e) => {
                host::log(Level::Error, &format!("init failed: {e}"));
                e.status()
            }
        }
    })
}

/// # Safety
/// `host` is NULL or the host's table.
pub unsafe fn worker_init<T: Handler>(state: &State<T>, host: *const ngx_pool_host) -> i32 {
    // SAFETY: the caller's contract.
    if unsafe { Host::new(host) }.is_none() {
        return abi::NGX_POOL_ERR_INVALID;
    }
    guarded("worker_init", state.name, || match state.handler.get() {
        None => abi::NGX_POOL_ERR_STATE,
        Some(h) => match h.worker_init() {
            Ok(()) => abi::NGX_POOL_OK,
            Err(e) => {
                host::log(Level::Error, &format!("worker_init failed: {e}"));
                e.status()
            }
        },
    })
}

/// # Safety
/// `host` is NULL or the host's table; `r` is the request the host is running in this call.
pub unsafe fn handle<T: Handler>(
    state: &State<T>,
    host: *const ngx_pool_host,
    r: *mut ngx_pool_request,
) -> i32 {
    // SAFETY: the caller's contract.
    let Some(host) = (unsafe { Host::new(host) }) else {
        return abi::NGX_POOL_ERR_INVALID;
    };
    let Some(h) = state.handler.get() else {
        return abi::NGX_POOL_ERR_STATE;
    };
    // SAFETY: `r` is the running request; the Call and everything borrowed from it are
    // dropped before this function returns.
    let call = unsafe { Call::new(host, r) };
    guarded("handle", state.name, || {
        let req = Request::new(call);
        let mut resp = Response::new(call);
        let result = h.handle(&req, &mut resp).and_then(|()| resp.finish());
        match result {
            Ok(()) => abi::NGX_POOL_OK,
            // Nobody reads the answer: no error line, the host knows why.
            Err(e) if e.kind() == crate::ErrorKind::Gone => e.status(),
            Err(e) => {
                call.log(Level::Error, &failure(&e));
                e.status()
            }
        }
    })
}

/// # Safety
/// `host` is NULL or the host's table; `t` is the task the host is running in this call.
pub unsafe fn run_task<T: Handler>(
    state: &State<T>,
    host: *const ngx_pool_host,
    t: *mut ngx_pool_request,
) -> i32 {
    // SAFETY: the caller's contract.
    let Some(host) = (unsafe { Host::new(host) }) else {
        return abi::NGX_POOL_ERR_INVALID;
    };
    let Some(h) = state.handler.get() else {
        return abi::NGX_POOL_ERR_STATE;
    };
    // SAFETY: `t` is the running task; the Call is dropped before this function returns.
    let call = unsafe { Call::new(host, t) };
    guarded("run_task", state.name, || {
        let task = crate::Task::new(call.detached());
        match h.run_task(&task) {
            Ok(()) => abi::NGX_POOL_OK,
            Err(e) if e.kind() == crate::ErrorKind::Gone => e.status(),
            Err(e) => {
                task.log(Level::Error, &format!("task failed: {e}"));
                e.status()
            }
        }
    })
}

fn failure(e: &Error) -> String {
    format!("handler failed: {e}")
}

/// # Safety
/// `host` is NULL or the host's table.
pub unsafe fn worker_exit<T: Handler>(state: &State<T>, host: *const ngx_pool_host) {
    // SAFETY: the caller's contract.
    if unsafe { Host::new(host) }.is_none() {
        return;
    }
    guarded("worker_exit", state.name, || {
        if let Some(h) = state.handler.get() {
            h.worker_exit();
        }
        abi::NGX_POOL_OK
    });
}

/// # Safety
/// `host` is NULL or the host's table.
pub unsafe fn fork_hook<T: Handler>(state: &State<T>, host: *const ngx_pool_host, before: bool) {
    // SAFETY: the caller's contract.
    if unsafe { Host::new(host) }.is_none() {
        return;
    }
    let what = if before { "before_fork" } else { "after_fork" };
    guarded(what, state.name, || {
        if let Some(h) = state.handler.get() {
            if before {
                h.before_fork()
            } else {
                h.after_fork()
            }
        }
        abi::NGX_POOL_OK
    });
}
