//! One ASGI request between its two threads: the lane that holds it in the region (reads the
//! body from shared memory, writes the answer, watches the client and the deadline) and the
//! event loop that runs the app. They meet in [`CallState`] under one lock; neither blocks the
//! other: the lane sleeps on the call's condition variable, the loop on a future that the
//! lane's news resolves through the bridge ([`super::bridge`]).

use super::bridge::Bridge;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What the app sent, for the lane to write.
pub enum ToLane {
    Start {
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Body {
        data: Vec<u8>,
        more: bool,
    },
    /// The app's coroutine ended: `None`, or what went wrong (a traceback, a broken rule).
    Done(Option<String>),
    /// `websocket.accept`.
    Accept {
        subprotocol: Option<String>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// `websocket.send`.
    Message(WsMessage),
    /// `websocket.close` (before `websocket.accept`: the handshake is refused, 403).
    Close {
        code: u16,
        reason: String,
    },
}

/// A WebSocket message's payload.
pub enum WsMessage {
    Text(String),
    Binary(Vec<u8>),
}

impl WsMessage {
    pub fn len(&self) -> usize {
        match self {
            WsMessage::Text(t) => t.len(),
            WsMessage::Binary(b) => b.len(),
        }
    }
}

/// What the lane has for the app's `receive()`.
pub enum ToApp {
    Body(Vec<u8>, bool),
    /// `websocket.connect` (the first event of a websocket scope).
    Connect,
    /// `websocket.receive`.
    Message(WsMessage),
    /// `websocket.disconnect`, with its close code and reason.
    Disconnect(u16, String),
}

/// Where a websocket scope's protocol stands (the app's side of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WsPhase {
    /// Not a websocket scope.
    #[default]
    None,
    /// `websocket.connect` given; `accept`, `close` or an HTTP response may follow.
    Connecting,
    /// Accepted: messages flow.
    Open,
    /// Answered with `websocket.http.response.start`: its body follows.
    HttpResponse,
    /// Closed by the app (or refused), or the client disconnected.
    Closed,
}

/// Request body the lane reads ahead of the app: enough for a form in one go, little enough
/// that a large upload streams.
pub const BODY_AHEAD: usize = 256 << 10;
/// Answer bytes the app may have sent ahead of the lane before its `send()` waits.
pub const SEND_AHEAD: usize = 1 << 20;

#[derive(Default)]
pub struct CallState {
    pub to_lane: VecDeque<ToLane>,
    /// Body bytes in `to_lane`.
    pub to_lane_bytes: usize,
    pub to_app: VecDeque<ToApp>,
    pub to_app_bytes: usize,
    /// The request body is all in `to_app` (or taken).
    pub body_complete: bool,
    /// The loop awaits news of this call (its `receive()` found nothing, or its `send()` is
    /// over [`SEND_AHEAD`]): the lane's next news goes through the bridge.
    pub app_waiting: bool,
    /// The request's deadline passed: the app's task is to be cancelled.
    pub cancel: bool,
    /// The client went away (or nginx gave the request up): `receive()` gives
    /// `http.disconnect`, `send()` raises.
    pub disconnected: bool,
    /// The lane is done with the request (answered, or gave up): later messages are dropped.
    pub lane_gone: bool,
    /// The lane sleeps on the call's condition variable (a wake-up is a system call: made only
    /// then).
    pub lane_waiting: bool,
    /// Protocol state, kept on the loop's side.
    pub started: bool,
    pub complete: bool,
    /// The app broke a rule (its lane says which): the exception that follows is not logged
    /// again.
    pub violated: bool,
    /// A websocket scope's protocol state.
    pub ws: WsPhase,
    /// Wakes the lane out of its wait for the client's bytes (an open WebSocket's lane sleeps
    /// there, not on the condition variable).
    pub waker: Option<ngx_pool_sdk::Waker>,
    /// Wake-ups decided under the lock, made once it is released ([`CallGuard`]).
    wake_lane: bool,
    wake_reader: bool,
    wake_app: bool,
}

pub struct Call {
    state: Mutex<CallState>,
    /// The lane sleeps here.
    lane_wakes: Condvar,
    bridge: Arc<Bridge>,
}

impl Call {
    pub fn new(bridge: Arc<Bridge>, body_len: u64) -> Call {
        let mut st = CallState {
            body_complete: body_len == 0,
            ..Default::default()
        };
        if body_len == ngx_pool_sdk::abi::NGX_POOL_BODY_OPEN {
            // A WebSocket handshake: no body; the first receive() is websocket.connect.
            st.body_complete = true;
            st.ws = WsPhase::Connecting;
            st.to_app.push_back(ToApp::Connect);
        } else if body_len == 0 {
            // No body: the first receive() is one empty http.request all the same.
            st.to_app.push_back(ToApp::Body(Vec::new(), false));
        }
        Call {
            state: Mutex::new(st),
            lane_wakes: Condvar::new(),
            bridge,
        }
    }

