//! The `http` scope of a request (ASGI HTTP spec 2.4): copied out of shared memory by the lane
//! (no Python there), made a dict on the loop's thread.

use crate::wsgi::environ::percent_decoded;
use ngx_pool_sdk::Request;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

/// What the scope is made of, owned.
pub struct RequestData {
    method: String,
    http_version: &'static str,
    scheme: &'static str,
    raw_path: Vec<u8>,
    /// Decoded.
    path: Vec<u8>,
    query: Vec<u8>,
    root_path: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    client: Option<(String, u16)>,
    /// The listening address and port, or a unix socket's path and None.
    server: Option<(String, Option<u16>)>,
    /// A `websocket` scope (a handshake nginx offers to upgrade), else `http`.
    websocket: bool,
}

impl RequestData {
    pub fn of(req: &Request<'_>, websocket: bool) -> RequestData {
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let port = |name: &str| {
            req.param_str(name)
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or(0)
        };
        let client = Some(req.client())
            .filter(|c| !c.is_empty())
            .map(|c| (c.to_string(), req.client_port()));
        // The address the request came in on, as the spec says (uvicorn's listening
        // address); never the client's Host header, which the client chooses.
        let server = text(req.param("SERVER_ADDR"))
            .filter(|a| !a.is_empty())
            .map(|addr| match addr.strip_prefix("unix:") {
                Some(path) => (path.to_string(), None),
                None => (addr, Some(port("SERVER_PORT"))),
            });
        let scheme = match req.param("REQUEST_SCHEME") {
            Some(b"https") => "https",
            _ => "http",
        };
        let http_version = match req.version() {
            (1, 0) => "1.0",
            (2, _) => "2",
            (3, _) => "3",
            _ => "1.1",
        };
        let uri = req.uri().as_bytes();
        let mut raw_path = match uri.iter().position(|&c| c == b'?') {
            Some(i) => &uri[..i],
            None => uri,
        };
        // nginx's $document_uri: decoded, normalised, and what a `rewrite` made of the URI
        // (the WSGI handler's PATH_INFO comes from it too). Where it is not the request line's
        // path decoded (a rewrite), the app sees the rewritten path, raw as well.
        let document_uri = req.param("DOCUMENT_URI").filter(|d| !d.is_empty());
        let path = match document_uri {
            Some(d) => d.to_vec(),
            None => percent_decoded(raw_path),
        };
        if document_uri.is_some_and(|d| d != percent_decoded(raw_path).as_slice()) {
            raw_path = document_uri.unwrap_or_default();
        }
        RequestData {
            method: req.method().to_string(),
            http_version,
            scheme,
            raw_path: raw_path.to_vec(),
            path,
            query: req.query().as_bytes().to_vec(),
            root_path: req.param("SCRIPT_NAME").unwrap_or_default().to_vec(),
            headers: req
                .headers()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
                .collect(),
            client,
            server,
            websocket,
        }
    }

    /// The scope dict.
    pub fn scope<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let scope = PyDict::new(py);
        let asgi = PyDict::new(py);
        asgi.set_item(pyo3::intern!(py, "version"), "3.0")?;
        asgi.set_item(pyo3::intern!(py, "spec_version"), "2.4")?;
        scope.set_item(pyo3::intern!(py, "asgi"), asgi)?;
        scope.set_item(pyo3::intern!(py, "http_version"), self.http_version)?;
        if self.websocket {
            scope.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "websocket"))?;
            let scheme = if self.scheme == "https" { "wss" } else { "ws" };
            scope.set_item(pyo3::intern!(py, "scheme"), scheme)?;
            // Offered subprotocols, in the client's order, from every such header.
            let subprotocols = PyList::empty(py);
            for (n, v) in &self.headers {
                if n == b"sec-websocket-protocol" {
                    for p in v.split(|b| *b == b',') {
                        let p = p.trim_ascii();
                        if !p.is_empty() {
                            subprotocols.append(PyString::new(py, &String::from_utf8_lossy(p)))?;
                        }
                    }
                }
            }
            scope.set_item(pyo3::intern!(py, "subprotocols"), subprotocols)?;
            let extensions = PyDict::new(py);
            extensions.set_item("websocket.http.response", PyDict::new(py))?;
            scope.set_item(pyo3::intern!(py, "extensions"), extensions)?;
        } else {
            scope.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "http"))?;
            scope.set_item(pyo3::intern!(py, "method"), &self.method)?;
            scope.set_item(pyo3::intern!(py, "scheme"), self.scheme)?;
        }
        // `path` is decoded (UTF-8, as uvicorn decodes it) and includes root_path, as ASGI
        // wants since spec 2.? (Starlette strips root_path from it for routing).
        scope.set_item(
            pyo3::intern!(py, "path"),
            PyString::new(py, &String::from_utf8_lossy(&self.path)),
        )?;
        scope.set_item(
            pyo3::intern!(py, "raw_path"),
            PyBytes::new(py, &self.raw_path),
        )?;
        scope.set_item(
            pyo3::intern!(py, "query_string"),
            PyBytes::new(py, &self.query),
        )?;
        scope.set_item(
            pyo3::intern!(py, "root_path"),
            PyString::new(py, &String::from_utf8_lossy(&self.root_path)),
        )?;
        let headers = PyList::empty(py);
        for (n, v) in &self.headers {
            headers.append(PyTuple::new(
                py,
                [PyBytes::new(py, n), PyBytes::new(py, v)],
            )?)?;
        }
        scope.set_item(pyo3::intern!(py, "headers"), headers)?;
        match &self.client {
            Some((host, port)) => scope.set_item(pyo3::intern!(py, "client"), (host, *port))?,
            None => scope.set_item(pyo3::intern!(py, "client"), py.None())?,
        }
        match &self.server {
            Some((host, port)) => scope.set_item(pyo3::intern!(py, "server"), (host, *port))?,
            None => scope.set_item(pyo3::intern!(py, "server"), py.None())?,
        }
        Ok(scope)
    }
}
