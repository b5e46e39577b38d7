//! What the WSGI and ASGI handlers do alike with the app's interpreter: set it up in the pool
//! manager (`sys.path`, the app's stdout and stderr as log lines), import the app, freeze what
//! the workers share, and format Python errors for the error log.

use crate::settings::Settings;
use ngx_pool_sdk::{Error, Level, Result};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// `e` with its traceback, as Python prints it.
pub fn python_error(py: Python<'_>, e: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let lines = py.import("traceback")?.call_method1(
            "format_exception",
            (e.get_type(py), e.value(py), e.traceback(py)),
        )?;
        PyString::new(py, "")
            .call_method1("join", (lines,))?
            .extract()
    })();
    formatted
        .map(|t| t.trim_end().to_string())
        .unwrap_or_else(|_| e.to_string())
}

/// In the pool manager, before the app is imported: `python_path=` then the working directory
/// (`chdir=`) first on `sys.path`, as Gunicorn puts its `--pythonpath` and `--chdir`; and what
/// the app prints made nginx-format lines with the pid of the process that writes
/// (`_stdio.py`), from here on, so that a logging handler the app makes at import (Django's
/// LOGGING) holds the line writer too, in every worker.
pub fn set_up(py: Python<'_>, settings: &Settings) -> Result {
    let fail = |e: PyErr| Error::msg(format!("Python set-up: {}", python_error(py, &e)));
    let sys = py.import("sys").map_err(fail)?;
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let path = sys.getattr("path").map_err(fail)?;
    let firsts = settings
        .python_path
        .iter()
        .map(|d| d.display().to_string())
        .chain(std::iter::once(cwd));
    for (i, dir) in firsts.enumerate() {
        path.call_method1("insert", (i, dir)).map_err(fail)?;
    }
    // `_ngx_pool` (the log, fan-out) before `_stdio`, which writes through it.
    crate::wsgi::fanout::install(py).map_err(fail)?;
    if let Err(e) = py
        .import("ngx_pool._stdio")
        .and_then(|m| m.call_method0("install"))
    {
        ngx_pool_sdk::log(
            Level::Warn,
            &format!(
                "the app's stdout and stderr stay raw: {}",
                python_error(py, &e)
            ),
        );
    }
    Ok(())
}

/// Imports the app and finds its callable (`kind`: "WSGI" or "ASGI", for the messages).
pub fn import(py: Python<'_>, settings: &Settings, kind: &str) -> Result<Py<PyAny>> {
    let name = format!("{}:{}", settings.module, settings.callable);
    let found = (|| -> PyResult<Bound<'_, PyAny>> {
        let mut obj = py.import(settings.module.as_str())?.into_any();
        for part in settings.callable.split('.') {
            obj = obj.getattr(part)?;
        }
        if !obj.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "{name} is a {}, not a {kind} callable",
                obj.get_type().name()?
            )));
        }
        Ok(obj)
    })();
    found.map(Bound::unbind).map_err(|e| {
        Error::msg(format!(
            "cannot load the {kind} app {name}:\n{}",
            python_error(py, &e)
        ))
    })
}

/// What the workers should not inherit without knowing: threads the import started.
pub fn warn_about_threads(py: Python<'_>, app_name: &str) {
    let count = (|| -> PyResult<usize> {
        let modules = py.import("sys")?.getattr("modules")?;
        match modules.get_item("threading") {
            Ok(t) => t.call_method0("active_count")?.extract(),
            Err(_) => Ok(1),
        }
    })()
    .unwrap_or(1);
    if count > 1 {
        ngx_pool_sdk::log(
            Level::Warn,
            &format!(
                "importing the app {app_name} started {} threads; with preload=on they do not exist in the workers (fork copies only the forking thread, and a lock one of them held stays locked): set preload=off to import it in each worker",
                count - 1
            ),
        );
    }
}

/// After the preload: what exists now is shared by every worker, so the collector is kept
/// from touching (and so copying) those pages; then the line that says what runs.
pub fn freeze_and_tell(py: Python<'_>, settings: &Settings, kind: &str) -> Result {
    let fail = |e: PyErr| Error::msg(format!("Python set-up: {}", python_error(py, &e)));
    py.import("gc")
        .and_then(|gc| gc.call_method0("freeze"))
        .map_err(fail)?;
    let sys = py.import("sys").map_err(fail)?;
    let version: String = sys
        .getattr("version")
        .and_then(|v| v.extract())
        .unwrap_or_default();
    ngx_pool_sdk::log(
        Level::Notice,
        &format!(
            "{kind} app {}:{} {} (Python {}, sys.prefix {})",
            settings.module,
            settings.callable,
            if settings.preload {
                "imported before forking"
            } else {
                "to be imported in each worker (preload=off)"
            },
            version.split_whitespace().next().unwrap_or(""),
            sys.getattr("prefix")
                .and_then(|p| p.extract::<String>())
                .unwrap_or_default()
        ),
    );
    Ok(())
}
