//! Python ASGI apps through `pool_pass` (FastAPI from the test virtualenv), run unmodified by
//! the `ngx-pool` package's ASGI handler: an event loop per worker with `concurrency=`
//! requests at once, the lifespan, deadlines that cancel one request, clients that leave.

use ngx_pool_tests::http::{comparable, request};
use ngx_pool_tests::{python_apps, python_env, Conf, Nginx};
use std::time::{Duration, Instant};

/// A pool line for ASGI app `spec` from the test apps, with `extra` parameters.
fn asgi_pool(name: &str, spec: &str, extra: &str) -> String {
    let workers = if extra.contains("workers=") {
        ""
    } else {
        "workers=2 "
    };
    format!(
        "    pool {name} handler=asgi:{spec} venv={} chdir={} {workers}{extra};",
        python_env().display(),
        python_apps().display()
    )
}

/// A file the app records into (`ASGI_RECORD`), fresh for the test, in a directory of its own
/// that the pool's user (nobody, where the tests run as root) may write.
fn record_file(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("asgi-record-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    dir.join("record")
}

/// Removes what [`record_file`] made.
fn remove_record(p: &std::path::Path) {
    if let Some(dir) = p.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn recorded(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Waits until `p` holds a line containing `needle`.
fn wait_recorded(p: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = recorded(p);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no \"{needle}\" in {}: {text}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_fastapi_app_runs_unmodified() {
    let rec = record_file("basic");
    let mut ng = Nginx::start(Conf::new(
        &asgi_pool(
            "api",
            "fastapiapp:app",
            &format!("env=ASGI_RECORD={}", rec.display()),
        ),
        "    location / { pool_pass api; }",
    ));
    let r = ng.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from fastapi\n"));
    let j = ng.get("/json?a=1&b=two").json();
    assert_eq!(
        (j["path"].as_str(), j["a"].as_str(), j["b"].as_str()),
        (Some("/json"), Some("1"), Some("two"))
    );
    assert_eq!(ng.get("/sync").json()["thread"], "sync");
    let s = ng.get("/state").json();
    assert_eq!(s["greeting"], "hello from lifespan");
    // Lifespan startup ran in the worker that serves (after the fork), not in the manager.
    assert_eq!(s["started_by"], s["pid"]);
    let r = ng.get("/stream?n=4");
    assert_eq!(r.text(), "line 0\nline 1\nline 2\nline 3\n");
    let r = request(
        ng.port,
        "POST",
        "/items/7",
        &[("Content-Type", "application/json")],
        br#"{"name":"x"}"#,
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()["id"].as_i64(), r.json()["name"].as_str()),
        (201, Some(7), Some("x"))
    );
    // An upload read with request.stream(), in several chunks.
    let body: Vec<u8> = (0..900_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = request(ng.port, "POST", "/digest", &[], &body).unwrap();
    let j = r.json();
    assert_eq!(j["bytes"], 900_000);
    assert_eq!(j["chunks_gt_1"], true);
    use sha2::Digest;
    assert_eq!(
        j["sha256"].as_str().unwrap(),
        format!("{:x}", sha2::Sha256::digest(&body))
    );
    // Background tasks run after the answer.
    assert_eq!(ng.get("/bg?tag=after").json()["scheduled"], "after");
    wait_recorded(&rec, "background after");
    assert_eq!(ng.get("/boom").status, 500);
    ng.log_line(&["RuntimeError: the view failed on purpose"]);
    assert_eq!(ng.get("/missing").status, 404);
    ng.finish();
    // Shutdown ran in each worker as the pool stopped.
    let text = recorded(&rec);
    assert_eq!(text.matches("startup").count(), 2, "{text}");
    assert_eq!(text.matches("shutdown").count(), 2, "{text}");
    remove_record(&rec);
}

#[test]
fn concurrency_is_the_bound_of_requests_a_worker_runs_at_once() {
    // One worker, three at once: of four slow requests, three run together and the fourth
    // waits in the queue for a lane.
    let ng = Nginx::start(Conf::new(
        &asgi_pool("api", "fastapiapp:app", "workers=1 concurrency=3"),
        "    location / { pool_pass api; }",
    ));
    let port = ng.port;
    let started = Instant::now();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let r = request(port, "GET", "/sleep?ms=700", &[], b"").unwrap();
                (r.status, started.elapsed())
            })
        })
        .collect();
    let done: Vec<(u16, Duration)> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(done.iter().all(|(s, _)| *s == 200), "{done:?}");
    let most = ng.get("/most").json();
    assert_eq!(most["most"], 3, "{most}");
    // Every thread of the worker (its lanes, the event loop, anyio's) runs in SCHED_BATCH:
    // woken, it does not preempt nginx.
    let workers = ngx_pool_tests::memory::pool_workers(&ng);
    assert_eq!(workers.len(), 1, "{workers:?}");
    let threads = ngx_pool_tests::procs::thread_policies(workers[0]);
    assert!(threads.len() >= 4, "{threads:?}");
    assert!(threads.iter().all(|(_, p)| *p == 3), "{threads:?}");
    // The fourth ran after one of the first three had finished.
    let last = done.iter().map(|(_, t)| *t).max().unwrap();
    assert!(last >= Duration::from_millis(1400), "{done:?}");
    ng.finish();
}

