//! The `_ngx_pool` module the WSGI handler gives Python, and the `ngx_pool` package over it: the
//! fan-out of the request (or task) running now, as `ngx_pool.Pool` and `ngx_pool.Executor`
//! use it (`python/ngx-pool`). Status codes go to Python as numbers; the package turns them
//! into its exceptions (`WorkerLost`, `Cancelled`, `TimeoutError`).

use ngx_pool_sdk::abi::HostStatus;
use ngx_pool_sdk::{ErrorKind, Fanout, Ready, TaskId};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Mutex;

/// The fan-out of the request or task running now in this worker.
static CURRENT: Mutex<Option<Fanout>> = Mutex::new(None);

/// Makes `fanout` the current one until the guard drops (the previous one comes back).
pub fn enter(fanout: Fanout) -> Entered {
    let previous = CURRENT
        .lock()
        .map(|mut c| c.replace(fanout))
        .unwrap_or(None);
    Entered { previous }
}

pub struct Entered {
    previous: Option<Fanout>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Ok(mut c) = CURRENT.lock() {
            *c = self.previous.take();
        }
    }
}

/// Runs `f` (a request, or a task) with the Python driver's queues its own
/// (`ngx_pool._driver._enter`/`_exit`): tasks it leaves unanswered are cancelled when it ends,
/// never seen by the next request as stale handles.
pub fn scoped<T>(py: Python<'_>, f: impl FnOnce() -> T) -> T {
    let driver = py.import("ngx_pool._driver").ok();
    let saved = driver.as_ref().and_then(|d| d.call_method0("_enter").ok());
    let out = f();
    if let (Some(d), Some(saved)) = (driver, saved) {
        if let Err(e) = d.call_method1("_exit", (saved,)) {
            e.print(py);
        }
    }
    out
}

fn current() -> Option<Fanout> {
    CURRENT.lock().ok().and_then(|c| *c)
}

// The host's statuses (`HostStatus`, the ABI's one table), as numbers for Python: the
// `ngx_pool` package reads their names from `_ngx_pool` (`OK`, `GONE`, ...).
const OK: i32 = HostStatus::Ok.raw();
const YOURS: i32 = HostStatus::TaskYours.raw();

fn code(kind: ErrorKind) -> i32 {
    kind.status().raw()
}

/// True while a request or task runs (tasks can be queued).
#[pyfunction]
fn active() -> bool {
    current().is_some()
}

/// How many workers the pool may run at once.
#[pyfunction]
fn workers() -> u32 {
    ngx_pool_sdk::pool_workers()
}

/// Queues a task: (0, handle), or (status, 0).
#[pyfunction]
fn submit(data: &[u8]) -> (i32, u64) {
    let Some(f) = current() else {
        return (code(ErrorKind::State), 0);
    };
    match f.submit(data) {
        Ok(Some(t)) => (OK, t.raw()),
        Ok(None) => (code(ErrorKind::Full), 0),
        Err(e) => (code(e.kind()), 0),
    }
}

/// Waits for one of `tasks` (the GIL released meanwhile): (0, answered), (1, yours), or
/// (status, 0).
#[pyfunction]
fn wait(py: Python<'_>, tasks: Vec<u64>, timeout_ms: i64) -> (i32, u64) {
    let Some(f) = current() else {
        return (code(ErrorKind::State), 0);
    };
    let ids: Vec<TaskId> = tasks.into_iter().map(TaskId::from_raw).collect();
    let timeout = u64::try_from(timeout_ms)
        .ok()
        .map(std::time::Duration::from_millis);
    match py.allow_threads(|| f.wait(&ids, timeout)) {
        Ok(Ready::Answered(t)) => (OK, t.raw()),
        Ok(Ready::Yours(t)) => (YOURS, t.raw()),
        Err(e) => (code(e.kind()), 0),
    }
}

/// The answer of an answered task, which is released: (0, bytes) or (status, None).
#[pyfunction]
fn result(py: Python<'_>, task: u64) -> (i32, Option<Py<PyBytes>>) {
    let Some(f) = current() else {
        return (code(ErrorKind::State), None);
    };
    match f.result(TaskId::from_raw(task)) {
        Ok(bytes) => (OK, Some(PyBytes::new(py, &bytes).unbind())),
        Err(e) => (code(e.kind()), None),
    }
}

/// Forgets a task (cancelled if unanswered).
#[pyfunction]
fn release(task: u64) {
    if let Some(f) = current() {
        f.release(TaskId::from_raw(task));
    }
}

/// A line to nginx's error log at `level` (`"notice"`, `"error"`, ...), tagged with the pool and
/// this worker's pid (what `ngx_pool._stdio` writes the app's stdout and stderr with).
#[pyfunction]
fn log(level: &str, text: &str) {
    let level = match level {
        "error" => ngx_pool_sdk::Level::Error,
        "warn" => ngx_pool_sdk::Level::Warn,
        "info" => ngx_pool_sdk::Level::Info,
        _ => ngx_pool_sdk::Level::Notice,
    };
    ngx_pool_sdk::log(level, text);
}

/// Registers `_ngx_pool`, then imports the `ngx_pool` package again over it: `python -m
/// ngx_pool` imported it before the primitives existed, as a program outside a pool does (its
/// `Pool` then falls back to `multiprocessing`). The extension itself stays: it is this code.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let m = PyModule::new(py, "_ngx_pool")?;
    m.add_function(wrap_pyfunction!(active, &m)?)?;
    m.add_function(wrap_pyfunction!(workers, &m)?)?;
    m.add_function(wrap_pyfunction!(submit, &m)?)?;
    m.add_function(wrap_pyfunction!(wait, &m)?)?;
    m.add_function(wrap_pyfunction!(result, &m)?)?;
    m.add_function(wrap_pyfunction!(release, &m)?)?;
    m.add_function(wrap_pyfunction!(log, &m)?)?;
    for status in HostStatus::ALL {
        m.add(status.name(), status.raw())?;
    }
    let modules = py.import("sys")?.getattr("modules")?;
    modules.set_item("_ngx_pool", &m)?;
    let stale: Vec<String> = modules
        .call_method0("keys")?
        .try_iter()?
        .filter_map(|k| k.ok()?.extract::<String>().ok())
        .filter(|k| k == "ngx_pool" || (k.starts_with("ngx_pool.") && k != "ngx_pool._native"))
        .collect();
    for name in stale {
        modules.del_item(name)?;
    }
    py.import("ngx_pool")?;
    Ok(())
}

/// Runs a task's pickled payload through `ngx_pool._run_task`: the pickled outcome.
pub fn run(py: Python<'_>, input: &[u8]) -> PyResult<Vec<u8>> {
    let out = py
        .import("ngx_pool")?
        .call_method1("_run_task", (PyBytes::new(py, input),))?;
    Ok(out.downcast::<PyBytes>()?.as_bytes().to_vec())
}
