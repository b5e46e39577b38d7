//! The ASGI handler: a handler on the ngx-pool ABI, compiled into the extension, that runs an
//! ASGI 3.0 app (HTTP spec 2.4) for `handler=asgi:MODULE:APP`, in the app's own interpreter.
//!
//! A worker runs `concurrency=N` requests at once: poold gives it N lanes (`poold::lanes`),
//! threads that each hold a request in the region and call [`Asgi::handle`] for it. No lane
//! touches Python: `handle` copies the request out of shared memory, passes it to the app's
//! event loop through the [`bridge`] and then serves the [`call`] (the body in, the answer out,
//! the client and the deadline watched) until the answer is complete. The event loop runs on
//! a thread of its own started in `worker_init` (`ngx_pool._asgi`), with the lifespan's
//! startup before the first request and its shutdown in `worker_exit`.
//!
//! `init`, the forks and the import are the WSGI handler's (`crate::app`, `crate::fork`).

mod bridge;
mod call;
mod scope;
mod websocket;
mod ws_events;

pub use bridge::BridgeHandle;
pub use call::CallHandle;

use crate::app::{self, python_error};
use crate::fork;
use crate::settings::Settings;
use bridge::{Bridge, Phase};
use call::{Call, ToApp, ToLane, BODY_AHEAD};
use ngx_pool_sdk::{Error, ErrorKind, Handler, Level, Request, Response, Result, Status, Stream};
use pyo3::prelude::*;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A response head the app sent, held until its first body (so that a second
/// `http.response.start` can still be answered 500).
type Head = (u16, Vec<(Vec<u8>, Vec<u8>)>);

/// How often a lane that waits for the app looks at whether nginx still wants the answer.
const WATCH: Duration = Duration::from_millis(100);
/// How often a worker whose lifespan startup has not completed says so.
const STARTUP_WARN: Duration = Duration::from_secs(10);
/// How long a worker waits for the lifespan's shutdown before it leaves anyway.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// An ASGI app in a pool.
pub struct Asgi {
    settings: Settings,
    app: OnceLock<Py<PyAny>>,
    /// This worker's bridge to its event loop (made in `worker_init`).
    bridge: OnceLock<Arc<Bridge>>,
}

/// The descriptor poold runs `asgi:` pools with.
pub fn descriptor() -> *const ngx_pool_sdk::abi::ngx_pool_handler {
    ngx_pool_sdk::handler_descriptor!(Asgi, "asgi")
}

impl Asgi {
    fn app_name(&self) -> String {
        format!("{}:{}", self.settings.module, self.settings.callable)
    }

    /// Starts the event loop's thread, runs the lifespan's startup on it, and waits for it.
    fn start_loop(&self, py: Python<'_>) -> Result {
        let bridge = Arc::new(Bridge::new().map_err(|e| Error::msg(format!("eventfd: {e}")))?);
        let handle = Py::new(py, BridgeHandle(bridge.clone()))
            .map_err(|e| Error::msg(python_error(py, &e)))?;
        let app = self
            .app
            .get()
            .ok_or_else(|| Error::msg("the ASGI app is not loaded"))?;
        py.import("ngx_pool._asgi")
            .and_then(|m| {
                m.call_method1(
                    "start",
                    (
                        handle,
                        app.bind(py),
                        self.settings.lifespan.as_str(),
                        self.app_name(),
                        self.settings.timeout_ms as f64 / 1000.0,
                    ),
                )
            })
            .map_err(|e| {
                Error::msg(format!(
                    "cannot start the event loop: {}",
                    python_error(py, &e)
                ))
            })?;
        let _ = self.bridge.set(bridge.clone());
        // Startup runs on the loop's thread: this one lets go of the GIL while it waits, and
        // says so now and then (uvicorn waits for ever too, but silently).
        let since = Instant::now();
        let phase = py.allow_threads(|| loop {
            let phase = bridge.wait_phase_past(&Phase::Starting, STARTUP_WARN);
            if phase != Phase::Starting {
                break phase;
            }
            ngx_pool_sdk::log(
                Level::Warn,
                &format!(
                    "the ASGI app {}'s lifespan startup has not completed after {} s; the worker serves once it has",
                    self.app_name(),
                    since.elapsed().as_secs()
                ),
            );
        });
        match phase {
            Phase::Failed(why) => Err(Error::msg(format!(
                "the ASGI app {}'s lifespan startup failed; the worker exits:\n{why}",
                self.app_name()
            ))),
            _ => Ok(()),
        }
    }

    /// Serves `call` from lane's side until the answer is complete or nobody wants it.
    fn serve(&self, req: &Request<'_>, stream: Stream, call: &Arc<Call>) -> Result {
        let started = Instant::now();
        let deadline = (self.settings.timeout_ms > 0)
            .then(|| started + Duration::from_millis(self.settings.timeout_ms));
        let mut body = req.body_reader();
        let mut body_left = req.body_len();
        let mut head: Option<Head> = None;
        let mut sent_head = false;
        let mut buf = Vec::new();
        loop {
            let mut st = call.lock();
            // The request body, read ahead of the app while there is room.
            if body_left > 0 && st.to_app_bytes < BODY_AHEAD && !st.disconnected {
                drop(st);
                buf.resize((body_left as usize).min(64 << 10), 0);
                let n = std::io::Read::read(&mut body, &mut buf).unwrap_or(0);
                body_left = if n == 0 { 0 } else { body_left - n as u64 };
                let mut st = call.lock();
                st.to_app_bytes += n;
                st.to_app
                    .push_back(ToApp::Body(buf[..n].to_vec(), body_left > 0));
                st.body_complete = body_left == 0;
                call.tell_app(&mut st, false);
                continue;
            }
            if let Some(msg) = st.to_lane.pop_front() {
                if let ToLane::Body { data, .. } = &msg {
                    st.to_lane_bytes -= data.len();
                    if st.app_waiting && st.to_lane_bytes <= call::SEND_AHEAD / 2 {
                        call.tell_app(&mut st, false);
                    }
                }
                drop(st);
                match msg {
                    ToLane::Start { status, headers } => head = Some((status, headers)),
                    ToLane::Body { data, more } => {
                        if !sent_head {
                            sent_head = true;
                            let Some((status, headers)) = head.take() else {
                                continue;
                            };
                            start(stream, status, &headers)?;
                        }
                        if !data.is_empty() {
                            stream.write(&data)?;
                        }
                        if !more {
                            return Ok(());
                        }
                        if data.is_empty() {
                            stream.flush()?;
                        }
                    }
                    ToLane::Done(error) => {
                        return self.ended(stream, error, head.take(), sent_head, started);
                    }
                    // WebSocket messages: refused on an http scope by the loop's checks.
                    ToLane::Accept { .. } | ToLane::Message(_) | ToLane::Close { .. } => {}
                }
                continue;
            }
            // Nothing from the app now: is the answer still wanted?
            let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
            if stream.is_cancelled() || past_deadline {
                if past_deadline || self.deadline_near(started) {
                    if !st.cancel {
                        st.cancel = true;
                        call.tell_app(&mut st, true);
                    }
                    // The app's task ends with CancelledError; its Done comes next.
                    let st = call.lane_wait(st, WATCH);
                    drop(st);
                    continue;
                }
                st.disconnected = true;
                call.tell_app(&mut st, false);
                return Err(Error::new(ErrorKind::Gone, "the client went away"));
            }
            let limit = deadline.map_or(WATCH, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(WATCH)
                    .max(Duration::from_millis(1))
            });
            drop(call.lane_wait(st, limit));
        }
    }

    /// Whether nginx giving a request up now is its deadline (rather than its client leaving):
    /// the pool's timeout, less what the request may have waited in the queue, is near.
    fn deadline_near(&self, started: Instant) -> bool {
        self.settings.timeout_ms > 0
            && started.elapsed() + Duration::from_millis(50)
                >= Duration::from_millis(self.settings.timeout_ms)
    }

    /// The app's coroutine ended before the answer was complete.
    fn ended(
        &self,
        stream: Stream,
        error: Option<String>,
        head: Option<Head>,
        sent_head: bool,
        started: Instant,
    ) -> Result {
        match error {
            Some(why) if why == "cancelled" => {
                let limit = self.settings.timeout_ms;
                stream.log(
                    Level::Error,
                    &format!(
                        "the ASGI app {} ran past the pool's timeout of {limit} ms ({} ms): its task was cancelled",
                        self.app_name(),
                        started.elapsed().as_millis()
                    ),
                );
                Err(Error::new(ErrorKind::Timeout, "cancelled at its deadline"))
            }
            Some(why) => {
                stream.log(
                    Level::Error,
                    &format!("the ASGI app {} failed: {why}", self.app_name()),
                );
                if sent_head {
                    return Err(Error::msg("the response was cut short by the error above"));
                }
                internal_error(stream)
            }
            None => {
                let what = match (sent_head, head.is_some()) {
                    (true, _) => "returned before the response was complete (its last http.response.body had more_body); the response is cut short",
                    (false, true) => "returned before the response was complete (no http.response.body after http.response.start); 500",
                    (false, false) => "returned without sending http.response.start; 500",
                };
                stream.log(
                    Level::Error,
                    &format!("the ASGI app {} {what}", self.app_name()),
                );
                if sent_head {
                    // The client must see the answer is incomplete: nginx closes the
                    // connection without ending the body.
                    return Err(Error::msg("the response is incomplete"));
                }
                internal_error(stream)
            }
        }
    }
}

