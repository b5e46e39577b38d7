//! The WSGI environ of a request (PEP 3333): the CGI variables from the request and the
//! `pool_param`s (a `pool_param` wins, so `pool_param SCRIPT_NAME /app;` mounts an app under a
//! prefix), every header as `HTTP_*`, and the `wsgi.*` keys.

use super::io::{Errors, Input};
use ngx_pool_sdk::{Request, Stream};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

/// A byte string as a WSGI "native string": each byte one code point (latin-1), as PEP 3333
/// requires of environ values.
pub fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(b) {
        // ASCII, the usual case, is the same in both.
        Ok(s) if s.is_ascii() => PyString::new(py, s),
        _ => PyString::new(py, &b.iter().map(|&c| c as char).collect::<String>()),
    }
}

/// `%XX` sequences decoded, as WSGI servers do for `PATH_INFO` (`+` stays: it is a space only in
/// query strings).
pub fn percent_decoded(path: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(path[i]);
        i += 1;
    }
    out
}

/// `Content-Type` → `HTTP_CONTENT_TYPE`: the CGI name of a header.
fn cgi_name(name: &[u8]) -> String {
    let mut s = String::with_capacity(5 + name.len());
    s.push_str("HTTP_");
    s.extend(name.iter().map(|&c| match c {
        b'-' => '_',
        c => (c as char).to_ascii_uppercase(),
    }));
    s
}

/// The environ key of a parameter of the default set (docs/abi.md), made once per worker, as
/// the other keys every request has are: not allocated again for each request.
fn known_key<'py>(py: Python<'py>, name: &[u8]) -> Option<&'py Bound<'py, PyString>> {
    Some(match name {
        b"SERVER_NAME" => intern!(py, "SERVER_NAME"),
        b"SERVER_PORT" => intern!(py, "SERVER_PORT"),
        b"SERVER_PROTOCOL" => intern!(py, "SERVER_PROTOCOL"),
        b"REQUEST_SCHEME" => intern!(py, "REQUEST_SCHEME"),
        b"REMOTE_ADDR" => intern!(py, "REMOTE_ADDR"),
        b"REMOTE_PORT" => intern!(py, "REMOTE_PORT"),
        b"DOCUMENT_URI" => intern!(py, "DOCUMENT_URI"),
        b"SCRIPT_NAME" => intern!(py, "SCRIPT_NAME"),
        b"SERVER_ADDR" => intern!(py, "SERVER_ADDR"),
        _ => return None,
    })
}

/// The objects every environ shares, made once per worker.
pub struct Shared {
    pub version: Py<PyAny>,
    pub file_wrapper: Py<PyAny>,
}

