//! No client can stall a pool (issue 25): responses are buffered by nginx's event pipe as
//! `proxy_buffering` does, so stalled and slow readers never hold a pool worker; a request
//! waiting in the queue holds nothing of the arena that a running one needs, so no burst of
//! uploads deadlocks it; streaming stays available; what a handler sends is capped.
//! Every case runs real hostile clients against a real nginx and poold.

use ngx_pool_tests::http::{exchange_streamed, request, sha256_of};
use ngx_pool_tests::load::{self, Load};
use ngx_pool_tests::{Conf, Nginx};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Byte `i` of what `builtin:stream` sends (the same formula as poold's `stream_byte`).
fn stream_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn busy_workers(ng: &Nginx, pool: &str) -> usize {
    ng.pool_status(pool)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "busy")
        .count()
}

/// Regular files under `dir` (the temp files of buffered responses), recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Open descriptors of the nginx workers that point at a file under `dir` (a temp file is
/// unlinked when made, so only its descriptor shows it).
fn temp_files_open(ng: &Nginx, dir: &Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    ng.worker_pids()
        .iter()
        .map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| {
                            std::fs::read_link(e.path())
                                .is_ok_and(|t| t.to_string_lossy().starts_with(&dir))
                        })
                        .count()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// A client that sends a GET for `path`, reads the response head and `first` bytes, then stops
/// reading (its socket stays open, its receive window fills). Returns the connection.
fn stalled_reader(port: u16, path: &str, first: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A small receive buffer, so the kernel does not take the whole answer for the client.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = vec![0u8; first];
    s.read_exact(&mut got).unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..40.min(got.len())])
    );
    s
}

#[test]
fn stalled_readers_do_not_hold_pool_workers() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool down handler=builtin:stream workers=2 timeout=60s;",
            "    location /stream { pool_pass down; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    let temp = ng.dir.join("pool_temp");
    // Three clients ask for 64 MiB each and read nothing past the first bytes.
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| stalled_reader(ng.port, &format!("/stream?bytes={}", 64 * MIB), 4096))
        .collect();
    // Their handlers finish into nginx's buffers and temp files: both workers are idle again.
    ng.wait_for("the pool workers to be idle beside stalled readers", |ng| {
        busy_workers(ng, "down") == 0
    });
    assert!(
        temp_files_open(&ng, &temp) >= 1,
        "the answers went to temp files"
    );
    // A fourth client is served at once.
    let started = Instant::now();
    let r = request(ng.port, "GET", "/stream?bytes=100000", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the fourth request took {took:?}"
    );
    let p = ng.pool_status("down");
    assert_eq!(p["slots"]["in_use"], 0, "{p}");
    assert_eq!(p["chunks"]["in_use"], 0, "{p}");
    // The stalled clients still get every byte once they read.
    let readers: Vec<_> = stalled
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break n,
                        Ok(k) => n += k as u64,
                    }
                    if n >= 64 * MIB {
                        break n;
                    }
                }
            })
        })
        .collect();
    for t in readers {
        // The first 4096 bytes (head and some body) were read before.
        assert!(t.join().unwrap() + 4096 >= 64 * MIB);
    }
    ng.wait_for("the temp files to be closed", |ng| {
        temp_files_open(ng, &temp) == 0
    });
    assert!(
        files_under(&temp).is_empty(),
        "temp files left: {:?}",
        files_under(&temp)
    );
    eprintln!("a fourth request beside three stalled 64 MiB readers took {took:?}");
    ng.finish();
}

#[test]
fn a_slow_reader_of_a_large_answer_frees_its_worker_within_two_seconds() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool down handler=builtin:stream workers=1 timeout=60s;",
            "    location /stream { pool_pass down; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    let temp = ng.dir.join("pool_temp");
    let port = ng.port;
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let started = Instant::now();
    // 200 MB read at 2 MB/s: it would take 100 s to read it all.
    let client = std::thread::spawn(move || {
        exchange_streamed(
            port,
            "GET",
            &format!("/stream?bytes={}", 200_000_000u64),
            0,
            |_| 0,
            64 << 10,
            |got| {
                if stop_rx.try_recv().is_ok() {
                    panic!("stop");
                }
                let due = Duration::from_secs_f64(got as f64 / 2e6);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            },
        )
    });
    ng.wait_for("the handler to start", |ng| {
        ng.pool_status("down")["counters"]["accepted"] == 1
    });
    ng.wait_for("the worker to be free", |ng| busy_workers(ng, "down") == 0);
    let freed = started.elapsed();
    assert!(
        freed < Duration::from_secs(2),
        "the worker was free after {freed:?}"
    );
    // The next request is served by that worker at once.
    let r = request(ng.port, "GET", "/stream?bytes=10", &[], b"").unwrap();
    assert_eq!(r.body.len(), 10);
    assert!(
        temp_files_open(&ng, &temp) == 1,
        "the answer waits in a temp file"
    );
    stop_tx.send(()).unwrap();
    assert!(client.join().is_err(), "the client stopped itself");
    ng.wait_for("the temp file to be closed", |ng| {
        temp_files_open(ng, &temp) == 0
    });
    assert!(files_under(&temp).is_empty());
    eprintln!("200 MB to a 2 MB/s reader: worker free after {freed:?}");
    ng.finish();
}

