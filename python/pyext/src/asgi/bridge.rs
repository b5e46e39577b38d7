//! Where a worker's lanes meet its event loop: new requests and news of running ones go into
//! one inbox, and an eventfd the loop reads (`loop.add_reader`) says there is something. The
//! eventfd is written only when the inbox was empty, so a busy loop takes many requests per
//! wake-up and a lane pays no system call for most of them. Also the lifespan's hand-over:
//! the loop says when startup has run (or failed) and when shutdown has.

use super::call::{Call, CallHandle};
use super::scope::RequestData;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

#[derive(Default)]
struct Inbox {
    new: Vec<(Arc<Call>, RequestData)>,
    woken: Vec<Arc<Call>>,
    /// The eventfd was written and the loop has not drained since.
    signalled: bool,
    /// The worker stops: the loop runs the lifespan's shutdown and ends.
    stop: bool,
}

/// Where the app's lifespan is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Serving,
    /// Startup failed: the message (with the app's traceback).
    Failed(String),
    Stopped,
}

pub struct Bridge {
    inbox: Mutex<Inbox>,
    /// The calls handed to the loop, for a loop that dies to let their lanes write what it
    /// sent them first ([`BridgeHandle::flush`]).
    live: Mutex<Vec<Weak<Call>>>,
    eventfd: OwnedFd,
    phase: Mutex<Phase>,
    phase_changed: Condvar,
}

impl Bridge {
    pub fn new() -> std::io::Result<Bridge> {
        let eventfd = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )?;
        Ok(Bridge {
            inbox: Mutex::default(),
            live: Mutex::default(),
            eventfd: eventfd.into(),
            phase: Mutex::new(Phase::Starting),
            phase_changed: Condvar::new(),
        })
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn signal(&self, inbox: &mut Inbox) {
        if !inbox.signalled {
            inbox.signalled = true;
            let _ = nix::unistd::write(&self.eventfd, &1u64.to_ne_bytes());
        }
    }

    /// A lane: a new request for the app.
    pub fn submit(&self, call: Arc<Call>, request: RequestData) {
        {
            let mut live = self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if live.len() >= 64 && live.len().is_power_of_two() {
                live.retain(|c| c.strong_count() > 0);
            }
            live.push(Arc::downgrade(&call));
        }
        let mut inbox = self.inbox();
        inbox.new.push((call, request));
        self.signal(&mut inbox);
    }

    /// A lane: news of a running request.
    pub fn wake(&self, call: Arc<Call>) {
        let mut inbox = self.inbox();
        inbox.woken.push(call);
        self.signal(&mut inbox);
    }

    /// The worker leaves: the loop is to run the lifespan's shutdown and stop.
    pub fn stop(&self) {
        let mut inbox = self.inbox();
        inbox.stop = true;
        self.signal(&mut inbox);
    }

    fn set_phase(&self, phase: Phase) {
        *self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = phase;
        self.phase_changed.notify_all();
    }

    /// Waits (without the GIL) until the phase is no longer `from`, `limit` at most.
    pub fn wait_phase_past(&self, from: &Phase, limit: Duration) -> Phase {
        let guard = self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (guard, _) = self
            .phase_changed
            .wait_timeout_while(guard, limit, |p| p == from)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.clone()
    }
}

/// The bridge as the event loop's Python code holds it (`ngx_pool._asgi`).
#[pyclass(module = "ngx_pool._native", frozen)]
pub struct BridgeHandle(pub Arc<Bridge>);

#[pymethods]
impl BridgeHandle {
    /// The descriptor that is readable when the inbox has something.
    #[getter]
    fn fd(&self) -> i32 {
        self.0.eventfd.as_raw_fd()
    }

    /// Takes what the inbox holds: `(new, woken, stop)`, `new` a list of `(call, scope)`,
    /// `woken` a list of calls.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(self.0.eventfd.as_raw_fd(), &mut buf);
        let (new, woken, stop) = {
            let mut inbox = self.0.inbox();
            inbox.signalled = false;
            (
                std::mem::take(&mut inbox.new),
                std::mem::take(&mut inbox.woken),
                inbox.stop,
            )
        };
        let new_list = PyList::empty(py);
        for (call, request) in new {
            let scope = request.scope(py)?;
            new_list.append((CallHandle(call), scope))?;
        }
        let woken_list = PyList::empty(py);
        for call in woken {
            woken_list.append(CallHandle(call))?;
        }
        PyTuple::new(
            py,
            [
                new_list.into_any(),
                woken_list.into_any(),
                pyo3::types::PyBool::new(py, stop).to_owned().into_any(),
            ],
        )
    }

    /// The lifespan's startup ran (`error` None) or failed.
    #[pyo3(signature = (error=None))]
    fn started(&self, error: Option<String>) {
        self.0.set_phase(match error {
            None => Phase::Serving,
            Some(e) => Phase::Failed(e),
        });
    }

    /// The loop has died (`SystemExit` in a task of the app's): waits (1 s at most) until the
    /// lanes have written what the app had sent them, before the worker ends.
    fn flush(&self, py: Python<'_>) {
        py.allow_threads(|| {
            let until = std::time::Instant::now() + Duration::from_secs(1);
            while std::time::Instant::now() < until {
                let pending = self
                    .0
                    .live
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .filter_map(Weak::upgrade)
                    .any(|c| c.has_unwritten());
                if !pending {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
    }

    /// The lifespan's shutdown ran (or there was none): the worker may leave.
    fn stopped(&self) {
        self.0.set_phase(Phase::Stopped);
    }
}
