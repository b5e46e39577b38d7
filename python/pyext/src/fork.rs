//! The interpreter across poold's forks: quiesced before each fork, brought back in each child,
//! as `os.fork()` does it (poold forks the workers itself, not through Python).
//!
//! The one module of the WSGI handler with `unsafe` code: calls into CPython's C API that pyo3 has
//! no safe form of. The order follows CPython's own `os.fork()` (Modules/posixmodule.c): the
//! forking thread holds the GIL, `PyOS_BeforeFork` (takes the import lock, runs the
//! `os.register_at_fork(before=...)` callbacks), `fork`, then `PyOS_AfterFork_Parent` in the
//! parent and `PyOS_AfterFork_Child` in the child (re-creates the GIL and the thread states,
//! runs the `after_in_child` callbacks).

use pyo3::ffi;
use std::cell::Cell;

thread_local! {
    /// The GIL state taken in `before_fork`, given back after the fork (in both processes: the
    /// child inherits this thread's memory).
    static HELD_ACROSS_FORK: Cell<Option<ffi::PyGILState_STATE>> = const { Cell::new(None) };
}

/// In the pool manager, just before poold forks a worker.
pub fn before_fork() {
    // SAFETY: the interpreter runs (it imported this module) and this thread does not hold the GIL
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