/// Reads an SSE-style answer: the time each `every`-byte event arrived, after the head.
fn event_times(port: u16, path: &str, every: usize, events: usize) -> Vec<Duration> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let start = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let mut times = Vec::new();
    let mut body_at = None;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if body_at.is_none() {
            body_at = all.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(b) = body_at {
            while all.len() - b >= (times.len() + 1) * every && times.len() < events {
                times.push(start.elapsed());
            }
        }
        if times.len() == events {
            break;
        }
    }
    times
}

#[test]
fn buffering_off_and_x_accel_buffering_no_flush_each_event_at_once() {
    let ng = Nginx::start(
        Conf::new(
            "    pool sse handler=builtin:stream workers=2 timeout=60s;",
            "    location /on { pool_pass sse; }\n    location /off { pool_pass sse; pool_buffering off; }",
        )
        .workers(1),
    );
    // Five 100-byte events, 300 ms apart, with a Content-Length of all five.
    let q = "bytes=500&every=100&pause_ms=300";
    for (path, streamed) in [
        (format!("/off?{q}"), true),
        (format!("/on?{q}&accel=no"), true),
        (format!("/on?{q}"), false),
        (format!("/off?{q}&accel=yes"), false),
    ] {
        let times = event_times(ng.port, &path, 100, 5);
        assert_eq!(times.len(), 5, "{path}");
        let spread = times[4] - times[0];
        if streamed {
            // Each event arrives when written: the first well before the last.
            assert!(spread >= Duration::from_millis(900), "{path}: {times:?}");
        } else {
            // Buffered: held until a buffer fills or the answer ends, so all come together.
            assert!(spread < Duration::from_millis(300), "{path}: {times:?}");
        }
    }
    ng.finish();
}

#[test]
fn a_response_head_over_pool_max_header_size_is_a_502_naming_pool_handler_and_size() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool big handler=builtin:stream workers=1 timeout=60s;",
            "    location /default { pool_pass big; }\n    location /small { pool_pass big; pool_max_header_size 4k; }",
        )
        .workers(1),
    );
    ng.allow("exceeds pool_max_header_size");
    // A 10 MB header value, 20 000 headers: 502 at the default 64k; below it, served.
    for (path, status) in [
        ("/default?bytes=10&header_bytes=10000000", 502),
        ("/default?bytes=10&headers=20000", 502),
        ("/default?bytes=10&header_bytes=60000", 200),
        ("/small?bytes=10&header_bytes=5000", 502),
        ("/small?bytes=10&header_bytes=1000", 200),
    ] {
        let r = request(ng.port, "GET", path, &[], b"").unwrap();
        assert_eq!(r.status, status, "{path}");
    }
    let log = ng.log();
    assert!(
        log.contains("pool \"big\" (handler \"builtin:stream\"): bad response from pool worker: response head of")
            && log.contains("exceeds pool_max_header_size (65536 bytes)")
            && log.contains("exceeds pool_max_header_size (4096 bytes)"),
        "{log}"
    );
    ng.finish();
}

/// `n` concurrent uploads of `size` bytes to `path`; returns the count of each status.
fn flood(port: u16, path: &str, n: usize, size: usize) -> std::collections::BTreeMap<u16, usize> {
    let body = (0..size).map(|i| i as u8).collect();
    let upload = Load {
        port,
        method: "POST",
        path: path.to_string(),
        body: std::sync::Arc::new(body),
        clients: n,
    };
    load::burst(&upload, n)
}

