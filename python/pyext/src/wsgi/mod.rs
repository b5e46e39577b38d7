//! The WSGI handler: a handler on the ngx-pool ABI, compiled into the extension, that runs a
//! WSGI app (PEP 3333) in the pool workers, for `handler=wsgi:MODULE:CALLABLE`, in the app's
//! own interpreter (the one that imported `ngx_pool._native` and runs poold's code).
//!
//! Its life follows the SDK's hooks:
//!
//! * `init`, in the pool manager as the pool's user: `python_path=` and the working directory
//!   go first on `sys.path`, and with `preload=on` the app is imported here, once, then
//!   `gc.freeze()` so the workers share its pages copy-on-write (Gunicorn's `preload_app`);
//! * `before_fork` / `after_fork` around each fork, `worker_init` first in each worker: the
//!   interpreter quiesced and restored as `os.fork()` does it (`fork.rs`); with
//!   `preload=off` the app is imported in each worker here instead;
//! * `handle`: the environ (`environ.rs`), the call, the response streamed out (`respond.rs`).

pub(crate) mod environ;
pub(crate) mod fanout;
mod io;
mod respond;

use crate::app::{self, python_error};
use crate::fork;
use crate::settings::Settings;
use ngx_pool_sdk::{
    Error, ErrorKind, Handler, Level, Request, Response, Result, Status, Stream, Task,
};
use pyo3::exceptions::{PySystemExit, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use respond::StartResponse;
use std::sync::OnceLock;

/// A WSGI app in a pool.
pub struct Wsgi {
    settings: Settings,
    /// The app's callable: imported in `init` (`preload=on`) or in `worker_init`.
    app: OnceLock<Py<PyAny>>,
    shared: environ::Shared,
}

impl Wsgi {
    fn app_name(&self) -> String {
        format!("{}:{}", self.settings.module, self.settings.callable)
    }

    /// Imports the app and finds its callable.
    fn import(&self, py: Python<'_>) -> Result {
        let app = app::import(py, &self.settings, "WSGI")?;
        let _ = self.app.set(app);
        Ok(())
    }

    fn call(&self, py: Python<'_>, req: &Request<'_>, stream: Stream) -> Result {
        let Some(app) = self.app.get() else {
            return Err(Error::msg("the WSGI app is not loaded"));
        };
        let responder = Bound::new(py, StartResponse::new(stream))
            .map_err(|e| Error::msg(python_error(py, &e)))?;
        let outcome = (|| -> PyResult<()> {
            let environ = environ::build(py, &self.shared, req, stream)?;
            let result = app.bind(py).call1((environ, &responder))?;
            let streamed = stream_out(&result, &responder);
            // PEP 3333: close() whatever happened, the client gone included.
            let closed = match result.getattr(pyo3::intern!(py, "close")) {
                Ok(close) => close.call0().map(drop),
                Err(_) => Ok(()),
            };
            streamed?;
            closed?;
            responder.borrow_mut().send_head()
        })();
        match outcome {
            Ok(()) => Ok(()),
            Err(e) => self.failed(py, stream, &responder, e),
        }
    }

    fn failed(
        &self,
        py: Python<'_>,
        stream: Stream,
        responder: &Bound<'_, StartResponse>,
        e: PyErr,
    ) -> Result {
        if e.is_instance_of::<PySystemExit>(py) {
            // Gunicorn's worker exits on SystemExit too: this request gets 502 from poold,
            // which starts another worker.
            stream.log(
                Level::Error,
                &format!(
                    "the WSGI app {} raised SystemExit during a request: the pool worker exits",
                    self.app_name()
                ),
            );
            std::process::exit(1);
        }
        let r = responder.borrow();
        if r.gone {
            return Err(Error::new(ErrorKind::Gone, "the client went away"));
        }
        stream.log(
            Level::Error,
            &format!(
                "the WSGI app {} failed:\n{}",
                self.app_name(),
                python_error(py, &e)
            ),
        );
        if r.sent() {
            return Err(Error::msg(
                "the response was cut short by the exception above",
            ));
        }
        stream.start(
            Status::INTERNAL_SERVER_ERROR,
            &[(b"Content-Type", b"text/plain; charset=utf-8")],
        )?;
        stream.write(b"Internal Server Error\n")
    }
}

/// Sends what the app's iterable yields, each chunk as it comes (see
/// [`StartResponse::flush_after_chunk`]); a list or tuple is known whole and goes out at once.
fn stream_out(result: &Bound<'_, PyAny>, responder: &Bound<'_, StartResponse>) -> PyResult<()> {
    let known_whole = result.is_instance_of::<PyList>() || result.is_instance_of::<PyTuple>();
    for item in result.try_iter()? {
        let item = item?;
        let chunk = item.downcast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "the response iterable yielded a {}, not bytes",
                item.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        // Borrowed only for the write: the app's next step may call write() itself.
        let mut r = responder.borrow_mut();
        r.body(chunk.as_bytes(), false)?;
        if !known_whole && r.flush_after_chunk() {
            r.body(&[], true)?;
        }
    }
    Ok(())
}

impl Handler for Wsgi {
    fn init(args: &str) -> Result<Self> {
        let settings = Settings::parse(args).map_err(Error::msg)?;
        Python::with_gil(|py| {
            let fail = |e: PyErr| Error::msg(format!("Python set-up: {}", python_error(py, &e)));
            app::set_up(py, &settings)?;
            let file_wrapper = py
                .import("wsgiref.util")
                .and_then(|m| m.getattr("FileWrapper"))
                .map_err(fail)?;
            let wsgi = Wsgi {
                settings,
                app: OnceLock::new(),
                shared: environ::Shared {
                    version: PyTuple::new(py, [1, 0]).map_err(fail)?.into_any().unbind(),
                    file_wrapper: file_wrapper.unbind(),
                },
            };
            if wsgi.settings.preload {
                wsgi.import(py)?;
                app::warn_about_threads(py, &wsgi.app_name());
            }
            app::freeze_and_tell(py, &wsgi.settings, "WSGI")?;
            Ok(wsgi)
        })
    }

    fn before_fork(&self) {
        fork::before_fork();
    }

    fn after_fork(&self) {
        fork::after_fork_in_parent();
    }

    fn worker_init(&self) -> Result {
        fork::after_fork_in_child();
        Python::with_gil(|py| {
            if self.settings.preload {
                return Ok(());
            }
            self.import(py)
        })
    }

    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        let stream = resp.into_stream();
        let _current = fanout::enter(stream.fanout());
        Python::with_gil(|py| fanout::scoped(py, || self.call(py, req, stream)))
    }

    fn run_task(&self, task: &Task) -> Result {
        let input = task.input()?;
        let _current = fanout::enter(task.fanout());
        let out = Python::with_gil(|py| {
            fanout::scoped(py, || fanout::run(py, &input)).map_err(|e| {
                Error::msg(format!(
                    "the fan-out task could not run:\n{}",
                    python_error(py, &e)
                ))
            })
        })?;
        task.write(&out)
    }
}

ngx_pool_sdk::export_handler!(Wsgi, "wsgi");