#[test]
fn a_request_past_its_deadline_is_cancelled_and_the_worker_serves_on() {
    let rec = record_file("deadline");
    let mut ng = Nginx::start(Conf::new(
        &asgi_pool(
            "api",
            "fastapiapp:app",
            &format!(
                "workers=1 concurrency=4 timeout=1s env=ASGI_RECORD={}",
                rec.display()
            ),
        ),
        "    location / { pool_pass api; }",
    ));
    let pid = ng.get("/state").json()["pid"].clone();
    let port = ng.port;
    let slow = std::thread::spawn(move || {
        request(port, "GET", "/cancellable?ms=8000&tag=late", &[], b"").unwrap()
    });
    // Meanwhile the worker's other lanes serve.
    for _ in 0..5 {
        assert_eq!(ng.get("/sleep?ms=50").status, 200);
    }
    let r = slow.join().unwrap();
    assert_eq!(r.status, 504);
    // The app's task got CancelledError: its own handler ran.
    wait_recorded(&rec, "cancelled late");
    ng.log_line(&[
        "ran past the pool's timeout of 1000 ms",
        "its task was cancelled",
    ]);
    // The same worker goes on.
    assert_eq!(ng.get("/state").json()["pid"], pid);
    assert!(!recorded(&rec).contains("finished late"));
    ng.finish();
    remove_record(&rec);
}

#[test]
fn a_worker_whose_event_loop_is_stuck_in_synchronous_code_is_replaced() {
    let mut ng = Nginx::start(Conf::new(
        &asgi_pool(
            "api",
            "fastapiapp:app",
            "workers=1 concurrency=4 timeout=1s",
        ),
        "    location / { pool_pass api; }",
    ));
    let pid = ng.get("/state").json()["pid"].clone();
    let r = ng.get("/block-loop?ms=20000");
    assert_eq!(r.status, 504);
    ng.log_line(&["past the pool's timeout of 1000 ms and it did not cancel it; SIGTERM"]);
    // A new worker serves (the stuck one was stopped, SIGKILL at the latest).
    let mut replaced = None;
    ng.wait_for("a replacement worker", |ng| {
        let r = ng.get("/state");
        if r.status == 200 && r.json()["pid"] != pid {
            replaced = Some(r.json()["pid"].clone());
        }
        replaced.is_some()
    });
    ng.finish();
}