#[test]
fn a_burst_of_uploads_gets_200s_or_fast_503s_never_504() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool up handler=builtin:echo workers=2 arena=64m queue=1024 timeout=30s;\n    pool tiny handler=builtin:echo workers=2 arena=1m timeout=30s;\n    client_max_body_size 2m;",
            "    location /up { pool_pass up; }\n    location /tiny { pool_pass tiny; }\n    location = /status { pool_status; }\n    location /streamed/ { pool_request_buffering off;\n        location /streamed/up { pool_pass up; }\n        location /streamed/tiny { pool_pass tiny; }\n    }",
        )
        .workers(1),
    );
    ng.allow("503");
    for prefix in ["", "/streamed"] {
        // 900 uploads of 300 KB at once into a 64 MiB arena with 2 workers whose handler works
        // 20 ms before it reads its body.
        let started = Instant::now();
        let counts = flood(ng.port, &format!("{prefix}/up?sleep_ms=20"), 900, 300_000);
        eprintln!(
            "{prefix}/up 900 x 300 KB: {counts:?} in {:?}",
            started.elapsed()
        );
        assert_eq!(counts.get(&504), None, "{prefix}: {counts:?}");
        assert_eq!(counts.get(&0), None, "{prefix}: {counts:?}");
        assert!(
            counts.keys().all(|s| *s == 200 || *s == 503),
            "{prefix}: {counts:?}"
        );
        assert!(
            counts.get(&200).copied().unwrap_or(0) >= 450,
            "{prefix}: {counts:?}"
        );
        // 40 uploads of 900 KB into a 1 MiB arena.
        let counts = flood(ng.port, &format!("{prefix}/tiny"), 40, 900_000);
        eprintln!("{prefix}/tiny 40 x 900 KB into 1 MiB: {counts:?}");
        assert_eq!(counts.get(&504), None, "{prefix}: {counts:?}");
        assert!(
            counts.keys().all(|s| *s == 200 || *s == 503),
            "{prefix}: {counts:?}"
        );
    }
    for pool in ["up", "tiny"] {
        ng.wait_for("the pool to be idle", |ng| {
            let p = ng.pool_status(pool);
            p["slots"]["in_use"] == 0 && p["chunks"]["in_use"] == 0
        });
    }
    ng.finish();
}

#[test]
fn a_killed_worker_cuts_a_buffered_answer_not_passes_it_off_as_whole() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool down handler=builtin:stream workers=1 timeout=60s;",
            "    location /stream { pool_pass down; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    ng.allow("WorkerDied");
    let port = ng.port;
    // One event of 64 KiB every 200 ms: the worker is busy for a while.
    let client = std::thread::spawn(move || {
        exchange_streamed(
            port,
            "GET",
            "/stream?bytes=6553600&every=65536&pause_ms=200",
            0,
            |_| 0,
            1 << 16,
            |_| {},
        )
        .unwrap()
    });
    let mut pid = 0u64;
    ng.wait_for("a busy worker", |ng| {
        let w = &ng.pool_status("down")["workers"][0];
        pid = w["pid"].as_u64().unwrap_or(0);
        w["state"] == "busy"
    });
    std::thread::sleep(Duration::from_millis(500));
    ngx_pool_tests::procs::kill(pid as u32, libc::SIGKILL);
    let cut = client.join().unwrap();
    assert_eq!(cut.status, 200);
    assert!(!cut.complete, "the answer is cut");
    assert!(cut.body_len < 6_553_600);
    let r = exchange_streamed(
        ng.port,
        "GET",
        "/stream?bytes=5000000",
        0,
        |_| 0,
        1 << 16,
        |_| {},
    )
    .unwrap();
    assert!(r.complete);
    assert_eq!(r.sha256, sha256_of(5_000_000, stream_byte));
    ng.finish();
}

