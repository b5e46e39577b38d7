//! The events of a `websocket` scope (ASGI WebSocket spec 2.4) on the loop's side: what
//! `receive()` gives and what `send()` takes, checked against the protocol. The lane turns
//! them into frames ([`super::websocket`]).

use super::call::{
    bytes_of, headers_of, violation, Call, CallGuard, ToApp, ToLane, WsMessage, WsPhase, SEND_AHEAD,
};
use pyo3::exceptions::{PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use std::sync::Arc;

/// Close code the app is told when the connection ended without a close frame.
pub const ABNORMAL: u16 = 1006;

/// The next `receive()` event of a websocket scope, or None (the loop waits for news).
pub fn receive<'py>(
    py: Python<'py>,
    call: &Arc<Call>,
    mut st: CallGuard<'_>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let event = PyDict::new(py);
    let Some(next) = st.to_app.pop_front() else {
        if st.disconnected || st.lane_gone {
            drop(st);
            disconnect(&event, ABNORMAL, "")?;
            return Ok(Some(event));
        }
        st.app_waiting = true;
        return Ok(None);
    };
    if let ToApp::Message(m) = &next {
        st.to_app_bytes -= m.len();
        // The lane reads more of the client once there is room.
        call.wake_lane(&mut st);
    }
    if matches!(next, ToApp::Disconnect(..)) {
        st.ws = WsPhase::Closed;
    }
    drop(st);
    match next {
        ToApp::Connect => event.set_item(
            pyo3::intern!(py, "type"),
            pyo3::intern!(py, "websocket.connect"),
        )?,
        ToApp::Message(m) => {
            event.set_item(
                pyo3::intern!(py, "type"),
                pyo3::intern!(py, "websocket.receive"),
            )?;
            match m {
                WsMessage::Text(t) => event.set_item(pyo3::intern!(py, "text"), t)?,
                WsMessage::Binary(b) => {
                    event.set_item(pyo3::intern!(py, "bytes"), PyBytes::new(py, &b))?
                }
            }
        }
        ToApp::Disconnect(code, reason) => disconnect(&event, code, &reason)?,
        ToApp::Body(..) => disconnect(&event, ABNORMAL, "")?,
    }
    Ok(Some(event))
}

fn disconnect(event: &Bound<'_, PyDict>, code: u16, reason: &str) -> PyResult<()> {
    let py = event.py();
    event.set_item(
        pyo3::intern!(py, "type"),
        pyo3::intern!(py, "websocket.disconnect"),
    )?;
    event.set_item(pyo3::intern!(py, "code"), code)?;
    event.set_item(pyo3::intern!(py, "reason"), reason)
}