#[test]
fn a_client_that_leaves_is_an_http_disconnect_for_the_app() {
    use std::io::Write;
    let rec = record_file("disconnect");
    let ng = Nginx::start(Conf::new(
        &asgi_pool(
            "api",
            "fastapiapp:app",
            &format!("workers=1 env=ASGI_RECORD={}", rec.display()),
        ),
        "    location / { pool_pass api; }",
    ));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.write_all(
        b"POST /watch?tag=gone HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    )
    .unwrap();
    // Wait until the app has the request (it reads the body, then polls), then leave.
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    wait_recorded(&rec, "disconnect gone");
    // A client that stays is not told it left.
    let r = request(ng.port, "POST", "/watch?tag=stays", &[], b"x").unwrap();
    assert_eq!(r.status, 200);
    ng.finish();
    remove_record(&rec);
}

#[test]
fn an_app_that_breaks_the_protocol_gets_500_and_a_line_naming_the_rule() {
    let mut ng = Nginx::start(Conf::new(
        &asgi_pool("raw", "rawasgi:app", "workers=1"),
        "    location / { pool_pass raw; }",
    ));
    assert_eq!(ng.get("/ok").text(), "ok\n");
    for (path, rule) in [
        (
            "/body-first",
            "http.response.body sent before http.response.start",
        ),
        ("/start-twice", "http.response.start sent twice"),
        ("/bad-status", "http.response.start with status '200 OK'"),
        (
            "/bad-header",
            "http.response.start with the header (b'x-evil'",
        ),
        ("/no-start", "returned without sending http.response.start"),
    ] {
        let r = ng.get(path);
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        assert!(r.header("Injected").is_none());
        ng.log_line(&[rule]);
    }
    // A body after the answer was complete: the client has its answer; the log says why the
    // app then failed.
    assert_eq!(ng.get("/after-complete").text(), "done\n");
    ng.log_line(&["http.response.body sent after the response was complete"]);
    for (path, rule) in [
        ("/start-only", "returned before the response was complete (no http.response.body after http.response.start); 500"),
        ("/ctl-header", "http.response.start with the header (b'x-ctl', b'a\\x01b')"),
        ("/three-tuple", "http.response.start with the header (b'x-a', b'1', b'2')"),
        ("/own-cancel", "CancelledError"),
    ] {
        let r = ng.get(path);
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        ng.log_line(&[rule]);
    }
    // Returning in the middle of a stream: the client sees the answer cut (never a clean 200
    // with what was sent), the log why.
    let cut = request(ng.port, "GET", "/stream-return", &[], b"");
    assert!(
        cut.as_ref().map_or(true, |r| r.body != b"partial-"),
        "a cut stream looked whole: {:?}",
        cut.map(|r| r.text())
    );
    ng.log_line(&[
        "returned before the response was complete (its last http.response.body had more_body)",
    ]);
    assert_eq!(ng.get("/chunks").text(), "part 0\npart 1\npart 2\n");
    let r = request(ng.port, "POST", "/receive-all", &[], &vec![b'z'; 700_000]).unwrap();
    assert_eq!(r.text(), "700000\n");
    // No body: one empty http.request all the same.
    assert_eq!(ng.get("/receive-all").text(), "0\n");
    ng.finish();
}

#[test]
fn a_failed_lifespan_startup_keeps_the_pool_from_starting_with_the_apps_traceback() {
    let mut ng = Nginx::start(Conf::new(
        &format!(
            "{}\n{}\n{}",
            asgi_pool("failing", "rawasgi:failing_startup", "workers=1"),
            asgi_pool("plain", "rawasgi:no_lifespan", "workers=1"),
            asgi_pool("strict", "rawasgi:no_lifespan", "workers=1 lifespan=on"),
        ),
        "    location /f/ { pool_pass failing; }\n    location /p/ { pool_pass plain; }\n    location /s/ { pool_pass strict; }",
    ));
    ng.log_line(&["ConnectionError: the database is not there"]);
    ng.log_line(&["the pool's first worker could not start (see above); the pool answers 503"]);
    // (A request that reached the pool as its poold left is 502, as for any poold lost.)
    ng.wait_for("503 from the pool that did not start", |ng| {
        ng.get("/f/ok").status == 503
    });
    assert_eq!(ng.get("/f/ok").status, 503);
    // An app without lifespan serves under lifespan=auto, with a line saying so ...
    ng.log_line(&[
        "rawasgi:no_lifespan raised on the lifespan scope: it is taken to have no lifespan",
    ]);
    assert_eq!(ng.get("/p/ok").status, 404);
    // ... and does not start under lifespan=on.
    ng.log_line(&["poold \"strict\"", "lifespan startup failed"]);
    ng.wait_for("503 from the strict pool", |ng| {
        ng.get("/s/ok").status == 503
    });
    ng.allow("the pool's first worker could not start");
    ng.finish();
}

#[test]
fn fastapi_under_the_pool_answers_as_under_uvicorn() {
    let uvicorn = ngx_pool_tests::Uvicorn::start("fastapiapp:app", &["--workers", "2"]);
    let ng = Nginx::start(Conf::new(
        &asgi_pool("api", "fastapiapp:app", ""),
        "    location / { pool_pass api; }",
    ));
    let json = ("Content-Type", "application/json");
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);
    let cases: Vec<Case> = vec![
        ("GET", "/", vec![], vec![]),
        ("HEAD", "/", vec![], vec![]),
        ("GET", "/json?a=1&b=%C3%A9", vec![], vec![]),
        ("GET", "/json?a=x+y&a=z", vec![], vec![]),
        ("GET", "/sync", vec![], vec![]),
        ("POST", "/echo", vec![json], br#"{"k": [1, 2, 3]}"#.to_vec()),
        (
            "POST",
            "/echo",
            vec![],
            (0..200_000u32).map(|i| i as u8).collect(),
        ),
        ("POST", "/digest", vec![], vec![9u8; 500_000]),
        (
            "POST",
            "/items/7",
            vec![json],
            br#"{"name": "x", "n": 2}"#.to_vec(),
        ),
        (
            "POST",
            "/items/seven",
            vec![json],
            br#"{"name": "x"}"#.to_vec(),
        ),
        ("POST", "/items/7", vec![json], b"{not json".to_vec()),
        ("GET", "/stream?n=5", vec![], vec![]),
        ("GET", "/big?bytes=500000", vec![], vec![]),
        ("GET", "/cookie", vec![], vec![]),
        ("GET", "/go", vec![], vec![]),
        ("GET", "/missing", vec![], vec![]),
        ("GET", "/nowhere", vec![], vec![]),
        ("DELETE", "/json", vec![], vec![]),
        ("OPTIONS", "/", vec![], vec![]),
        ("GET", "/teapot", vec![], vec![]),
        ("GET", "/empty", vec![], vec![]),
        ("GET", "/boom", vec![], vec![]),
        ("GET", "/sync-boom", vec![], vec![]),
        ("GET", "/unicode", vec![], vec![]),
        (
            "GET",
            "/headers",
            vec![("X-Many", "1"), ("X-Many", "2")],
            vec![],
        ),
        ("GET", "/openapi.json", vec![], vec![]),
        ("GET", "/docs", vec![], vec![]),
        ("GET", "/json/%E2%9C%93", vec![], vec![]),
    ];
    for (method, path, headers, body) in &cases {
        let ours = request(ng.port, method, path, headers, body).unwrap();
        let theirs = request(uvicorn.port, method, path, headers, body).unwrap();
        let (a, b) = (comparable(&ours), comparable(&theirs));
        assert_eq!(a.0, b.0, "{method} {path}: status");
        assert_eq!(a.1, b.1, "{method} {path}: headers");
        assert!(
            a.2 == b.2,
            "{method} {path}: bodies differ:\n{}\n---\n{}",
            ours.text(),
            theirs.text()
        );
    }
    // The scope itself, but what differs by nature (the ports, the proxy's headers).
    let scope = |port: u16| {
        let mut s = request(port, "GET", "/scope?q=%20x", &[], b"")
            .unwrap()
            .json();
        // The listening address and port, each its own (not the Host header's).
        assert_eq!(s["server"], serde_json::json!(["127.0.0.1", port]), "{s}");
        let o = s.as_object_mut().unwrap();
        o.remove("headers");
        o.remove("server");
        // uvicorn says 2.3; the pool 2.4 (send() on a closed connection raises OSError).
        assert_eq!(s["asgi"]["version"], "3.0");
        s.as_object_mut().unwrap().remove("asgi");
        s
    };
    assert_eq!(scope(ng.port), scope(uvicorn.port));
    ng.finish();
    drop(uvicorn);
}

#[test]
fn the_demos_fastapi_app_awaits_many_requests_per_worker() {
    // examples/fastapi as scripts/run serves it (nginx-conf/demo.conf's pool line).
    let dir = ngx_pool_tests::repo_dir().join("examples/fastapi");
    let ng = Nginx::start(Conf::new(
        &format!(
            "    pool api handler=asgi:main:app venv={} chdir={} workers=2 concurrency=100 timeout=30s;",
            python_env().display(),
            dir.display()
        ),
        "    location /api/ { pool_param SCRIPT_NAME /api; pool_pass api; }",
    ));
    let hello = ng.get("/api/").json();
    assert_eq!(hello["hello"], "from fastapi");
    let before = ng.pool_processes();
    let port = ng.port;
    let started = Instant::now();
    let waits: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                request(port, "GET", "/api/wait?ms=300", &[], b"")
                    .unwrap()
                    .json()
            })
        })
        .collect();
    let answers: Vec<serde_json::Value> = waits.into_iter().map(|t| t.join().unwrap()).collect();
    // Fifty 300 ms waits on two workers: 7.5 s one at a time; together, well under 3.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for a in &answers {
        assert_eq!(a["waited_ms"], 300);
        // The lifespan ran in the worker that answers.
        assert_eq!(a["worker_started"], a["pid"]);
    }
    let r = request(
        port,
        "POST",
        "/api/items/3",
        &[("Content-Type", "application/json")],
        br#"{"a":1}"#,
    )
    .unwrap();
    assert_eq!(r.json(), serde_json::json!({"id": 3, "a": 1}));
    // Its WebSocket echoes.
    let e = ngx_pool_tests::ws_client("echo", &format!("ws://127.0.0.1:{port}/api/ws"), &["2"]);
    assert_eq!(e["texts"][1], "hello 1 ✓");
    assert_eq!(ng.pool_processes(), before, "no process was created");
    ng.finish();
}

