//! `wsgi.input` (the request body, streamed from shared memory as nginx delivers it: any size in
//! constant memory) and `wsgi.errors` (lines to nginx's error_log).

use ngx_pool_sdk::{ErrorKind, Level, Stream};
use pyo3::exceptions::{PyIOError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

/// How much is pulled from shared memory at a time.
const READ_BLOCK: usize = 64 << 10;

/// `wsgi.input`: `read(n)`, `read()`, `readline()`, `readlines()`, iteration.
#[pyclass(module = "ngx_pool")]
pub struct Input {
    stream: Stream,
    /// Read from the stream, not yet given to the app: `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

fn io_error(e: ngx_pool_sdk::Error) -> PyErr {
    match e.kind() {
        ErrorKind::Gone => PyIOError::new_err("the client went away"),
        ErrorKind::State => PyIOError::new_err("the request is over: wsgi.input is closed"),
        _ => PyIOError::new_err(e.to_string()),
    }
}

impl Input {
    pub fn new(stream: Stream) -> Input {
        Input {
            stream,
            buf: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Pulls the next block into the buffer; false at the end of the body.
    fn fill(&mut self) -> PyResult<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let at = self.buf.len();
        self.buf.resize(at + READ_BLOCK, 0);
        let n = self.stream.read(&mut self.buf[at..]);
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(at);
                return Err(io_error(e));
            }
        };
        self.buf.truncate(at + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// Takes up to `n` bytes (all with `None`), reading as needed.
    fn take(&mut self, n: Option<usize>) -> PyResult<Vec<u8>> {
        while n.is_none_or(|n| self.buffered().len() < n) {
            if !self.fill()? {
                break;
            }
        }
        let len = n.map_or(self.buffered().len(), |n| n.min(self.buffered().len()));
        let out = self.buffered()[..len].to_vec();
        self.pos += len;
        Ok(out)
    }

    /// Takes a line (with its `\n`), at most `limit` bytes.
    fn line(&mut self, limit: Option<usize>) -> PyResult<Vec<u8>> {
        let mut scanned = 0;
        loop {
            let avail = self.buffered();
            let window = limit.map_or(avail.len(), |l| l.min(avail.len()));
            if let Some(i) = avail[scanned..window].iter().position(|&c| c == b'\n') {
                return self.take(Some(scanned + i + 1));
            }
            if limit.is_some_and(|l| avail.len() >= l) {
                return self.take(limit);
            }
            scanned = window;
            if !self.fill()? {
                return self.take(None);
            }
        }
    }
}

fn size_arg(size: Option<isize>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.take(size_arg(size))?;
        Ok(PyBytes::new(py, &data))
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.line(size_arg(size))?;
        Ok(PyBytes::new(py, &data))
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<isize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint).filter(|h| *h > 0);
        let out = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.line(None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            out.append(PyBytes::new(py, &line))?;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(out)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let line = self.line(None)?;
        if line.is_empty() {
            return Err(PyStopIteration::new_err(()));
        }
        Ok(PyBytes::new(py, &line))
    }

    /// Nothing to close: the body belongs to the request.
    fn close(&self) {}
}

/// `wsgi.errors`: text written here goes to nginx's error_log, a line at a time, tagged with
/// the request's URI.
#[pyclass(module = "ngx_pool")]
pub struct Errors {
    stream: Stream,
    pending: String,
}

impl Errors {
    pub fn new(stream: Stream) -> Errors {
        Errors {
            stream,
            pending: String::new(),
        }
    }

    fn emit_lines(&mut self) {
        while let Some(i) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=i).collect();
            self.stream.log(Level::Error, line.trim_end_matches('\n'));
        }
    }
}

#[pymethods]
impl Errors {
    fn write(&mut self, s: &str) {
        self.pending.push_str(s);
        self.emit_lines();
    }

    fn writelines(&mut self, lines: Vec<String>) {
        for l in lines {
            self.write(&l);
        }
    }

    fn flush(&mut self) {
        self.emit_lines();
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.stream.log(Level::Error, &rest);
        }
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        self.flush();
    }
}
