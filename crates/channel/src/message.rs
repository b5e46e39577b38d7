//! The request and response formats carried in chunk chains (little-endian, length-prefixed).
//!
//! ```text
//! request  = u8 format, str8 method, str32 uri, u8 major, u8 minor, str16 client, u16 port,
//!            str16 server_name, u16 server_port, str16 server_addr, u8 flags (1: https),
//!            str32 document_uri,
//!            u32 n, n × (str16 name, str32 value)          (headers)
//!            u32 len, len bytes of: u32 m, m × (str16 name, str32 value)   (parameters)
//!            u64 body_len, body
//! response = u16 status, u32 n, n × (str16 name, str32 value), u64 body_len, body
//! ```
//! Encoders write into any `io::Write` (the stream writer's buffer); decoders borrow from a
//! byte slice and check every length against what is left, so arbitrary bytes give an error,
//! never a panic.

use std::io::{self, Write};

pub const REQUEST_FORMAT: u8 = 3;

/// A header as (name, value) bytes.
pub type Header<'a> = (&'a [u8], &'a [u8]);

/// What went wrong decoding a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// The parts of a request before its body.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a [u8],
    pub uri: &'a [u8],
    pub version: (u8, u8),
    pub client: &'a [u8],
    pub client_port: u16,
    /// What the pool worker cannot know of the request: `$server_name`, `$server_port`,
    /// `$server_addr`, whether it came over TLS, and `$document_uri` (nginx's normalized path).
    pub server: ServerSide<'a>,
    pub headers: &'a [Header<'a>],
    /// The location's `pool_param`s, evaluated by nginx for this request (the default set is
    /// made by the pool worker from the fields above).
    pub params: &'a [Header<'a>],
}

/// The server side of a request, as nginx saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerSide<'a> {
    pub name: &'a [u8],
    pub port: u16,
    /// The address the request came in on, as `$server_addr` (`unix:/path` for a unix socket).
    pub addr: &'a [u8],
    pub https: bool,
    pub document_uri: &'a [u8],
}

/// A decoded request, borrowing from the message bytes.
#[derive(Debug, Clone)]
pub struct RequestView<'a> {
    pub method: &'a [u8],
    pub uri: &'a [u8],
    pub version: (u8, u8),
    pub client: &'a [u8],
    pub client_port: u16,
    pub server: ServerSide<'a>,
    pub headers: Vec<Header<'a>>,
    /// The per-request parameters, still encoded: most handlers never ask for them, so they
    /// are decoded (and checked) on demand ([`RequestView::decode_params`]).
    pub params_raw: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> RequestView<'a> {
    /// The per-request parameters, in order.
    pub fn decode_params(&self) -> Result<Vec<Header<'a>>, DecodeError> {
        let mut c = Cursor {
            rest: self.params_raw,
        };
        let params = c.headers()?;
        if !c.rest.is_empty() {
            return Err(DecodeError("bytes after the parameters"));
        }
        Ok(params)
    }
}

/// A decoded response, borrowing from the message bytes.
#[derive(Debug, Clone)]
pub struct ResponseView<'a> {
    pub status: u16,
    pub headers: Vec<Header<'a>>,
    pub body: &'a [u8],
}

fn put_str(w: &mut impl Write, s: &[u8], width: usize) -> io::Result<()> {
    let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "field too long");
    match width {
        1 => w.write_all(&[u8::try_from(s.len()).map_err(|_| too_long())?])?,
        2 => w.write_all(
            &u16::try_from(s.len())
                .map_err(|_| too_long())?
                .to_le_bytes(),
        )?,
        _ => w.write_all(
            &u32::try_from(s.len())
                .map_err(|_| too_long())?
                .to_le_bytes(),
        )?,
    }
    w.write_all(s)
}

fn put_headers<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    w: &mut impl Write,
    headers: &[(N, V)],
) -> io::Result<()> {
    w.write_all(&(headers.len() as u32).to_le_bytes())?;
    for (name, value) in headers {
        put_str(w, name.as_ref(), 2)?;
        put_str(w, value.as_ref(), 4)?;
    }
    Ok(())
}

/// Writes a request head; the caller then writes exactly `body_len` body bytes.
pub fn encode_request_head(
    w: &mut impl Write,
    head: &RequestHead<'_>,
    body_len: u64,
) -> io::Result<()> {
    w.write_all(&[REQUEST_FORMAT])?;
    put_str(w, head.method, 1)?;
    put_str(w, head.uri, 4)?;
    w.write_all(&[head.version.0, head.version.1])?;
    put_str(w, head.client, 2)?;
    w.write_all(&head.client_port.to_le_bytes())?;
    put_str(w, head.server.name, 2)?;
    w.write_all(&head.server.port.to_le_bytes())?;
    put_str(w, head.server.addr, 2)?;
    w.write_all(&[u8::from(head.server.https)])?;
    put_str(w, head.server.document_uri, 4)?;
    put_headers(w, head.headers)?;
    // Length-prefixed, so a reader that does not need the parameters steps over them at once.
    let params_len: usize = 4 + head
        .params
        .iter()
        .map(|(n, v)| 6 + n.as_ref().len() + v.as_ref().len())
        .sum::<usize>();
    let params_len = u32::try_from(params_len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "parameters too long"))?;
    w.write_all(&params_len.to_le_bytes())?;
    put_headers(w, head.params)?;
    w.write_all(&body_len.to_le_bytes())
}