/// A client that uploads `total` bytes to `path` in 1 KB pieces every 100 ms, until `stop`.
fn slow_uploader(
    port: u16,
    path: &str,
    total: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let path = path.to_string();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let piece = [b'u'; 1024];
        let mut sent = 0;
        while sent < total && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if s.write_all(&piece).is_err() {
                return;
            }
            sent += piece.len();
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn slow_uploaders_hold_no_worker_unless_the_location_streams_uploads() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool up handler=builtin:echo workers=2 timeout=60s;",
            "    location /up { pool_pass up; }\n    location /streamed { pool_pass up; pool_request_buffering off; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    ng.allow("client prematurely closed connection");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients upload 1 KB every 100 ms: nginx reads their bodies, no worker waits.
    let slow: Vec<_> = (0..4)
        .map(|_| slow_uploader(ng.port, "/up", 1 << 20, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let r = request(ng.port, "POST", "/up", &[], b"probe").unwrap();
    assert_eq!(r.status, 200);
    // Not held behind the uploads (with them holding both workers, it would wait for them).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the probe took {:?}",
        started.elapsed()
    );
    // The probe's worker marks itself idle just after answering; no upload keeps one busy.
    ng.wait_for("no worker busy beside four slow uploaders", |ng| {
        busy_workers(ng, "up") == 0
    });
    // With pool_request_buffering off the handler reads the body as it arrives: the worker
    // waits on the client (what the mode is for, and what it costs).
    let streamed = slow_uploader(ng.port, "/streamed", 1 << 20, stop.clone());
    ng.wait_for("a worker reading an arriving body", |ng| {
        busy_workers(ng, "up") == 1
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in slow {
        t.join().unwrap();
    }
    streamed.join().unwrap();
    ng.wait_for("the pool to be idle", |ng| {
        let p = ng.pool_status("up");
        busy_workers(ng, "up") == 0 && p["slots"]["in_use"] == 0 && p["chunks"]["in_use"] == 0
    });
    ng.finish();
}

#[test]
fn a_streamed_upload_reaches_the_handler_whole_and_as_it_arrives() {
    let ng = Nginx::start(
        Conf::new(
            "    pool up handler=builtin:echo workers=1 timeout=120s;\n    client_max_body_size 128m;",
            "    location /streamed { pool_pass up; pool_request_buffering off; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    let body_byte = |i: u64| (i ^ (i >> 11) ^ (i >> 23)) as u8;
    let r = exchange_streamed(
        ng.port,
        "POST",
        "/streamed",
        64 * MIB,
        body_byte,
        1 << 16,
        |_| {},
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&r.start).unwrap();
    assert_eq!(doc["body_length"], 64 * MIB);
    assert_eq!(doc["body_sha256"], sha256_of(64 * MIB, body_byte));
    // No temp file for the body: it went from nginx's buffer to the arena as it came.
    assert!(files_under(&ng.dir.join("body")).is_empty());
    // A chunked body is buffered whatever the setting (its length goes with the head).
    let mut s = TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.write_all(b"POST /streamed HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_length\":5"), "{out}");
    ng.finish();
}

#[test]
fn a_streamed_answer_to_a_client_that_never_reads_ends_at_send_timeout() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool down handler=builtin:stream workers=1 timeout=120s;",
            "    location /off { pool_pass down; pool_buffering off; send_timeout 1s; }\n    location /sse { pool_pass down; send_timeout 1s; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    ng.allow("client timed out");
    // Streamed (by the location, and by the handler's X-Accel-Buffering: no): the client takes
    // the head and then nothing; the handler must not wait for it until the pool's deadline.
    for path in ["/off?bytes=500000000", "/sse?bytes=500000000&accel=no"] {
        let _stalled = stalled_reader(ng.port, path, 4096);
        ng.wait_for("the handler to be stopped at send_timeout", |ng| {
            busy_workers(ng, "down") == 0 && ng.pool_status("down")["slots"]["in_use"] == 0
        });
    }
    assert!(ng.log().contains("client timed out"));
    ng.finish();
}

#[test]
fn an_interim_status_from_a_handler_is_a_502_not_a_desync() {
    let ng = Nginx::start(
        Conf::new(
            "    pool s handler=builtin:stream workers=1;",
            "    location /s { pool_pass s; }",
        )
        .workers(1),
    );
    for status in [100, 101, 199, 600] {
        let r = request(
            ng.port,
            "GET",
            &format!("/s?bytes=5&status={status}"),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 502, "status {status}");
    }
    assert_eq!(
        request(ng.port, "GET", "/s?bytes=5&status=299", &[], b"")
            .unwrap()
            .status,
        299
    );
    // Not even to a WebSocket handshake: nginx offers the upgrade to ASGI pools only.
    let r = request(
        ng.port,
        "GET",
        "/s?bytes=5&status=101",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    assert!(ng
        .log()
        .contains("response status 101 (a handler may send 200 to 599"));
    ng.finish();
}

/// A POST of `total` bytes to `path` that sends `first` bytes, then waits for `then` (to
/// trickle, or to close).
fn partial_upload(port: u16, path: &str, total: usize, first: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    s.write_all(&vec![b'u'; first]).unwrap();
    s
}

#[test]
fn streamed_uploads_that_fail_or_are_cut_short_are_ended_at_once() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool crash handler=builtin:crash workers=2 queue=16;\n    pool one handler=builtin:echo workers=1 queue=4;",
            "    location /crash { pool_request_buffering off; pool_pass crash; }\n    location /one { pool_request_buffering off; pool_pass one; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    ng.allow("panic");
    // A handler that fails at once while its client is still sending: the 500 goes out, and
    // the slot is free though nginx keeps reading (and discarding) the rest of the body.
    let mut trickling = Vec::new();
    for _ in 0..10 {
        let mut s = partial_upload(ng.port, "/crash?how=panic", 1_000_000, 200_000);
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 500");
        s.write_all(b"more").unwrap();
        trickling.push(s);
    }
    ng.wait_for("the failed requests' slots to be free", |ng| {
        ng.pool_status("crash")["slots"]["in_use"] == 0
    });
    drop(trickling);
    // A request waiting in the queue whose client goes away with its body still short (more
    // sent than nginx's body buffer holds): noticed at once, its place in the queue freed.
    let port = ng.port;
    let busy = std::thread::spawn(move || {
        request(port, "POST", "/one?sleep_ms=3000", &[], b"x")
            .unwrap()
            .status
    });
    ng.wait_for("the only worker to be busy", |ng| {
        busy_workers(ng, "one") == 1
    });
    let cut = partial_upload(ng.port, "/one", 300_000, 50_000);
    ng.wait_for("the cut upload to be queued", |ng| {
        ng.pool_status("one")["slots"]["in_use"] == 2
    });
    drop(cut);
    // Its queue entry stays until a worker pops it (as for any request withdrawn from the
    // queue); the request is ended now, before the worker is free.
    ng.wait_for(
        "the cut upload to be given up while the worker is still busy",
        |ng| busy_workers(ng, "one") == 1 && ng.pool_status("one")["counters"]["abandoned"] == 1,
    );
    assert!(ng
        .log()
        .contains("client closed the connection before sending its whole body"));
    assert_eq!(busy.join().unwrap(), 200);
    ng.finish();
}

/// Bytes of the pool's arena in memory: the allocated blocks of its memfd, through poold's
/// descriptor (a page of a memfd exists from its first write until it is given back).
fn arena_resident(ng: &Nginx) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let pid = ng.poold();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("poold's descriptors");
    fds.flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:ngx-pool:"))
        })
        .map(|e| std::fs::metadata(e.path()).map_or(0, |m| m.blocks() * 512))
        .max()
        .expect("poold holds its region")
}

