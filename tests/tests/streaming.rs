//! Bodies of any size stream through the arena in both directions, within bounded memory, with
//! the client's pace reaching the handler (issue 3's tests through nginx).

use ngx_pool_tests::http::{exchange_streamed, request, sha256_of};
use ngx_pool_tests::memory::{assert_bounded, pool_workers, RssWatch};
use ngx_pool_tests::{procs, Conf, Nginx};
use std::time::Instant;

/// Byte `i` of what `builtin:stream` sends (the same formula as poold's `stream_byte`).
fn stream_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// Byte `i` of the bodies the tests upload.
fn upload_byte(i: u64) -> u8 {
    (i ^ (i >> 11) ^ (i >> 23)) as u8
}

const MIB: u64 = 1 << 20;

#[test]
fn a_64_mib_upload_and_a_256_mib_download_match_their_checksums_in_bounded_memory() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool up handler=builtin:echo workers=1 timeout=120s;\n    pool down handler=builtin:stream workers=1 timeout=120s;\n    client_max_body_size 128m;",
            "    location /echo { pool_pass up; }\n    location /stream { pool_pass down; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    let mut watched = ng.worker_pids();
    watched.extend(pool_workers(&ng));
    let arena_kib = 64 * 1024;

    let watch = RssWatch::new(watched.clone());
    let up = exchange_streamed(
        ng.port,
        "POST",
        "/echo",
        64 * MIB,
        upload_byte,
        1 << 16,
        |_| {},
    )
    .unwrap();
    let seen = watch.finish();
    assert_eq!(up.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&up.start).unwrap();
    assert_eq!(doc["body_length"], 64 * MIB);
    assert_eq!(doc["body_sha256"], sha256_of(64 * MIB, upload_byte));
    assert_bounded("upload", &seen, arena_kib);

    let watch = RssWatch::new(watched);
    let path = format!("/stream?bytes={}", 256 * MIB);
    let down = exchange_streamed(ng.port, "GET", &path, 0, upload_byte, 1 << 16, |_| {}).unwrap();
    let seen = watch.finish();
    assert_eq!(down.status, 200);
    assert!(down.complete);
    assert_eq!(down.body_len, 256 * MIB);
    assert_eq!(down.header("content-length"), Some("268435456"));
    assert_eq!(down.sha256, sha256_of(256 * MIB, stream_byte));
    assert_bounded("download", &seen, arena_kib);

    // Without a Content-Length the body goes out chunked, equally intact.
    let r = request(ng.port, "GET", "/stream?bytes=3000001&chunked=1", &[], b"").unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 3_000_001);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == stream_byte(i as u64)));
    // Small and empty bodies take the same path.
    for n in [0u64, 1, 16_367, 16_368, 16_369, 65_536, 65_537, 1 << 20] {
        let r = request(ng.port, "GET", &format!("/stream?bytes={n}"), &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len() as u64, n, "bytes={n}");
        assert!(r
            .body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == stream_byte(i as u64)));
        let body: Vec<u8> = (0..n).map(upload_byte).collect();
        let e = request(ng.port, "POST", "/echo", &[], &body)
            .unwrap()
            .json();
        assert_eq!(e["body_length"], n);
    }
    wait_until_idle(&mut ng, "up");
    wait_until_idle(&mut ng, "down");
    ng.finish();
}

/// A client that downloads `bytes` from `builtin:stream`, reads the head and the first bytes,
/// then stops reading until the returned sender says go; the thread returns what it saw.
/// Returns once the client has the head and the first bytes.
fn paused_download(
    port: u16,
    bytes: u64,
) -> (
    std::thread::JoinHandle<ngx_pool_tests::http::Streamed>,
    std::sync::mpsc::Sender<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut waited = false;
        exchange_streamed(
            port,
            "GET",
            &format!("/stream?bytes={bytes}"),
            0,
            upload_byte,
            4096,
            |got| {
                if !waited && got > 0 {
                    waited = true;
                    let _ = started_tx.send(());
                    let _ = rx.recv();
                }
            },
        )
        .unwrap()
    });
    if started_rx.recv().is_err() {
        // The client ended before its first bytes: show why.
        let seen = client.join();
        panic!("the paused download ended before its first bytes: {seen:?}");
    }
    (client, tx)
}

/// Waits until pool `pool` reports no slot and no chunk in use.
fn wait_until_idle(ng: &mut Nginx, pool: &str) {
    ng.wait_for("the pool to be idle", |ng| {
        let p = ng.pool_status(pool);
        p["slots"]["in_use"] == 0 && p["chunks"]["in_use"] == 0
    });
}

