//! Handlers compiled into poold: `echo`, `hello`, `sleep`, `cpu`, `crash`, `spawn`, `stream`.
//!
//! Written on the SDK exactly as a user's handler library is; poold runs them through the same
//! ABI descriptor a `dylib:` handler exports.

use ngx_pool_abi::ngx_pool_handler;
use ngx_pool_sdk::{handler_descriptor, Handler, Request, Response, Result, Status};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::time::Duration;

/// The names `builtin:NAME` accepts (the module's `nginx -t` checks the same list).
pub use ngx_pool_conf::BUILTIN_HANDLERS as NAMES;

/// The ABI descriptor of built-in handler `name`.
pub fn descriptor(name: &str) -> Option<&'static ngx_pool_handler> {
    Some(match name {
        "echo" => handler_descriptor!(Echo, "echo"),
        "hello" => handler_descriptor!(Hello, "hello"),
        "sleep" => handler_descriptor!(Sleep, "sleep"),
        "cpu" => handler_descriptor!(Cpu, "cpu"),
        "crash" => handler_descriptor!(Crash, "crash"),
        "spawn" => handler_descriptor!(Spawn, "spawn"),
        "stream" => handler_descriptor!(Stream, "stream"),
        _ => return None,
    })
}

/// Built-ins take no `handler_args`.
macro_rules! no_args {
    ($t:ident) => {
        fn init(_args: &str) -> Result<Self> {
            Ok($t)
        }
    };
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The request back as JSON: method, URI, version, client, headers, body length and SHA-256.
/// `?sleep_ms=N` waits before reading the body (an app that works a while first).
pub struct Echo;

impl Handler for Echo {
    no_args!(Echo);
    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        if let Some(ms) = req.arg("sleep_ms").and_then(|v| v.parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
        }
        // The body is hashed as it streams in: a body of any size in constant memory.
        let mut hasher = Sha256::new();
        let mut body_len = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        let mut body = req.body_reader();
        loop {
            match body.read(&mut buf)? {
                0 => break,
                n => {
                    hasher.update(&buf[..n]);
                    body_len += n as u64;
                }
            }
        }
        let digest = hasher.finalize();
        let headers: Vec<[String; 2]> = req.headers().map(|(n, v)| [lossy(n), lossy(v)]).collect();
        let params: serde_json::Map<String, serde_json::Value> = req
            .params()
            .map(|(n, v)| (lossy(n), lossy(v).into()))
            .collect();
        let doc = serde_json::json!({
            "method": req.method(),
            "uri": req.uri(),
            "version": format!("{}.{}", req.version().0, req.version().1),
            "client": req.client(),
            "client_port": req.client_port(),
            "headers": headers,
            "params": params,
            "body_length": body_len,
            "body_sha256": hex(&digest),
            "pid": std::process::id(),
        });
        resp.add_header("Content-Type", "application/json");
        resp.add_header("X-Pool-Worker", &std::process::id().to_string());
        let mut text = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
        text.push(b'\n');
        resp.send(&text)
    }
}

/// `hello`: the smallest useful response, for benchmarks.
pub struct Hello;

impl Handler for Hello {
    no_args!(Hello);
    fn handle(&self, _req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        resp.add_header("Content-Type", "text/plain");
        resp.send(b"hello")
    }
}

/// `sleep`: waits `?ms=N` milliseconds (default 100, at most one hour), then answers; stops early
/// when the request is cancelled (client gone, deadline), unless `?stubborn=1`.
pub struct Sleep;

impl Handler for Sleep {
    no_args!(Sleep);
    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        let ms: u64 = req
            .arg("ms")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(100)
            .min(3_600_000);
        // In 10 ms steps, stopping early if nginx gave up on the request, unless `stubborn=1`
        // (for tests of deadline enforcement on handlers that never look).
        let stubborn = req.arg("stubborn") == Some("1");
        let until = std::time::Instant::now() + Duration::from_millis(ms);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            if !stubborn && req.is_cancelled() {
                resp.set_status(Status::CLIENT_CLOSED_REQUEST);
                writeln!(resp, "cancelled")?;
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
        resp.add_header("Content-Type", "text/plain");
        resp.add_header("X-Pool-Worker", &std::process::id().to_string());
        writeln!(resp, "slept {ms} ms in pid {}", std::process::id())?;
        Ok(())
    }
}

/// The CPU kernel: `n` rounds of SHA-256 chaining from the digest of the empty string.
pub fn cpu_kernel(rounds: u64) -> [u8; 32] {
    let mut state: [u8; 32] = Sha256::digest(b"").into();
    for _ in 0..rounds {
        state = Sha256::digest(state).into();
    }
    state
}

/// `cpu`: runs [`cpu_kernel`] for `?n=N` rounds (default 1000, at most 10^9), answers the digest.
pub struct Cpu;

impl Handler for Cpu {
    no_args!(Cpu);
    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        let n = req
            .arg("n")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1000)
            .min(1_000_000_000);
        let digest = cpu_kernel(n);
        resp.add_header("Content-Type", "application/json");
        resp.add_header("X-Pool-Worker", &std::process::id().to_string());
        writeln!(resp, "{{\"rounds\":{n},\"digest\":\"{}\"}}", hex(&digest))?;
        Ok(())
    }
}