#[test]
fn a_bursts_arena_pages_go_back_to_the_kernel_once_the_pool_is_quiet() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool down handler=builtin:stream workers=2 timeout=60s;",
            "    location /stream { pool_pass down; }\n    location = /status { pool_status; }",
        )
        .workers(2),
    );
    let at_start = arena_resident(&ng);
    // A burst: 16 clients at once, 4 MiB each, every byte checked.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let port = ng.port;
            std::thread::spawn(move || {
                let path = format!("/stream?bytes={}", 4 * MIB);
                exchange_streamed(port, "GET", &path, 0, |_| 0, 1 << 16, |_| {}).unwrap()
            })
        })
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        assert!(r.complete);
        assert_eq!(r.sha256, sha256_of(4 * MIB, stream_byte));
    }
    let after_burst = arena_resident(&ng);
    assert!(
        after_burst >= at_start + MIB,
        "the burst wrote the arena: {at_start} then {after_burst} bytes resident"
    );
    // Quiet for the trim's 5 s: the written chunks' pages go back.
    ng.wait_for("the arena's written pages to go back", |ng| {
        arena_resident(ng) <= at_start + 256 * 1024
    });
    let p = ng.pool_status("down");
    assert_eq!(p["chunks"]["in_use"], 0, "{p}");
    // The arena works as before: the next answers are whole, and it is written again.
    for _ in 0..3 {
        let path = "/stream?bytes=5000000";
        let r = exchange_streamed(ng.port, "GET", path, 0, |_| 0, 1 << 16, |_| {}).unwrap();
        assert!(r.complete);
        assert_eq!(r.sha256, sha256_of(5_000_000, stream_byte));
    }
    assert!(arena_resident(&ng) > at_start, "written again");
    ng.finish();
}