fn start(stream: Stream, status: u16, headers: &[(Vec<u8>, Vec<u8>)]) -> Result {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    stream.start(
        Status::new(status).unwrap_or(Status::INTERNAL_SERVER_ERROR),
        &pairs,
    )
}

fn internal_error(stream: Stream) -> Result {
    stream.start(
        Status::INTERNAL_SERVER_ERROR,
        &[(b"Content-Type", b"text/plain; charset=utf-8")],
    )?;
    stream.write(b"Internal Server Error\n")
}

impl Handler for Asgi {
    fn init(args: &str) -> Result<Self> {
        let settings = Settings::parse(args).map_err(Error::msg)?;
        Python::with_gil(|py| {
            app::set_up(py, &settings)?;
            let asgi = Asgi {
                settings,
                app: OnceLock::new(),
                bridge: OnceLock::new(),
            };
            if asgi.settings.preload {
                let a = app::import(py, &asgi.settings, "ASGI")?;
                let _ = asgi.app.set(a);
                app::warn_about_threads(py, &asgi.app_name());
            }
            app::freeze_and_tell(py, &asgi.settings, "ASGI")?;
            Ok(asgi)
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
            if !self.settings.preload {
                let a = app::import(py, &self.settings, "ASGI")?;
                let _ = self.app.set(a);
            }
            self.start_loop(py)
        })
    }

    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        let Some(bridge) = self.bridge.get() else {
            return Err(Error::msg("the ASGI event loop is not running"));
        };
        let stream = resp.into_stream();
        // nginx offers the upgrade of a WebSocket handshake (an open body): the app gets a
        // websocket scope. Other requests, `Upgrade` header or not, are http.
        let websocket = req.body_is_open();
        if websocket {
            if let Err(refusal) = websocket::check_handshake(req) {
                return websocket::refuse(stream, refusal);
            }
        }
        let call = Arc::new(Call::new(bridge.clone(), req.body_len()));
        bridge.submit(call.clone(), scope::RequestData::of(req, websocket));
        let out = if websocket {
            self.serve_websocket(req, stream, &call)
        } else {
            self.serve(req, stream, &call)
        };
        // Whatever the app sends from now on is dropped; its receive() says disconnect (a
        // streaming response's listener for it waits there now).
        let mut st = call.lock();
        st.lane_gone = true;
        if out.is_err() {
            // Given up (the client left, a write failed, the deadline): the app's send()
            // raises from now on rather than pile up what nobody will read.
            st.disconnected = true;
        }
        call.tell_app(&mut st, false);
        // An error the app raised after its answer was complete (Starlette's error middleware
        // answers 500, then raises): logged all the same. Later ones the loop logs itself.
        let late: Vec<String> = st
            .to_lane
            .drain(..)
            .filter_map(|m| match m {
                ToLane::Done(Some(e)) if e != "cancelled" => Some(e),
                _ => None,
            })
            .collect();
        drop(st);
        for e in late {
            stream.log(
                Level::Error,
                &format!("the ASGI app {} failed: {e}", self.app_name()),
            );
        }
        out
    }

    fn worker_exit(&self) {
        if let Some(bridge) = self.bridge.get() {
            bridge.stop();
            if bridge.wait_phase_past(&Phase::Serving, SHUTDOWN_WAIT) == Phase::Serving {
                ngx_pool_sdk::log(
                    Level::Warn,
                    &format!(
                        "the ASGI app {}'s lifespan shutdown did not complete within {} s; the worker leaves",
                        self.app_name(),
                        SHUTDOWN_WAIT.as_secs()
                    ),
                );
            }
        }
    }
}