/// Writes a response head; the caller then writes exactly `body_len` body bytes. Headers are
/// (name, value) pairs of anything byte-like, so a caller's own header list needs no copy.
pub fn encode_response_head<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    w: &mut impl Write,
    status: u16,
    headers: &[(N, V)],
    body_len: u64,
) -> io::Result<()> {
    w.write_all(&status.to_le_bytes())?;
    put_headers(w, headers)?;
    w.write_all(&body_len.to_le_bytes())
}

/// Whether HTTP allows this response header: a name of visible ASCII without ':', a value
/// without CR, LF or NUL (no header injection). Both the pool worker (refusing a handler's
/// header) and nginx (refusing a corrupt message) check with this.
pub fn check_header(name: &[u8], value: &[u8]) -> Result<(), DecodeError> {
    // Folds without an early exit, so the compiler can test many bytes at once: headers are
    // short, and checked on every response (twice: by the pool worker and by nginx).
    let name_ok = name
        .iter()
        .fold(true, |ok, &b| ok & (b > b' ') & (b < 0x7f) & (b != b':'));
    if name.is_empty() || !name_ok {
        return Err(DecodeError("invalid header name"));
    }
    let value_bad = value.iter().fold(false, |bad, &b| {
        bad | (b == b'\r') | (b == b'\n') | (b == 0)
    });
    if value_bad {
        return Err(DecodeError("invalid header value"));
    }
    Ok(())
}

/// Sets the body length an encoded response head announces (its last eight bytes), for a head
/// encoded before the length was known. False if `head` is too short to be one.
pub fn set_announced_length(head: &mut [u8], body_len: u64) -> bool {
    match head.len().checked_sub(8) {
        Some(at) => {
            head[at..].copy_from_slice(&body_len.to_le_bytes());
            true
        }
        None => false,
    }
}

/// Writes a response head from headers given as an iterator (for callers whose headers are in
/// another shape, so that nothing is collected first); otherwise as [`encode_response_head`].
pub fn encode_response_head_iter<'h>(
    w: &mut impl Write,
    status: u16,
    headers: impl ExactSizeIterator<Item = (&'h [u8], &'h [u8])>,
    body_len: u64,
) -> io::Result<()> {
    w.write_all(&status.to_le_bytes())?;
    w.write_all(&(headers.len() as u32).to_le_bytes())?;
    for (name, value) in headers {
        put_str(w, name, 2)?;
        put_str(w, value, 4)?;
    }
    w.write_all(&body_len.to_le_bytes())
}

/// A bounds-checked cursor over untrusted bytes.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError("truncated"));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
    fn int<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.int::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.int()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.int()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.int()?))
    }
    fn str(&mut self, width: usize) -> Result<&'a [u8], DecodeError> {
        let n = match width {
            1 => self.u8()? as usize,
            2 => self.u16()? as usize,
            _ => self.u32()? as usize,
        };
        self.take(n)
    }
    fn headers(&mut self) -> Result<Vec<Header<'a>>, DecodeError> {
        let n = self.u32()? as usize;
        // Each header takes at least 6 bytes: refuse counts the data cannot hold before
        // allocating for them.
        if n > self.rest.len() / 6 {
            return Err(DecodeError("header count exceeds message"));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.str(2)?;
            let value = self.str(4)?;
            out.push((name, value));
        }
        Ok(out)
    }
    fn body(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u64()?;
        if n != self.rest.len() as u64 {
            return Err(DecodeError("body length disagrees with message length"));
        }
        self.take(n as usize)
    }
}

/// A response body length that is not known in advance (the body streams until `Done`).
pub const UNKNOWN_LENGTH: u64 = u64::MAX;

/// The body length nginx announces for a request it is ready to upgrade (a WebSocket
/// handshake to a pool that carries them): once the pool answers 101, the body is whatever the
/// client sends, until it closes. Far past any real body, and `head + OPEN_BODY` cannot
/// overflow. The ABI's `NGX_POOL_BODY_OPEN`.
pub const OPEN_BODY: u64 = 1 << 62;