    /// The call's state, locked; the wake-ups decided while it is held are made when the
    /// guard drops, after the lock is released.
    pub fn lock(self: &Arc<Self>) -> CallGuard<'_> {
        CallGuard {
            guard: Some(
                self.state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
            call: self,
        }
    }

    /// [`Call::lock`] for the loop's side, which holds the GIL: a lock held by a thread that
    /// waits for the GIL (an app's other thread in `send()`, while this call's `send()` runs the
    /// app's Python under the lock: its headers' `__iter__`) is waited for without it, so the
    /// two cannot wait for each other.
    pub fn lock_py(self: &Arc<Self>, py: Python<'_>) -> CallGuard<'_> {
        loop {
            let guard = match self.state.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    py.allow_threads(|| drop(self.state.lock()));
                    continue;
                }
            };
            return CallGuard {
                guard: Some(guard),
                call: self,
            };
        }
    }

    /// The lane: sleeps until the app has news or `limit` passes.
    pub fn lane_wait<'a>(
        &self,
        mut st: CallGuard<'a>,
        limit: std::time::Duration,
    ) -> CallGuard<'a> {
        // News for the app decided in this critical section cannot wait for the guard to drop
        // (the lane sleeps first): it goes now, under the lock (a rare path: a cancellation).
        st.wake_now();
        st.lane_waiting = true;
        let guard = st.guard.take().unwrap_or_else(|| unreachable!());
        let mut guard = self
            .lane_wakes
            .wait_timeout(guard, limit)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        guard.lane_waiting = false;
        st.guard = Some(guard);
        st
    }

    /// The loop: wakes the lane if it sleeps (once the lock is released).
    pub(super) fn wake_lane(&self, st: &mut CallState) {
        if st.lane_waiting {
            st.lane_waiting = false;
            st.wake_lane = true;
        }
        if st.waker.is_some() {
            st.wake_reader = true;
        }
    }

    /// Whether the app sent something its lane has not written yet.
    pub fn has_unwritten(self: &Arc<Self>) -> bool {
        let st = self.lock();
        !st.lane_gone && st.to_lane.iter().any(|m| !matches!(m, ToLane::Done(_)))
    }

    /// The lane: tells the app's side of news, if it waits for some (or `always`), once the
    /// lock is released.
    pub fn tell_app(&self, st: &mut CallState, always: bool) {
        if st.app_waiting || always {
            st.app_waiting = false;
            st.wake_app = true;
        }
    }
}

/// The call's state, locked. The other thread is woken only after the lock is released: woken
/// under it, it would find the lock held, sleep on it, and need a second wake-up (and on a busy
/// machine the event loop would wait for a preempted lane that holds it).
pub struct CallGuard<'a> {
    guard: Option<MutexGuard<'a, CallState>>,
    call: &'a Arc<Call>,
}

impl CallGuard<'_> {
    /// Makes the wake-ups decided so far, under the lock.
    fn wake_now(&mut self) {
        if let Some(st) = self.guard.as_mut() {
            Wakes::take(st).make(self.call);
        }
    }
}

/// The wake-ups a critical section decided: the lane asleep on the condition variable, the
/// lane asleep in its wait for the client's bytes (an open WebSocket's), the event loop.
struct Wakes {
    lane: bool,
    waker: Option<ngx_pool_sdk::Waker>,
    app: bool,
}

impl Wakes {
    fn take(st: &mut CallState) -> Wakes {
        Wakes {
            lane: std::mem::take(&mut st.wake_lane),
            waker: std::mem::take(&mut st.wake_reader)
                .then_some(st.waker)
                .flatten(),
            app: std::mem::take(&mut st.wake_app),
        }
    }

    fn make(self, call: &Arc<Call>) {
        if self.lane {
            call.lane_wakes.notify_one();
        }
        if let Some(w) = self.waker {
            w.wake();
        }
        if self.app {
            call.bridge.wake(call.clone());
        }
    }
}

