//! A small, strict HTTP/1.1 client: one request per connection, the response read to EOF.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The first header named `name` (case-insensitive).
fn find_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Response {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends one request to 127.0.0.1 and reads the whole response.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    request_to("127.0.0.1", port, method, path, headers, body)
}

/// Sends one request to `host` (an address) and reads the whole response.
pub fn request_to(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&raw, method == "HEAD")
}

fn parse(raw: &[u8], head_only: bool) -> io::Result<Response> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let text = std::str::from_utf8(&raw[..end]).map_err(|_| bad("header not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked && !head_only {
        body = dechunk(&body)?;
    }
    if head_only {
        body.clear();
    } else if let Some(len) = find_header(&headers, "content-length") {
        let n: usize = len.parse().map_err(|_| bad("content-length"))?;
        if body.len() != n {
            return Err(bad(&format!(
                "body of {} bytes, Content-Length {n}",
                body.len()
            )));
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Decodes a chunked body (whole, in memory).
fn dechunk(mut raw: &[u8]) -> io::Result<Vec<u8>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("chunk size line"))?;
        let size_text = std::str::from_utf8(&raw[..eol]).map_err(|_| bad("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("chunk size"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 || &raw[size..size + 2] != b"\r\n" {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// What a streamed exchange saw: the body is hashed as it arrives, never held.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub sha256: String,
    /// True if the body was complete (Content-Length reached or the last chunk seen).
    pub complete: bool,
    /// The first MiB of the body, for small answers a test wants to read.
    pub start: Vec<u8>,
}

impl Streamed {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Lower-case hex SHA-256 of `len` bytes of `byte(i)`.
pub fn sha256_of(len: u64, byte: impl Fn(u64) -> u8) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = byte(at + k as u64);
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One request with a generated body of `body_len` bytes (`body_byte(i)`), sent in 64 KiB
/// writes; the response body is hashed as it is read, in reads of at most `read_size` bytes,
/// calling `after_read(bytes_so_far)` after each (a slow client sleeps there).
pub fn exchange_streamed(
    port: u16,
    method: &str,
    path: &str,
    body_len: u64,
    body_byte: impl Fn(u64) -> u8,
    read_size: usize,
    mut after_read: impl FnMut(u64),
) -> io::Result<Streamed> {
    use sha2::Digest;
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {body_len}\r\n\r\n"
    );
    s.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    while at < body_len {
        let n = (body_len - at).min(buf.len() as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = body_byte(at + k as u64);
        }
        s.write_all(&buf[..n])?;
        at += n as u64;
    }
    // The head, byte by byte up to the blank line (small).
    let mut raw = Vec::new();
    let mut one = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if s.read(&mut one)? == 0 {
            return Err(bad("closed in the response head"));
        }
        raw.push(one[0]);
    }
    let parsed = parse(&raw, true)?;
    let length: Option<u64> = parsed.header("content-length").and_then(|v| v.parse().ok());
    let chunked = parsed
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    let mut complete = false;
    let mut read = vec![0u8; read_size.max(1)];
    // Chunked decoding state: bytes left in the current chunk, and a partial size line.
    let mut left_in_chunk = 0u64;
    let mut line = Vec::new();
    let mut skip_crlf = 0usize;
    let mut start = Vec::new();
    loop {
        if length.is_some_and(|l| got >= l) {
            complete = true;
            break;
        }
        let n = s.read(&mut read)?;
        if n == 0 {
            complete = length.is_none() && !chunked;
            break;
        }
        let mut data = &read[..n];
        if start.len() < 1 << 20 {
            start.extend_from_slice(&data[..data.len().min((1 << 20) - start.len())]);
        }
        if !chunked {
            hasher.update(data);
            got += n as u64;
        } else {
            while !data.is_empty() {
                if skip_crlf > 0 {
                    let k = skip_crlf.min(data.len());
                    skip_crlf -= k;
                    data = &data[k..];
                } else if left_in_chunk > 0 {
                    let k = (left_in_chunk as usize).min(data.len());
                    hasher.update(&data[..k]);
                    got += k as u64;
                    left_in_chunk -= k as u64;
                    data = &data[k..];
                    if left_in_chunk == 0 {
                        skip_crlf = 2;
                    }
                } else {
                    line.push(data[0]);
                    data = &data[1..];
                    if line.ends_with(b"\r\n") {
                        let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
                        let size =
                            u64::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
                                .map_err(|_| bad("chunk size"))?;
                        line.clear();
                        if size == 0 {
                            complete = true;
                            break;
                        }
                        left_in_chunk = size;
                    }
                }
            }
            if complete {
                break;
            }
        }
        after_read(got);
    }
    Ok(Streamed {
        status: parsed.status,
        headers: parsed.headers,
        body_len: got,
        sha256: hex(&hasher.finalize()),
        complete,
        start,
    })
}

/// A response as a differential test compares it with a peer's: status, headers but those
/// of the connection and framing (lowercased, sorted), body.
pub fn comparable(r: &Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| {
            // Framing too: a stream that ends before nginx reads its head goes out with a
            // Content-Length instead of chunked; the bodies are compared byte for byte.
            ![
                "date",
                "server",
                "connection",
                "keep-alive",
                "transfer-encoding",
                "content-length",
            ]
            .contains(&n.to_ascii_lowercase().as_str())
        })
        .map(|(n, v)| {
            let n = n.to_ascii_lowercase();
            // Flask builds Allow from a set: its order is the process's hash seed's.
            let v = if n == "allow" {
                let mut m: Vec<&str> = v.split(", ").collect();
                m.sort();
                m.join(", ")
            } else {
                v.clone()
            };
            (n, v)
        })
        .collect();
    headers.sort();
    (r.status, headers, r.body.clone())
}