#[test]
fn with_buffering_off_a_client_that_stops_reading_holds_back_only_its_own_handler() {
    // `pool_buffering off`: the client's pace reaches the handler (buffering on, the default,
    // frees the handler instead: tests/buffering.rs).
    let mut ng = Nginx::start(
        Conf::new(
            "    pool down handler=builtin:stream workers=2 timeout=120s;",
            "    location /stream { pool_pass down; pool_buffering off; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    let nginx_worker = ng.worker_pids();
    let watch = RssWatch::new(nginx_worker);
    // A client that reads the head of a 64 MiB answer and then nothing for a while.
    let (slow, tx) = paused_download(ng.port, 64 * MIB);
    // The handler fills the socket buffers and the window, then waits for credit.
    ng.wait_for("the slow download to stall", |ng| {
        let p = ng.pool_status("down");
        let busy = p["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "busy")
            .count();
        // The whole credit window (1 MiB of 16 KiB chunks) is out and unsent: the socket
        // buffers are full and the handler waits.
        busy == 1 && p["chunks"]["in_use"].as_u64().unwrap() >= 64
    });
    let chunks_then = ng.pool_status("down")["chunks"]["in_use"].clone();
    // Meanwhile everyone else is served at once by the other pool worker, through the same
    // nginx worker.
    let started = Instant::now();
    for i in 0..50u64 {
        let r = request(
            ng.port,
            "GET",
            &format!("/stream?bytes={}", 100 + i),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len() as u64, 100 + i);
    }
    let others_took = started.elapsed();
    // The stalled download has not advanced: its handler is held back, not buffered ahead.
    assert_eq!(ng.pool_status("down")["chunks"]["in_use"], chunks_then);
    tx.send(()).unwrap();
    let down = slow.join().unwrap();
    assert!(down.complete);
    assert_eq!(down.sha256, sha256_of(64 * MIB, stream_byte));
    let seen = watch.finish();
    assert_bounded("stalled download", &seen, 64 * 1024);
    eprintln!("50 requests beside a stalled 64 MiB download took {others_took:?}");
    wait_until_idle(&mut ng, "down");
    ng.finish();
}

#[test]
fn a_pool_worker_killed_mid_stream_cuts_that_response_only() {
    // Streamed (`pool_buffering off`), so the paused client keeps the worker mid-answer; the
    // buffered case: tests/buffering.rs.
    let mut ng = Nginx::start(
        Conf::new(
            "    pool down handler=builtin:stream workers=2 timeout=120s;",
            "    location /stream { pool_pass down; pool_buffering off; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    let (victim, tx) = paused_download(ng.port, 64 * MIB);
    let mut busy_pid = 0u64;
    ng.wait_for("a busy pool worker", |ng| {
        let busy: Vec<u64> = ng.pool_status("down")["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "busy")
            .map(|w| w["pid"].as_u64().unwrap())
            .collect();
        busy_pid = busy.first().copied().unwrap_or(0);
        busy_pid != 0
    });
    procs::kill(busy_pid as u32, libc::SIGKILL);
    tx.send(()).unwrap();
    let cut = victim.join().unwrap();
    assert_eq!(cut.status, 200, "the head was out before the worker died");
    assert!(
        !cut.complete,
        "the response is cut, not passed off as whole"
    );
    assert!(cut.body_len < 64 * MIB);
    // The pool recovers: the next download is whole, and nothing leaks.
    let r = exchange_streamed(
        ng.port,
        "GET",
        "/stream?bytes=5000000",
        0,
        upload_byte,
        1 << 16,
        |_| {},
    )
    .unwrap();
    assert!(r.complete);
    assert_eq!(r.sha256, sha256_of(5_000_000, stream_byte));
    wait_until_idle(&mut ng, "down");
    assert!(ng.log().contains("request failed in the pool: WorkerDied"));
    ng.finish();
}

#[test]
fn a_client_gone_mid_stream_frees_the_handler_and_the_arena() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool down handler=builtin:stream workers=1 timeout=120s;",
            "    location /stream { pool_pass down; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
        s.write_all(
            format!(
                "GET /stream?bytes={} HTTP/1.1\r\nHost: x\r\n\r\n",
                256 * MIB
            )
            .as_bytes(),
        )
        .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        s.read_exact(&mut buf).unwrap();
    } // closed after 64 KiB
    wait_until_idle(&mut ng, "down");
    // The only worker is free again: the next request does not wait for 256 MiB to be made.
    let r = request(ng.port, "GET", "/stream?bytes=10", &[], b"").unwrap();
    assert_eq!(r.body.len(), 10);
    assert_eq!(ng.pool_status("down")["counters"]["abandoned"], 1);
    ng.finish();
}

#[test]
fn when_the_arena_is_full_requests_wait_then_get_503_and_nothing_leaks() {
    // A 1 MiB arena (64 chunks of 16 KiB) and one busy worker: queued requests with 200 KiB
    // bodies take the request share of the arena (3/4) within a few requests; the rest wait in
    // nginx for room, bounded by queue_timeout, and are answered 503, none dropped.
    let mut ng = Nginx::start(
        Conf::new(
            "    pool tiny handler=builtin:sleep workers=1 queue=64 arena=1m queue_timeout=600ms timeout=20s;\n    client_max_body_size 1m;",
            "    location /sleep { pool_pass tiny; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    let port = ng.port;
    let busy = std::thread::spawn(move || {
        request(port, "GET", "/sleep?ms=2000", &[], b"")
            .unwrap()
            .status
    });
    ng.wait_for("the only worker to be busy", |ng| {
        ng.pool_status("tiny")["workers"][0]["state"] == "busy"
    });
    let body: Vec<u8> = (0..200 * 1024u64).map(upload_byte).collect();
    let statuses = ngx_pool_tests::parallel(30, 30, move |_| {
        let r = request(port, "POST", "/sleep?ms=1", &[], &body).unwrap();
        (r.status, r.header("Retry-After").map(str::to_string))
    });
    for (status, retry) in &statuses {
        assert_eq!(*status, 503, "every waiting request is answered, with 503");
        assert_eq!(retry.as_deref(), Some("1"));
    }
    assert_eq!(busy.join().unwrap(), 200);
    // Each one accounted for in the log: a line of its own, or counted in a summary line.
    ng.wait_for("every 503 in the log", |ng| {
        ngx_pool_tests::rejections_in_log(&ng.log(), "within queue_timeout (600 ms); 503") == 30
    });
    wait_until_idle(&mut ng, "tiny");
    ng.finish();
}
