//! WebSockets through `pool_pass` to an ASGI app (FastAPI, from the test virtualenv), with the
//! `websockets` client library (`tests/python/wsclient.py`): echo, a broadcast room, 1 MiB
//! messages, subprotocols, refused handshakes, close codes both ways, a client that breaks the
//! protocol, idle connections that cost no CPU, and the close a reload or a retirement gives.

use ngx_pool_tests::{procs, python_apps, python_env, Conf, Nginx, Uvicorn};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// A pool line for the WebSocket app with `extra` parameters.
fn ws_pool(extra: &str) -> String {
    let workers = if extra.contains("workers=") {
        ""
    } else {
        "workers=2 "
    };
    format!(
        "    pool ws handler=asgi:wsapp:app venv={} chdir={} {workers}{extra};",
        python_env().display(),
        python_apps().display()
    )
}

fn start(extra: &str) -> Nginx {
    Nginx::start(Conf::new(
        &ws_pool(extra),
        "    location / { pool_pass ws; }",
    ))
}

fn client(scenario: &str, url: &str, args: &[&str]) -> Value {
    ngx_pool_tests::ws_client(scenario, url, args)
}

fn url(port: u16, path: &str) -> String {
    format!("ws://127.0.0.1:{port}{path}")
}

#[test]
fn a_fastapi_websocket_echoes_text_and_bytes_and_large_messages() {
    let ng = start("");
    let e = client("echo", &url(ng.port, "/ws/echo"), &["3"]);
    assert_eq!(e["status"], 101, "{e}");
    assert_eq!(e["texts"][2], "hello 2 ✓");
    assert_eq!(e["binaries"][1], serde_json::json!([1, 0, 255, 1]));
    assert_eq!(e["response_headers"]["upgrade"], "websocket");
    assert_eq!(e["response_headers"]["connection"], "upgrade");
    // The client closed (1000) and the server answered the close.
    assert_eq!(
        (e["sent_code"].as_u64(), e["rcvd_code"].as_u64()),
        (Some(1000), Some(1000))
    );
    // 1 MiB each way, binary and text.
    let b = client("big", &url(ng.port, "/ws/echo"), &["1048576"]);
    assert_eq!(
        (b["binary_ok"].as_bool(), b["text_ok"].as_bool()),
        (Some(true), Some(true)),
        "{b}"
    );
    // Plain HTTP on the same pool still works, and the nginx worker is fine.
    assert_eq!(ng.get("/").text(), "hello\n");
    ng.finish();
}

#[test]
fn two_clients_in_a_room_see_each_others_messages() {
    // One worker: a room lives in one process (as under uvicorn --workers 1).
    let ng = start("workers=1");
    let r = client("room", &url(ng.port, "/ws/room"), &[]);
    assert_eq!(r["first_a"], "ping-a");
    assert_eq!(
        (r["a"].as_str(), r["b"].as_str()),
        (Some("from b"), Some("from b"))
    );
    ng.finish();
}

#[test]
fn subprotocols_refusals_and_close_codes_are_the_apps() {
    let mut ng = start("");
    let s = client("subprotocol", &url(ng.port, "/ws/subprotocol?x=1"), &[]);
    assert_eq!(s["chosen"], "chat.v2", "{s}");
    assert_eq!(s["offered"], serde_json::json!(["chat.v1", "chat.v2"]));
    assert_eq!(
        (
            s["scheme"].as_str(),
            s["path"].as_str(),
            s["query"].as_str()
        ),
        (Some("ws"), Some("/ws/subprotocol"), Some("x=1"))
    );
    assert_eq!(s["rcvd_code"], 1000);
    // A close before accept refuses the handshake: 403, as uvicorn answers.
    let h = client("handshake", &url(ng.port, "/ws/refuse"), &[]);
    assert_eq!(
        (h["opened"].as_bool(), h["status"].as_u64()),
        (Some(false), Some(403)),
        "{h}"
    );
    // A denial response (websocket.http.response) is the app's own HTTP answer.
    let h = client("handshake", &url(ng.port, "/ws/deny"), &[]);
    assert_eq!(
        (
            h["status"].as_u64(),
            h["body"].as_str(),
            h["x_why"].as_str()
        ),
        (Some(401), Some("no entry\n"), Some("token")),
        "{h}"
    );
    // A route with no WebSocket endpoint: refused too (Starlette closes, 403).
    let h = client("handshake", &url(ng.port, "/nowhere"), &[]);
    assert_eq!(h["status"], 403, "{h}");
    // The app closes with its code and reason.
    let c = client("until_closed", &url(ng.port, "/ws/close"), &[]);
    assert_eq!(c["received"], serde_json::json!(["bye soon"]));
    assert_eq!(
        (c["rcvd_code"].as_u64(), c["rcvd_reason"].as_str()),
        (Some(4001), Some("done here")),
        "{c}"
    );
    // An app that raises after accept: 1011, and its traceback in error_log.
    let c = client("until_closed", &url(ng.port, "/ws/raise"), &[]);
    assert_eq!(c["received"], serde_json::json!(["about to fail"]));
    assert_eq!(c["rcvd_code"], 1011, "{c}");
    ng.log_line(&["RuntimeError: the view failed on purpose"]);
    ng.finish();
}