/// Decodes a request head that is exactly `bytes`; returns it (with an empty body) and the
/// body length it announces.
pub fn decode_request_head(bytes: &[u8]) -> Result<(RequestView<'_>, u64), DecodeError> {
    let mut c = Cursor { rest: bytes };
    let mut view = request_fields(&mut c)?;
    let body_len = c.u64()?;
    if !c.rest.is_empty() {
        return Err(DecodeError("bytes after the request head"));
    }
    view.body = &[];
    Ok((view, body_len))
}

/// Decodes a response head that is exactly `bytes`: status, headers, announced body length
/// ([`UNKNOWN_LENGTH`] when streamed without one).
pub fn decode_response_head(bytes: &[u8]) -> Result<ResponseView<'_>, DecodeError> {
    decode_response_with(bytes, false)
}

/// The body length a decoded response head announced (its `body` is empty).
pub fn announced_length(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(bytes.len().checked_sub(8)?..)?.try_into().ok()?,
    ))
}

#[cfg(any(test, feature = "testing"))]
pub fn decode_request(bytes: &[u8]) -> Result<RequestView<'_>, DecodeError> {
    let mut c = Cursor { rest: bytes };
    let mut view = request_fields(&mut c)?;
    view.body = c.body()?;
    Ok(view)
}

fn request_fields<'a>(c: &mut Cursor<'a>) -> Result<RequestView<'a>, DecodeError> {
    if c.u8()? != REQUEST_FORMAT {
        return Err(DecodeError("unknown request format"));
    }
    let method = c.str(1)?;
    let uri = c.str(4)?;
    let version = (c.u8()?, c.u8()?);
    let client = c.str(2)?;
    let client_port = c.u16()?;
    let server = ServerSide {
        name: c.str(2)?,
        port: c.u16()?,
        addr: c.str(2)?,
        https: c.u8()? & 1 == 1,
        document_uri: c.str(4)?,
    };
    let headers = c.headers()?;
    let params_len = c.u32()? as usize;
    let params_raw = c.take(params_len)?;
    Ok(RequestView {
        method,
        uri,
        version,
        client,
        client_port,
        server,
        headers,
        params_raw,
        body: &[],
    })
}

#[cfg(any(test, feature = "testing"))]
pub fn decode_response(bytes: &[u8]) -> Result<ResponseView<'_>, DecodeError> {
    decode_response_with(bytes, true)
}

fn decode_response_with(bytes: &[u8], with_body: bool) -> Result<ResponseView<'_>, DecodeError> {
    let mut c = Cursor { rest: bytes };
    let status = c.u16()?;
    if !(100..=999).contains(&status) {
        return Err(DecodeError("status out of range"));
    }
    let headers = c.headers()?;
    for (name, value) in &headers {
        check_header(name, value)?;
    }
    let body = if with_body {
        c.body()?
    } else {
        c.u64()?;
        if !c.rest.is_empty() {
            return Err(DecodeError("bytes after the response head"));
        }
        &[]
    };
    Ok(ResponseView {
        status,
        headers,
        body,
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let headers: &[(&[u8], &[u8])] = &[(b"Host", b"x"), (b"X-A", b"1"), (b"X-A", b"2")];
        let head = RequestHead {
            method: b"POST",
            uri: b"/a?b=c",
            version: (1, 1),
            client: b"127.0.0.1",
            client_port: 54321,
            server: ServerSide {
                name: b"example.org",
                port: 8080,
                addr: b"192.0.2.1",
                https: true,
                document_uri: b"/a",
            },
            headers,
            params: &[(b"SCRIPT_NAME", b""), (b"X_REAL", b"1.2.3.4:80")],
        };
        let mut buf = Vec::new();
        encode_request_head(&mut buf, &head, 3).unwrap();
        buf.extend_from_slice(b"abc");
        let v = decode_request(&buf).unwrap();
        assert_eq!(v.method, b"POST");
        assert_eq!(v.uri, b"/a?b=c");
        assert_eq!(v.client_port, 54321);
        assert_eq!(v.server, head.server);
        assert_eq!(v.headers, headers);
        assert_eq!(v.decode_params().unwrap(), head.params);
        assert_eq!(v.body, b"abc");
    }

    #[test]
    fn response_round_trip_and_rejects_injection() {
        let mut buf = Vec::new();
        encode_response_head(&mut buf, 201, &[(b"A", b"b")], 2).unwrap();
        buf.extend_from_slice(b"hi");
        let v = decode_response(&buf).unwrap();
        assert_eq!((v.status, v.body), (201, &b"hi"[..]));
        let mut late = Vec::new();
        encode_response_head(&mut late, 200, &[(b"A", b"b")], 0).unwrap();
        assert!(set_announced_length(&mut late, 7));
        assert_eq!(announced_length(&late), Some(7));
        let mut bad = Vec::new();
        encode_response_head(&mut bad, 200, &[(b"A", b"b\r\nSet-Cookie: x")], 0).unwrap();
        assert!(decode_response(&bad).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 200)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
