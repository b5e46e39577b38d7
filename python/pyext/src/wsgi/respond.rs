//! The response side of a WSGI call: `start_response` (with `exc_info`), the `write()`
//! callable, and the response iterable streamed out as it yields, `close()` always called.

use ngx_pool_sdk::{ErrorKind, Status, Stream};
use pyo3::exceptions::{PyAssertionError, PyIOError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// What `start_response` was given, and how far the response got.
#[pyclass(module = "ngx_pool")]
pub struct StartResponse {
    stream: Stream,
    status: Option<Status>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The head went to the host: status and headers can no longer change.
    sent: bool,
    content_length: Option<u64>,
    written: u64,
    /// The client went away (a write said so): stop producing.
    pub gone: bool,
}

/// A header name or value as bytes: WSGI gives native strings of latin-1 code points.
fn latin1_bytes(s: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    let s = s
        .downcast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be a str")))?;
    s.to_cow()?
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| PyValueError::new_err(format!("{what} is not latin-1")))
}

fn write_error(e: ngx_pool_sdk::Error) -> PyErr {
    PyIOError::new_err(e.to_string())
}

impl StartResponse {
    pub fn new(stream: Stream) -> StartResponse {
        StartResponse {
            stream,
            status: None,
            headers: Vec::new(),
            sent: false,
            content_length: None,
            written: 0,
            gone: false,
        }
    }

    pub fn started(&self) -> bool {
        self.status.is_some()
    }

    pub fn sent(&self) -> bool {
        self.sent
    }

    /// Sends the head if it is not out yet.
    pub fn send_head(&mut self) -> PyResult<()> {
        if self.sent {
            return Ok(());
        }
        let status = self.status.ok_or_else(|| {
            PyAssertionError::new_err("the app returned without calling start_response")
        })?;
        self.sent = true;
        let list: Vec<(&[u8], &[u8])> =
            self.headers.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        self.stream.start(status, &list).map_err(|e| self.failed(e))
    }

    fn failed(&mut self, e: ngx_pool_sdk::Error) -> PyErr {
        if e.kind() == ErrorKind::Gone {
            self.gone = true;
        }
        write_error(e)
    }

    /// Writes body bytes, sending the head first. `flush`: the app may pause before what comes
    /// next, so what it gave so far goes out now.
    pub fn body(&mut self, data: &[u8], flush: bool) -> PyResult<()> {
        if data.is_empty() && !flush {
            return Ok(());
        }
        self.send_head()?;
        if !data.is_empty() {
            self.stream.write(data).map_err(|e| self.failed(e))?;
            self.written += data.len() as u64;
        }
        if flush {
            self.stream.flush().map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    /// Whether a chunk the iterable yielded goes out before the next is asked for (the app may
    /// take its time producing it): yes, unless the app declared a length and has reached it (a
    /// buffered Flask response is one chunk with its Content-Length: nothing to flush, the
    /// host sends it with the end).
    pub fn flush_after_chunk(&self) -> bool {
        match self.content_length {
            Some(n) => self.written < n,
            None => true,
        }
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let mut me = slf.borrow_mut();
            match exc_info {
                // PEP 3333: after the head is out, start_response with exc_info re-raises.
                Some(info) if me.sent => {
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                Some(_) => {}
                None if me.status.is_some() => {
                    return Err(PyAssertionError::new_err(
                        "start_response called a second time without exc_info",
                    ))
                }
                None => {}
            }
            let text = latin1_bytes(status, "status")?;
            let code = text
                .get(..3)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u16>().ok())
                .filter(|_| text.get(3) == Some(&b' '))
                .and_then(Status::new)
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "status {:?} is not \"NNN Reason\"",
                        String::from_utf8_lossy(&text)
                    ))
                })?;
            let mut list = Vec::new();
            let mut length = None;
            for item in headers.try_iter()? {
                let item = item?;
                let (name, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) =
                    item.extract().map_err(|_| {
                        PyTypeError::new_err("each header must be a (name, value) tuple")
                    })?;
                let name = latin1_bytes(&name, "header name")?;
                let value = latin1_bytes(&value, "header value")?;
                // Refused here, as Gunicorn does, so the app's traceback says which header.
                let token = |c: &u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c);
                if name.is_empty() || !name.iter().all(token) {
                    return Err(PyValueError::new_err(format!(
                        "invalid header name {:?}",
                        String::from_utf8_lossy(&name)
                    )));
                }
                if value.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0) {
                    return Err(PyValueError::new_err(format!(
                        "the value of header {:?} holds CR, LF or NUL",
                        String::from_utf8_lossy(&name)
                    )));
                }
                if name.eq_ignore_ascii_case(b"content-length") {
                    length = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok());
                }
                list.push((name, value));
            }
            me.status = Some(code);
            me.headers = list;
            me.content_length = length;
        }
        slf.getattr(pyo3::intern!(py, "write"))
    }

    /// The `write()` callable `start_response` returns: sends at once (PEP 3333).
    fn write(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data
            .downcast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        self.body(data.as_bytes(), true)
    }
}