#[test]
fn websockets_answer_as_under_uvicorn() {
    let ng = start("");
    let uv = Uvicorn::start("wsapp:app", &["--workers", "2"]);
    for (scenario, path, args) in [
        ("echo", "/ws/echo", &["2"][..]),
        ("subprotocol", "/ws/subprotocol?a=b", &[]),
        ("handshake", "/ws/refuse", &[]),
        ("handshake", "/ws/deny", &[]),
        ("until_closed", "/ws/close", &[]),
        // Not /ws/raise: uvicorn drops the connection without a close frame (the client sees
        // 1006); we send 1011 as RFC 6455 asks (checked above).
        ("client_close", "/ws/echo", &["4005"]),
        ("big", "/ws/echo", &["300000"]),
    ] {
        let ours = client(scenario, &url(ng.port, path), args);
        let theirs = client(scenario, &url(uv.port, path), args);
        assert_eq!(ours, theirs, "{scenario} {path}: pool_pass vs uvicorn");
    }
    drop(uv);
    ng.finish();
}

/// A `wsclient.py hold` client in the background: connected, it writes the server's pid to a
/// file; it ends when the server closes, and prints how.
struct Holder {
    child: procs::Owned,
    ready: std::path::PathBuf,
}

impl Holder {
    fn open(url: &str, tag: &str) -> Holder {
        let ready = std::env::temp_dir().join(format!("ws-hold-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let child = procs::Owned::spawn(
            Command::new(python_env().join("bin/python"))
                .arg(python_apps().join("../wsclient.py"))
                .args(["hold", url])
                .arg(&ready)
                .stdout(std::process::Stdio::piped()),
        )
        .expect("start wsclient hold");
        let h = Holder { child, ready };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !h.ready.exists() {
            assert!(
                Instant::now() < deadline,
                "the WebSocket {tag} did not open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// The server's pid the connection reached.
    fn pid(&self) -> u32 {
        std::fs::read_to_string(&self.ready)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits for the client to end; what it printed.
    fn closed(mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        let child = self.child.child();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "wsclient hold failed: {st}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server never closed the WebSocket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ready);
    }
}

/// The times the threads of process `pid` went to sleep (voluntary context switches, all its
/// threads): each wake-up is one. Preemptions (involuntary ones) are left out: they measure the
/// machine's load (the tests around), not what woke the worker.
fn switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn idle_websockets_cost_no_cpu_and_count_against_concurrency() {
    let ng = start("workers=1 concurrency=21 queue_timeout=1s");
    let pid = ng.get("/").status;
    assert_eq!(pid, 200);
    let worker = ng.pool_processes().into_iter().max().unwrap();
    let quiet = |what: &str| {
        let (s0, c0) = (switches(worker), procs::cpu_ticks(worker));
        std::thread::sleep(Duration::from_secs(3));
        let (s1, c1) = (switches(worker), procs::cpu_ticks(worker));
        eprintln!(
            "{what}: {} context switches, {} CPU ticks in 3 s",
            s1 - s0,
            c1 - c0
        );
        (s1 - s0, c1 - c0)
    };
    let (before, _) = quiet("no WebSocket");
    let holders: Vec<Holder> = (0..20)
        .map(|i| Holder::open(&url(ng.port, "/ws/wait"), &format!("idle{i}")))
        .collect();
    assert!(holders.iter().all(|h| h.pid() == worker));
    // The quieter of two windows: the last handshakes' own wake-ups may still trail into the
    // first (a wake-up per socket every 100 ms would be in both).
    let (with, ticks) = std::cmp::min(
        quiet("20 idle WebSockets"),
        quiet("20 idle WebSockets, again"),
    );
    // A wake-up per socket every 100 ms would be 600 more; none is allowed but noise.
    assert!(
        with <= before + 20,
        "20 idle WebSockets woke the worker {with} times in 3 s (idle: {before})"
    );
    assert!(
        ticks <= 5,
        "20 idle WebSockets took {ticks} CPU ticks in 3 s"
    );
    // 20 WebSockets and one more: concurrency=21 is full: a request waits, and gets 503 after
    // queue_timeout.
    let last = Holder::open(&url(ng.port, "/ws/wait"), "idle-last");
    let r = ng.get("/");
    assert_eq!(r.status, 503, "a 22nd request ran with 21 WebSockets open");
    drop(last);
    drop(holders);
    ng.finish();
}

#[test]
fn a_reload_closes_websockets_with_1012_and_a_retiring_worker_with_1001() {
    let rec = std::env::temp_dir().join(format!("ws-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rec);
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::set_permissions(&rec, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let file = rec.join("record");
    let mut ng = start(&format!(
        "workers=1 max_requests=3 env=ASGI_RECORD={}",
        file.display()
    ));
    // A reload: the old nginx workers shut down gracefully; each WebSocket they carry is
    // closed with 1012 (service restart), its app told so.
    let h = Holder::open(&url(ng.port, "/ws/wait"), "reload");
    ng.reload(None);
    let c = h.closed();
    assert_eq!(c["rcvd_code"], 1012, "{c}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains("websocket.disconnect 1012")
    {
        assert!(
            Instant::now() < deadline,
            "the app was not told 1012: {:?}",
            std::fs::read_to_string(&file)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // max_requests: the worker retires once its replacement is up; its WebSockets are closed
    // with 1001 (going away), and the next connection reaches the new worker.
    let h = Holder::open(&url(ng.port, "/ws/wait"), "retire");
    let old = h.pid();
    for _ in 0..3 {
        assert_eq!(ng.get("/").status, 200);
    }
    let c = h.closed();
    assert_eq!(c["rcvd_code"], 1001, "{c}");
    let h = Holder::open(&url(ng.port, "/ws/wait"), "after");
    assert_ne!(h.pid(), old, "the retired worker took a new WebSocket");
    drop(h);
    ng.finish();
    let _ = std::fs::remove_dir_all(&rec);
}

/// A raw WebSocket client: the handshake, then whatever bytes the test writes.
fn raw_handshake(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "connection closed in the 101's head"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455's own example key and answer.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    s
}

/// Reads frames until a close frame: its code (None if the connection ended without one).
fn close_code(s: &mut TcpStream) -> Option<u16> {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let mut at = 0;
    while at + 2 <= all.len() {
        let op = all[at] & 0x0f;
        let mut len = (all[at + 1] & 0x7f) as usize;
        at += 2;
        if len == 126 {
            len = u16::from_be_bytes([all[at], all[at + 1]]) as usize;
            at += 2;
        } else if len == 127 {
            len = u64::from_be_bytes(all[at..at + 8].try_into().unwrap()) as usize;
            at += 8;
        }
        if op == 8 {
            return (len >= 2).then(|| u16::from_be_bytes([all[at], all[at + 1]]));
        }
        at += len;
    }
    None
}

#[test]
fn a_client_that_breaks_the_protocol_is_closed_with_the_rfcs_code_and_the_worker_serves_on() {
    let rec = std::env::temp_dir().join(format!("ws-record-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rec);
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::set_permissions(&rec, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let file = rec.join("record");
    let mut ng = start(&format!("workers=1 env=ASGI_RECORD={}", file.display()));
    // An unmasked frame (a client must mask): 1002.
    let mut s = raw_handshake(ng.port, "/ws/echo");
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(close_code(&mut s), Some(1002));
    // A frame announcing 1 GiB (past the 16 MiB limit): 1009, before any of it is read.
    let mut s = raw_handshake(ng.port, "/ws/echo");
    let mut frame = vec![0x82, 0xff];
    frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&frame).unwrap();
    assert_eq!(close_code(&mut s), Some(1009));
    // Text that is not UTF-8: 1007.
    let mut s = raw_handshake(ng.port, "/ws/echo");
    let mask = [1u8, 2, 3, 4];
    let payload: Vec<u8> = [0xffu8, 0xfe]
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect();
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend_from_slice(&payload);
    s.write_all(&frame).unwrap();
    assert_eq!(close_code(&mut s), Some(1007));
    // A client that just goes away: the app is told 1006.
    let s = raw_handshake(ng.port, "/ws/echo");
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains("echo disconnect 1006")
    {
        assert!(
            Instant::now() < deadline,
            "no 1006: {:?}",
            std::fs::read_to_string(&file)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A handshake without a key, or of another version: refused before the app runs.
    let r = ngx_pool_tests::http::request(
        ng.port,
        "GET",
        "/ws/echo",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "8"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 426);
    // The worker serves on.
    let e = client("echo", &url(ng.port, "/ws/echo"), &["1"]);
    assert_eq!(e["texts"][0], "hello 0 ✓");
    ng.log_line(&["the WebSocket client broke the protocol"]);
    ng.finish();
    let _ = std::fs::remove_dir_all(&rec);
}

/// A masked client frame of `opcode` carrying `payload`.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

#[test]
fn clients_that_never_read_hold_a_small_window_and_the_pool_serves_on() {
    // A small arena (8 MiB; requests queue only while at most half is in use): with a full
    // 1 MiB window each way, four stalled WebSockets would stop every request.
    let ng = Nginx::start(Conf::new(
        &ws_pool("workers=1 arena=8m"),
        "    location / { pool_pass ws; }\n    location = /status { pool_status; }",
    ));
    let data = frame(2, &vec![0x5a; 64 << 10]);
    let mut stalled = Vec::new();
    for _ in 0..12 {
        let mut s = raw_handshake(ng.port, "/ws/echo");
        s.set_nonblocking(true).unwrap();
        // Sends echo requests and reads nothing, until nothing more is taken for a while.
        let mut quiet_since = Instant::now();
        let mut at = 0;
        while quiet_since.elapsed() < Duration::from_millis(500) {
            match s.write(&data[at..]) {
                Ok(n) => {
                    at = (at + n) % data.len();
                    quiet_since = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("the stalled client's write failed: {e}"),
            }
        }
        stalled.push(s);
    }
    let chunks = ng.pool_status("ws")["chunks"]["in_use"].as_u64().unwrap();
    eprintln!("12 stalled WebSockets hold {chunks} chunks of 512");
    // Each holds its two small windows (two chunks each way, and one more) and no more.
    assert!(
        chunks <= 12 * 6,
        "12 stalled WebSockets hold {chunks} chunks"
    );
    // Every other request is served at once, WebSocket or not.
    let r = ng.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));
    let e = client("echo", &url(ng.port, "/ws/echo"), &["2"]);
    assert_eq!(e["texts"][1], "hello 1 ✓");
    drop(stalled);
    ng.finish();
}

#[test]
fn a_client_that_closes_its_side_after_its_close_frame_gets_the_servers() {
    let ng = start("workers=1");
    let mut s = raw_handshake(ng.port, "/ws/echo");
    s.write_all(&frame(8, &1000u16.to_be_bytes())).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(close_code(&mut s), Some(1000));
    // The app's own headers on its accept, framing ones dropped: the 101 carries no body.
    let c = client("until_closed", &url(ng.port, "/ws/headers"), &[]);
    assert_eq!(
        (c["received"][0].as_str(), c["rcvd_code"].as_u64()),
        (Some("hi"), Some(1000)),
        "{c}"
    );
    ng.finish();
}

#[test]
fn a_silent_client_is_pinged_and_closed_with_1011_when_it_does_not_answer() {
    let mut ng = start("workers=1 ws_ping=1s");
    let mut s = raw_handshake(ng.port, "/ws/echo");
    let started = Instant::now();
    // The ping comes after about a second of silence.
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0] & 0x0f, 9, "not a ping: {head:?}");
    let mut rest = vec![0u8; (head[1] & 0x7f) as usize];
    s.read_exact(&mut rest).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // Unanswered, the connection is closed with 1011 about a second later.
    assert_eq!(close_code(&mut s), Some(1011));
    // A client that answers (the websockets library does) stays open across several pings.
    let mut s = raw_handshake(ng.port, "/ws/echo");
    for _ in 0..3 {
        s.read_exact(&mut head).unwrap();
        assert_eq!(head[0] & 0x0f, 9);
        let mut rest = vec![0u8; (head[1] & 0x7f) as usize];
        s.read_exact(&mut rest).unwrap();
        s.write_all(&frame(10, &rest)).unwrap();
    }
    s.write_all(&frame(1, b"still here")).unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0] & 0x0f, 1, "the answered WebSocket was closed");
    ng.log_line(&["did not answer a ping within 1000 ms"]);
    ng.finish();
}

#[test]
fn a_pool_carries_the_websockets_a_third_of_its_arena_holds_and_answers_503_past_them() {
    // A 2 MiB arena is 128 chunks; a WebSocket may hold 6 of them: 7 at once.
    let mut ng = start("workers=1 arena=2m");
    let open: Vec<Holder> = (0..7)
        .map(|i| Holder::open(&url(ng.port, "/ws/wait"), &format!("cap{i}")))
        .collect();
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let r = ngx_pool_tests::http::request(ng.port, "GET", "/ws/echo", &upgrade, b"").unwrap();
    assert_eq!(r.status, 503);
    ng.log_line(&["7 WebSockets are open, the most its arena carries"]);
    // Plain requests are not affected, and a closed WebSocket makes room.
    assert_eq!(ng.get("/").status, 200);
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r =
            ngx_pool_tests::http::request(ng.port, "GET", "/ws/nowhere", &upgrade, b"").unwrap();
        if r.status == 403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after the WebSockets closed: {}",
            r.status
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ng.finish();
}