/// Builds the environ of `req`, with `wsgi.input` and `wsgi.errors` on `stream`.
pub fn build<'py>(
    py: Python<'py>,
    shared: &Shared,
    req: &Request<'_>,
    stream: Stream,
) -> PyResult<Bound<'py, PyDict>> {
    let env = PyDict::new(py);
    // The parameters first: the default set (SERVER_NAME, SERVER_PORT, SERVER_PROTOCOL,
    // REQUEST_SCHEME, REMOTE_ADDR, REMOTE_PORT, DOCUMENT_URI, SCRIPT_NAME, SERVER_ADDR) and the
    // location's pool_params, which replace defaults of the same name.
    for (name, value) in req.params() {
        match known_key(py, name) {
            Some(key) => env.set_item(key, latin1(py, value))?,
            None => env.set_item(latin1(py, name), latin1(py, value))?,
        }
    }
    env.set_item(intern!(py, "REQUEST_METHOD"), req.method())?;
    env.set_item(
        intern!(py, "QUERY_STRING"),
        latin1(py, req.query().as_bytes()),
    )?;
    let script_name = req.param("SCRIPT_NAME");
    if script_name.is_none() {
        env.set_item(intern!(py, "SCRIPT_NAME"), intern!(py, ""))?;
    }
    let script_name = script_name.unwrap_or_default();
    // nginx's $document_uri: decoded, normalised, and what a `rewrite` made of the URI (as
    // `uwsgi_param PATH_INFO $document_uri;` gives uWSGI); the request line's path, decoded,
    // if it is not there.
    let path = match req.param("DOCUMENT_URI") {
        Some(uri) if !uri.is_empty() => uri.to_vec(),
        _ => percent_decoded(req.path().as_bytes()),
    };
    let path_info = match path.strip_prefix(script_name) {
        Some(rest) if !script_name.is_empty() && (rest.is_empty() || rest[0] == b'/') => rest,
        _ => &path[..],
    };
    env.set_item(intern!(py, "PATH_INFO"), latin1(py, path_info))?;
    // A server block without server_name has an empty $server_name: name the host the client
    // asked for instead, as Gunicorn does.
    let named = env
        .get_item(intern!(py, "SERVER_NAME"))?
        .is_some_and(|v| v.len().unwrap_or(0) > 0);
    if !named {
        let host = req.header("Host").unwrap_or(b"localhost");
        let name = match host.iter().rposition(|&c| c == b':') {
            Some(i) if !host.ends_with(b"]") => &host[..i],
            _ => host,
        };
        env.set_item(intern!(py, "SERVER_NAME"), latin1(py, name))?;
    }
    for (key, fallback) in [
        (intern!(py, "SERVER_PORT"), "80"),
        (intern!(py, "SERVER_PROTOCOL"), "HTTP/1.1"),
        (intern!(py, "REMOTE_ADDR"), ""),
    ] {
        if !env.contains(key)? {
            env.set_item(key, fallback)?;
        }
    }
    let mut content_length = false;
    for (name, value) in req.headers() {
        if name.eq_ignore_ascii_case(b"content-type") {
            env.set_item(intern!(py, "CONTENT_TYPE"), latin1(py, value))?;
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            env.set_item(intern!(py, "CONTENT_LENGTH"), latin1(py, value))?;
            content_length = true;
            continue;
        }
        let key = cgi_name(name);
        // Repeated headers are joined with ", " (RFC 9110 5.3), as Gunicorn does.
        let joined = match env.get_item(&key)? {
            Some(prev) => {
                let prev: String = prev.extract()?;
                let mut v = prev.into_bytes();
                v.extend_from_slice(b", ");
                v.extend_from_slice(value);
                latin1(py, &v)
            }
            None => latin1(py, value),
        };
        env.set_item(key, joined)?;
    }
    if !content_length && req.body_len() > 0 {
        // A chunked body nginx read whole: its length is known now.
        env.set_item(intern!(py, "CONTENT_LENGTH"), req.body_len().to_string())?;
    }
    let scheme = match req.param("REQUEST_SCHEME") {
        Some(b"https") => intern!(py, "https"),
        _ => intern!(py, "http"),
    };
    env.set_item(intern!(py, "wsgi.version"), shared.version.bind(py))?;
    env.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
    env.set_item(intern!(py, "wsgi.input"), Input::new(stream))?;
    env.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    env.set_item(intern!(py, "wsgi.errors"), Errors::new(stream))?;
    env.set_item(intern!(py, "wsgi.multithread"), false)?;
    env.set_item(intern!(py, "wsgi.multiprocess"), true)?;
    env.set_item(intern!(py, "wsgi.run_once"), false)?;
    env.set_item(
        intern!(py, "wsgi.file_wrapper"),
        shared.file_wrapper.bind(py),
    )?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_paths_as_wsgi_servers_do() {
        assert_eq!(percent_decoded(b"/a%20b/%2F+c"), b"/a b//+c");
        assert_eq!(percent_decoded(b"/bad%zz%4"), b"/bad%zz%4");
        assert_eq!(percent_decoded(b"%41"), b"A");
        assert_eq!(cgi_name(b"X-Forwarded-For"), "HTTP_X_FORWARDED_FOR");
    }
}
