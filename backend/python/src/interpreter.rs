//! The embedded interpreter's life in a forking server: started once in the pool manager with
//! Python's signal handlers off, quiesced across each fork, brought back in each child.
//!
//! The one module of the adapter with `unsafe` code: calls into CPython's C API that pyo3 has
//! no safe form of. The order follows CPython's own `os.fork()` (Modules/posixmodule.c): the
//! forking thread holds the GIL, `PyOS_BeforeFork` (takes the import lock, runs the
//! `os.register_at_fork(before=...)` callbacks), `fork`, then `PyOS_AfterFork_Parent` in the
//! parent and `PyOS_AfterFork_Child` in the child (re-creates the GIL and the thread states,
//! runs the `after_in_child` callbacks).

use pyo3::ffi;
use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::path::Path;

thread_local! {
    /// The GIL state taken in `before_fork`, given back after the fork (in both processes: the
    /// child inherits this thread's memory).
    static HELD_ACROSS_FORK: Cell<Option<ffi::PyGILState_STATE>> = const { Cell::new(None) };
}

/// The `major.minor` of the libpython this adapter is linked with (e.g. `3.11`).
pub fn linked_version() -> String {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string and may be called before
    // the interpreter is initialised.
    let full = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }.to_string_lossy();
    let number = full.split_whitespace().next().unwrap_or("");
    number.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Starts the interpreter: no signal handlers (poold owns signals), and with `venv` its
/// `bin/python` as the executable, so `sys.prefix` is the venv and its site-packages are on
/// `sys.path`. The GIL is released on return (pyo3's `Python::with_gil` takes it when needed).
pub fn start(venv: Option<&Path>) -> Result<(), String> {
    // SAFETY: Py_IsInitialized may be called at any time.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        return Ok(());
    }
    let executable = venv
        .map(|v| CString::new(v.join("bin/python").as_os_str().as_encoded_bytes()))
        .transpose()
        .map_err(|_| "venv path contains a NUL byte".to_string())?;
    let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
    // SAFETY: PyConfig_InitPythonConfig fills in every field of the config it is given; the
    // config is then only used through the C API, and cleared before it goes out of scope.
    unsafe {
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.assume_init_mut();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        // stdout and stderr are the error log: an app's print() should reach it as it is
        // written, not when a block buffer fills (PYTHONUNBUFFERED, as Gunicorn users set).
        config.buffered_stdio = 0;
        let mut status = ffi::PyStatus_Ok();
        if let Some(exe) = &executable {
            status = ffi::PyConfig_SetBytesString(config, &mut config.executable, exe.as_ptr());
        }
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::Py_InitializeFromConfig(config);
        }
        ffi::PyConfig_Clear(config);
        if ffi::PyStatus_Exception(status) != 0 {
            let why = if status.err_msg.is_null() {
                "unknown error".into()
            } else {
                CStr::from_ptr(status.err_msg)
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!("the Python interpreter did not start: {why}"));
        }
        // Initialisation left this thread holding the GIL: give it back.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// In the pool manager, just before poold forks a worker.
pub fn before_fork() {
    // SAFETY: the interpreter is initialised (init ran) and this thread does not hold the GIL
    // (every pyo3 section has ended); PyGILState_Ensure takes it, PyOS_BeforeFork requires it.
    let state = unsafe {
        let state = ffi::PyGILState_Ensure();
        ffi::PyOS_BeforeFork();
        state
    };
    HELD_ACROSS_FORK.with(|h| h.set(Some(state)));
}

/// In the pool manager, just after the fork (or its failure).
pub fn after_fork_in_parent() {
    if let Some(state) = HELD_ACROSS_FORK.with(|h| h.take()) {
        // SAFETY: paired with `before_fork` on this thread, which holds the GIL.
        unsafe {
            ffi::PyOS_AfterFork_Parent();
            ffi::PyGILState_Release(state);
        }
    }
}

/// In a new pool worker, first thing: the interpreter made whole again in this process.
pub fn after_fork_in_child() {
    if let Some(state) = HELD_ACROSS_FORK.with(|h| h.take()) {
        // SAFETY: this process was forked by the thread that ran `before_fork` (so it holds the
        // GIL and its thread state is current); PyOS_AfterFork_Child is the call CPython makes
        // in the same place, then the GIL is released as it was before the fork.
        unsafe {
            ffi::PyOS_AfterFork_Child();
            ffi::PyGILState_Release(state);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn knows_its_python() {
        let v = super::linked_version();
        assert!(v.starts_with("3."), "{v}");
    }
}
