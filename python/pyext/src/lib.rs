//! `ngx_pool._native`: poold's run and the WSGI handler as a Python extension module, so that a
//! pool runs in the app's own interpreter: `python -m ngx_pool serve ARGS` (see
//! `python/ngx-pool/ngx_pool/__main__.py`). Nothing here links libpython: the interpreter that
//! imports the module is the one the app runs in, the same executable Gunicorn would use.

use pyo3::prelude::*;

mod app;
mod asgi;
mod fork;
mod settings;
pub(crate) mod wsgi;

/// Runs a pool with `args` (poold's command-line arguments, see `poold --help`) in this
/// interpreter, the GIL released (the WSGI handler takes it when it runs Python); returns once
/// the pool has stopped (or after printing the help or the version).
#[pyfunction]
fn serve(py: Python<'_>, args: Vec<String>) {
    // SAFETY: the handlers' descriptors are statics made by the SDK's `export_handler!` (never
    // NULL), compiled into this module, which stays loaded while the interpreter runs.
    let handlers = unsafe {
        poold::run::PythonHandlers {
            wsgi: &*wsgi::ngx_pool_handler_v1(),
            asgi: &*asgi::descriptor(),
        }
    };
    py.allow_threads(|| poold::run::run(args.into_iter(), Some(handlers)));
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_class::<asgi::CallHandle>()?;
    m.add_class::<asgi::BridgeHandle>()?;
    Ok(())
}