impl Deref for CallGuard<'_> {
    type Target = CallState;
    fn deref(&self) -> &CallState {
        self.guard.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for CallGuard<'_> {
    fn deref_mut(&mut self) -> &mut CallState {
        self.guard.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let Some(mut st) = self.guard.take() else {
            return;
        };
        let wakes = Wakes::take(&mut st);
        drop(st);
        wakes.make(self.call);
    }
}

/// A call as the event loop's Python code holds it (`ngx_pool._asgi`).
#[pyclass(module = "ngx_pool._native", frozen)]
pub struct CallHandle(pub Arc<Call>);

pub(super) fn violation(st: &mut CallState, call: &Call, rule: String) -> PyErr {
    if !st.lane_gone {
        // The lane names the rule (and answers 500 if it can); else the loop logs the
        // RuntimeError, which names it too.
        st.to_lane.push_back(ToLane::Done(Some(format!(
            "it broke the ASGI protocol: {rule}"
        ))));
        st.violated = true;
        call.wake_lane(st);
    }
    st.complete = true;
    PyRuntimeError::new_err(format!("ASGI protocol: {rule}"))
}

/// A header name as RFC 9110 allows it (a token).
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// A field value as RFC 9110 allows it: visible characters, obs-text, spaces and tabs (no
/// other control character: CR, LF and NUL would split the response, the rest confuse clients).
fn valid_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&c| c == b'\t' || (c >= 0x20 && c != 0x7f))
}

/// The `headers` of message `what` (absent: none): pairs of byte strings, a token and a value
/// without control characters; anything else breaks the protocol.
pub(super) fn headers_of(
    st: &mut CallState,
    call: &Call,
    list: Option<Bound<'_, PyAny>>,
    what: &str,
) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut headers = Vec::new();
    let Some(list) = list else {
        return Ok(headers);
    };
    for pair in list.try_iter()? {
        let pair = pair?;
        let two = pair.len().is_ok_and(|n| n == 2);
        let name = pair
            .get_item(0)
            .ok()
            .filter(|_| two)
            .and_then(|n| bytes_of(&n));
        let value = pair.get_item(1).ok().and_then(|v| bytes_of(&v));
        match (name, value) {
            (Some(n), Some(v)) if valid_name(&n) && valid_value(&v) => headers.push((n, v)),
            _ => {
                let shown = pair.repr().map(|r| r.to_string()).unwrap_or_default();
                return Err(violation(
                    st,
                    call,
                    format!("{what} with the header {shown} (a pair of byte strings: a token, and a value without control characters)"),
                ));
            }
        }
    }
    Ok(headers)
}

pub(super) fn bytes_of(v: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    if let Ok(b) = v.downcast::<PyBytes>() {
        return Some(b.as_bytes().to_vec());
    }
    if let Ok(b) = v.downcast::<pyo3::types::PyByteArray>() {
        return Some(b.to_vec());
    }
    None
}