/// `crash`, for fault tests: kills the pool worker mid-request, by `?how=abort` (the default)
/// or `segv` (a segmentation fault); `?how=panic` panics in the handler instead (the SDK turns
/// it into a 500, and the worker goes on); `?how=none` answers
/// `alive` after `?ms=` milliseconds (default 10) instead, so that one pool carries both
/// crashing and healthy requests. With `NGX_POOL_CRASH_AT_START=1` in poold's environment its
/// workers abort as they start (tests of respawn backoff).
pub struct Crash;

impl Handler for Crash {
    no_args!(Crash);
    fn worker_init(&self) -> Result {
        if std::env::var_os("NGX_POOL_CRASH_AT_START").is_some_and(|v| v == "1") {
            std::process::abort();
        }
        Ok(())
    }

    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        match req.arg("how").unwrap_or("abort") {
            "none" => {
                let ms = req.arg("ms").and_then(|v| v.parse().ok()).unwrap_or(10u64);
                std::thread::sleep(Duration::from_millis(ms.min(60_000)));
                resp.send(b"alive")?;
            }
            "panic" => panic!("builtin:crash was asked to panic"),
            // SAFETY: raising a signal at ourselves, with its default action (Rust's runtime
            // handles SIGSEGV to report stack overflows, and would let a raised one pass); the
            // default ends the process, which is the point.
            "segv" => unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            },
            _ => std::process::abort(),
        }
        Ok(())
    }
}

/// `spawn`: starts a long-lived child process (`sleep 3600`) and answers its pid; for tests
/// that a handler's children die with its pool worker. `?daemon=1`: a daemon instead, as a
/// hostile handler would start one: in a session of its own, orphaned at once (its parent, a
/// shell, exits), ignoring SIGTERM; for tests that nothing outlives the pool.
pub struct Spawn;

impl Handler for Spawn {
    no_args!(Spawn);
    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        if req.arg("daemon") == Some("1") {
            writeln!(resp, "{}", spawn_daemon()?)?;
            return Ok(());
        }
        let child = std::process::Command::new("sleep")
            .arg("3600")
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        writeln!(resp, "{}", child.id())?;
        // Deliberately not waited for: it must not outlive the worker.
        std::mem::forget(child);
        Ok(())
    }
}

/// Starts `sleep 3600` as a daemon (see [`Spawn`]) and returns its pid: a shell in a new
/// session starts it in the background with SIGTERM ignored, prints its pid and exits.
fn spawn_daemon() -> std::result::Result<u32, String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "trap '' TERM; sleep 3600 </dev/null >/dev/null 2>&1 & echo $!",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped());
    // SAFETY: between fork and exec the closure makes one async-signal-safe call (setsid) and
    // touches no memory of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().map_err(|e| format!("spawn daemon: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("spawn daemon: the shell said {:?}", out.stdout))
}

/// Byte `i` of what `stream` sends: deterministic, cheap, and not periodic over short spans,
/// so a lost, repeated or reordered piece changes the checksum.
pub fn stream_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// `stream`: sends `?bytes=N` deterministic bytes ([`stream_byte`]; default 1 MiB) as the
/// client reads them, in writes of `?every=N` bytes (default 64 KiB); with a `Content-Length`
/// unless `?chunked=1`. For the tests of buffering and of what a handler may send:
/// `?status=N` answers N, `?pause_ms=M` flushes each write and then sleeps (server-sent
/// events), `?accel=no|yes` adds
/// `X-Accel-Buffering`, `?header_bytes=N` adds an `X-Big` header of N bytes, `?headers=N`
/// adds N small headers.
pub struct Stream;

impl Handler for Stream {
    no_args!(Stream);
    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
        let number = |name: &str, default: u64| -> u64 {
            req.arg(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let total = number("bytes", 1 << 20);
        let every = number("every", 64 << 10).clamp(1, 16 << 20) as usize;
        let pause = std::time::Duration::from_millis(number("pause_ms", 0));
        if let Some(status) = req
            .arg("status")
            .and_then(|v| v.parse().ok())
            .and_then(ngx_pool_sdk::Status::new)
        {
            resp.set_status(status);
        }
        resp.add_header("Content-Type", "application/octet-stream");
        if req.arg("chunked") != Some("1") {
            resp.add_header("Content-Length", &total.to_string());
        }
        if let Some(v) = req.arg("accel") {
            resp.add_header("X-Accel-Buffering", v);
        }
        let big = number("header_bytes", 0).min(64 << 20) as usize;
        if big > 0 {
            resp.add_header_bytes(b"X-Big", &vec![b'x'; big]);
        }
        for i in 0..number("headers", 0).min(1 << 20) {
            resp.add_header(&format!("X-H-{i}"), "1");
        }
        let mut buf = vec![0u8; every];
        let mut at = 0u64;
        while at < total {
            let n = (total - at).min(buf.len() as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = stream_byte(at + k as u64);
            }
            resp.send(&buf[..n])?;
            at += n as u64;
            if !pause.is_zero() {
                resp.flush()?;
                if at < total {
                    std::thread::sleep(pause);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_kernel_is_deterministic() {
        assert_eq!(cpu_kernel(0), <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(cpu_kernel(3), cpu_kernel(3));
        assert_ne!(cpu_kernel(3), cpu_kernel(4));
    }
}