/// A close code an endpoint may send (RFC 6455 7.4: 1000-1003, 1007-1014, 3000-4999).
fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Takes one message of the app's `send()` on a websocket scope; true if the app should wait
/// before the next.
pub fn send(
    py: Python<'_>,
    call: &Arc<Call>,
    mut st: CallGuard<'_>,
    kind: &str,
    message: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    let field = |name: &str| message.get_item(name).ok().filter(|v| !v.is_none());
    if st.disconnected || st.lane_gone {
        if kind == "websocket.close" {
            // Closing what the client already closed: nothing to do (apps close in `finally`).
            return Ok(false);
        }
        return Err(PyOSError::new_err(
            "the WebSocket is closed: the client went away",
        ));
    }
    let phase = st.ws;
    let msg = match (kind, phase) {
        ("websocket.accept", WsPhase::Connecting) => {
            let subprotocol = match field("subprotocol") {
                Some(s) => Some(s.extract::<String>().map_err(|_| {
                    PyTypeError::new_err("websocket.accept's subprotocol is a str or None")
                })?),
                None => None,
            };
            let headers = headers_of(&mut st, call, field("headers"), "websocket.accept")?;
            st.ws = WsPhase::Open;
            ToLane::Accept {
                subprotocol,
                headers,
            }
        }
        ("websocket.send", WsPhase::Open) => {
            let text = field("text");
            let bytes = field("bytes");
            let m = match (text, bytes) {
                (Some(t), None) => WsMessage::Text(t.extract::<String>().map_err(|_| {
                    violation(
                        &mut st,
                        call,
                        "websocket.send with a text that is not a str".into(),
                    )
                })?),
                (None, Some(b)) => match bytes_of(&b) {
                    Some(b) => WsMessage::Binary(b),
                    None => {
                        return Err(violation(
                            &mut st,
                            call,
                            "websocket.send with bytes that are not bytes".into(),
                        ))
                    }
                },
                _ => {
                    return Err(violation(
                        &mut st,
                        call,
                        "websocket.send with both or neither of \"bytes\" and \"text\"".into(),
                    ))
                }
            };
            st.to_lane_bytes += m.len();
            ToLane::Message(m)
        }
        ("websocket.close", WsPhase::Connecting | WsPhase::Open) => {
            let code = match field("code") {
                Some(c) => c.extract::<i64>().ok(),
                None => Some(1000),
            };
            let code = match code {
                Some(c) if (0..=u16::MAX as i64).contains(&c) && sendable(c as u16) => c as u16,
                _ => {
                    return Err(violation(
                        &mut st,
                        call,
                        format!(
                            "websocket.close with the code {} (1000-1003, 1007-1014 or 3000-4999)",
                            message
                                .get_item("code")
                                .map(|c| c.repr().map(|r| r.to_string()).unwrap_or_default())
                                .unwrap_or_default()
                        ),
                    ))
                }
            };
            let reason = match field("reason") {
                Some(r) => r.downcast::<PyString>()?.to_str()?.to_owned(),
                None => String::new(),
            };
            if reason.len() > 123 {
                return Err(violation(
                    &mut st,
                    call,
                    "websocket.close with a reason over 123 bytes (a close frame's limit)".into(),
                ));
            }
            st.ws = WsPhase::Closed;
            ToLane::Close { code, reason }
        }
        ("websocket.close", WsPhase::Closed) => return Ok(false),
        ("websocket.http.response.start", WsPhase::Connecting) => {
            let status = message
                .get_item(pyo3::intern!(py, "status"))
                .ok()
                .and_then(|s| s.extract::<i64>().ok());
            let status = match status {
                Some(s) if (200..=599).contains(&s) => s as u16,
                _ => {
                    return Err(violation(
                        &mut st,
                        call,
                        "websocket.http.response.start with a status outside 200-599".into(),
                    ))
                }
            };
            let headers = headers_of(
                &mut st,
                call,
                field("headers"),
                "websocket.http.response.start",
            )?;
            st.ws = WsPhase::HttpResponse;
            st.started = true;
            ToLane::Start { status, headers }
        }
        ("websocket.http.response.body", WsPhase::HttpResponse) => {
            let data = match field("body") {
                Some(b) => bytes_of(&b).ok_or_else(|| {
                    violation(
                        &mut st,
                        call,
                        "websocket.http.response.body with a body that is not bytes".into(),
                    )
                })?,
                None => Vec::new(),
            };
            let more = match field("more_body") {
                Some(m) => m.is_truthy()?,
                None => false,
            };
            if !more {
                st.ws = WsPhase::Closed;
                st.complete = true;
            }
            st.to_lane_bytes += data.len();
            ToLane::Body { data, more }
        }
        (other, phase) => {
            let when = match phase {
                WsPhase::Connecting => "before websocket.accept",
                WsPhase::Open => "on an open WebSocket",
                WsPhase::HttpResponse => "during websocket.http.response",
                _ => "after the WebSocket closed",
            };
            return Err(violation(
                &mut st,
                call,
                format!("a message of type \"{}\" {when}", PyString::new(py, other)),
            ));
        }
    };
    st.to_lane.push_back(msg);
    call.wake_lane(&mut st);
    let wait = st.to_lane_bytes > SEND_AHEAD;
    if wait {
        st.app_waiting = true;
    }
    Ok(wait)
}