#[pymethods]
impl CallHandle {
    /// The next `receive()` event, or None when there is none yet (the loop then waits for
    /// this call's news).
    fn receive<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let call = &self.0;
        let mut st = call.lock_py(py);
        if st.ws != WsPhase::None {
            return super::ws_events::receive(py, call, st);
        }
        let event = PyDict::new(py);
        if let Some(ToApp::Body(data, more)) = st.to_app.pop_front() {
            st.to_app_bytes -= data.len();
            // The lane reads more once there is room.
            call.wake_lane(&mut st);
            drop(st);
            event.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "http.request"))?;
            event.set_item(pyo3::intern!(py, "body"), PyBytes::new(py, &data))?;
            event.set_item(pyo3::intern!(py, "more_body"), more)?;
            return Ok(Some(event));
        }
        // The client left; or the lane has (the answer sent, or the whole body taken): only a
        // disconnect can come, which the app gets now rather than never.
        if st.disconnected || (st.lane_gone && (st.complete || st.body_complete)) {
            drop(st);
            event.set_item(
                pyo3::intern!(py, "type"),
                pyo3::intern!(py, "http.disconnect"),
            )?;
            return Ok(Some(event));
        }
        st.app_waiting = true;
        Ok(None)
    }

    /// Takes one message of the app's `send()`; true if the app should wait before the next
    /// (the lane has [`SEND_AHEAD`] bytes to write already).
    fn send(&self, message: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = message.py();
        let call = &self.0;
        let kind: String = message
            .get_item(pyo3::intern!(py, "type"))
            .map_err(|_| PyTypeError::new_err("an ASGI message needs a \"type\""))?
            .extract()?;
        let mut st = call.lock_py(py);
        if st.ws != WsPhase::None {
            return super::ws_events::send(py, call, st, &kind, message);
        }
        if st.disconnected {
            return Err(PyOSError::new_err("the client went away"));
        }
        if st.lane_gone && !st.complete {
            // The lane gave the answer up (the client is gone): as above, rather than pile up
            // what nobody will read. After a complete answer, the rules below say what is wrong.
            return Err(PyOSError::new_err("the client went away"));
        }
        match kind.as_str() {
            "http.response.start" => {
                if st.started {
                    return Err(violation(
                        &mut st,
                        call,
                        "http.response.start sent twice".into(),
                    ));
                }
                let status = message
                    .get_item(pyo3::intern!(py, "status"))
                    .ok()
                    .and_then(|s| s.extract::<i64>().ok());
                let status = match status {
                    Some(s) if (100..=599).contains(&s) => s as u16,
                    _ => {
                        return Err(violation(
                            &mut st,
                            call,
                            format!(
                                "http.response.start with status {} (an int from 100 to 599)",
                                message
                                    .get_item("status")
                                    .map(|s| s.repr().map(|r| r.to_string()).unwrap_or_default())
                                    .unwrap_or_else(|_| "missing".into())
                            ),
                        ))
                    }
                };
                let headers = headers_of(
                    &mut st,
                    call,
                    message.get_item(pyo3::intern!(py, "headers")).ok(),
                    "http.response.start",
                )?;
                st.started = true;
                st.to_lane.push_back(ToLane::Start { status, headers });
            }
            "http.response.body" => {
                if !st.started {
                    return Err(violation(
                        &mut st,
                        call,
                        "http.response.body sent before http.response.start".into(),
                    ));
                }
                if st.complete {
                    return Err(violation(
                        &mut st,
                        call,
                        "http.response.body sent after the response was complete".into(),
                    ));
                }
                let data = match message.get_item(pyo3::intern!(py, "body")) {
                    Ok(b) => match bytes_of(&b) {
                        Some(d) => d,
                        None => {
                            return Err(violation(
                                &mut st,
                                call,
                                format!(
                                    "http.response.body with a body of type {} (bytes)",
                                    b.get_type().name()?
                                ),
                            ))
                        }
                    },
                    Err(_) => Vec::new(),
                };
                let more = match message.get_item(pyo3::intern!(py, "more_body")) {
                    Ok(m) => m.is_truthy()?,
                    Err(_) => false,
                };
                st.complete = !more;
                st.to_lane_bytes += data.len();
                st.to_lane.push_back(ToLane::Body { data, more });
            }
            other => {
                return Err(violation(
                    &mut st,
                    call,
                    format!(
                        "a message of type \"{}\" on an http scope",
                        PyString::new(py, other)
                    ),
                ))
            }
        }
        // The head waits for the first body (see `ToLane::Start`): no need to wake the lane.
        if kind != "http.response.start" {
            call.wake_lane(&mut st);
        }
        let wait = st.to_lane_bytes > SEND_AHEAD && !st.lane_gone;
        if wait {
            st.app_waiting = true;
        }
        Ok(wait)
    }

    /// The app's coroutine ended, with `error` (a traceback) if it raised.
    /// False if the lane has left (the answer was complete): an error is then the loop's to
    /// log.
    #[pyo3(signature = (error=None))]
    fn finish(&self, py: Python<'_>, error: Option<String>) -> bool {
        let mut st = self.0.lock_py(py);
        if st.violated && error.is_some() {
            // The RuntimeError of a broken rule, which the lane has named already.
            return true;
        }
        if st.lane_gone {
            return false;
        }
        st.to_lane.push_back(ToLane::Done(error));
        self.0.wake_lane(&mut st);
        true
    }

    /// Whether the request's deadline passed (the loop cancels the app's task).
    fn cancel_due(&self, py: Python<'_>) -> bool {
        self.0.lock_py(py).cancel
    }

    /// A number for this call, stable while it lives (the loop keys its waiters by it).
    #[getter]
    fn key(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}