#[test]
fn a_django_project_runs_under_asgi_with_its_async_views() {
    let mut ng = Nginx::start(Conf::new(
        &asgi_pool("django", "djangoapp.asgi:application", ""),
        "    location / { pool_pass django; }\n    \
         location /shop/ { pool_param SCRIPT_NAME /shop; pool_pass django; }",
    ));
    let r = ng.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from django\n"));
    let j = ng.get("/async").json();
    assert_eq!(
        (j["async"].as_bool(), j["path"].as_str()),
        (Some(true), Some("/async"))
    );
    // Mounted under a prefix: Django's ASGI handler takes root_path as SCRIPT_NAME.
    let j = ng.get("/shop/json?q=ok").json();
    assert_eq!(
        (j["path"].as_str(), j["script"].as_str(), j["q"].as_str()),
        (Some("/shop/json"), Some("/shop"), Some("ok"))
    );
    let r = request(
        ng.port,
        "POST",
        "/form",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=Grace&tag=a&tag=b",
    )
    .unwrap();
    assert_eq!(r.json()["name"], "Grace");
    assert_eq!(r.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(ng.get("/stream").text(), "tick 0\ntick 1\ntick 2\n");
    assert_eq!(ng.get("/boom").status, 500);
    ng.log_line(&["RuntimeError: boom in a django view"]);
    ng.finish();
}

#[test]
fn what_an_app_does_after_its_client_left_or_its_deadline_is_bounded() {
    use std::io::{Read, Write};
    let rec = record_file("bounded");
    let mut ng = Nginx::start(Conf::new(
        &asgi_pool(
            "api",
            "fastapiapp:app",
            &format!(
                "workers=1 concurrency=4 timeout=1s env=ASGI_RECORD={}",
                rec.display()
            ),
        ),
        "    location / { pool_pass api; pool_buffering off; }",
    ));
    // A stream as fast as the app can make it, whose client reads a little and leaves: its
    // send() raises and the generator stops (it once grew the worker without bound).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.write_all(b"GET /feed?tag=fast HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0;
    while got < 1 << 20 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended after {got} bytes");
        got += n;
    }
    drop(s);
    wait_recorded(&rec, "feed stopped fast");
    // A task whose client left before its deadline is still cancelled at the deadline.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.write_all(b"GET /cancellable?ms=60000&tag=left HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    wait_recorded(&rec, "cancelled left");
    // A loop stuck past its requests' deadlines: the requests that waited for it are cancelled
    // before they start and the worker serves on (poold does not have to stop it).
    let pid = ng.get("/state").json()["pid"].clone();
    let port = ng.port;
    let blocker = std::thread::spawn(move || {
        request(port, "GET", "/block-loop?ms=1500", &[], b"")
            .unwrap()
            .status
    });
    std::thread::sleep(Duration::from_millis(200));
    let queued: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                request(port, "GET", "/sleep?ms=10", &[], b"")
                    .unwrap()
                    .status
            })
        })
        .collect();
    assert_eq!(blocker.join().unwrap(), 504);
    for q in queued {
        assert_eq!(q.join().unwrap(), 504);
    }
    // Past the deadline and poold's grace (1 s + 2 s): the same worker still serves.
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(ng.get("/state").json()["pid"], pid);
    assert!(!ng.log().contains("did not cancel it"), "{}", ng.log());
    // SystemExit in a task the app started ends the loop: the worker leaves and a fresh one
    // serves (the pool never hangs on a dead loop).
    assert_eq!(ng.get("/bg-sysexit").status, 200);
    ng.log_line(&["the event loop of the ASGI app fastapiapp:app stopped"]);
    let mut fresh = false;
    ng.wait_for("a fresh worker", |ng| {
        let r = ng.get("/state");
        fresh = r.status == 200 && r.json()["pid"] != pid;
        fresh
    });
    ng.finish();
    remove_record(&rec);
}
