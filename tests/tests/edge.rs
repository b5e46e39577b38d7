//! The nginx side's edge: a panic at any entry point is caught and answered (never an aborted
//! worker), overload does not flood the error log, a failure nobody saw is not counted as one,
//! and poold's log lines carry nginx's local time.

use ngx_pool_tests::http::request;
use ngx_pool_tests::{nginx_test_config, parallel, rejections_in_log, Conf, Nginx};
use std::io::{Read, Write};

/// A configuration of one nginx worker whose test-only faults named in `entries` are on.
fn faulty(entries: &str, http: &str, server: &str) -> Conf {
    let mut conf = Conf::new(http, server).workers(1);
    conf.env
        .push(("NGX_POOL_TEST_PANIC".into(), entries.into()));
    conf.main = "env NGX_POOL_TEST_PANIC;".into();
    conf
}

/// nginx with one worker whose module entry points named in `entries` panic.
fn with_panics(entries: &str, http: &str, server: &str) -> Nginx {
    let mut ng = Nginx::start(faulty(entries, http, server));
    ng.allow("panic in the");
    ng
}

fn assert_same_worker_and_no_crash(ng: &Nginx, worker: u32) {
    assert_eq!(
        ng.worker_pids(),
        vec![worker],
        "the nginx worker was replaced"
    );
    let log = ng.log();
    assert!(!log.contains("exited on signal"), "{log}");
    assert_eq!(ng.get("/plain").status, 200);
}

#[test]
fn a_panic_in_the_content_body_or_status_handler_is_a_500_not_a_dead_worker() {
    let ng = with_panics(
        "content,body,status",
        "    pool p handler=builtin:echo workers=1;",
        "    location /p { pool_pass p; }\n    location = /status { pool_status; }",
    );
    let worker = ng.worker_pids()[0];
    assert_eq!(ng.get("/p").status, 500);
    assert_eq!(ng.get("/status").status, 500);
    assert_same_worker_and_no_crash(&ng, worker);
    let log = ng.log();
    for entry in ["content", "status"] {
        let line = format!("panic in the {entry} entry point at ngx-module/src/edge.rs:");
        assert!(log.contains(&line), "no \"{line}\" in:\n{log}");
    }
    assert!(log.contains("injected by NGX_POOL_TEST_PANIC=content; recovered"));
    ng.finish();
}

#[test]
fn a_panic_after_the_body_was_read_finalizes_the_request_once() {
    let ng = with_panics(
        "body",
        "    pool p handler=builtin:echo workers=1;",
        "    location /p { pool_pass p; }",
    );
    let worker = ng.worker_pids()[0];
    let r = request(ng.port, "POST", "/p", &[], &[7u8; 100_000]).unwrap();
    assert_eq!(r.status, 500);
    assert_same_worker_and_no_crash(&ng, worker);
    ng.finish();
}

#[test]
fn a_panic_in_the_event_handlers_leaves_requests_to_their_deadline_never_hanging() {
    // The eventfd handler panics: no completion is ever read, so each request ends at its
    // deadline (504), and the worker serves everything else meanwhile.
    let ng = with_panics(
        "eventfd",
        "    pool p handler=builtin:hello workers=1 timeout=1s;",
        "    location /p { pool_pass p; }",
    );
    let worker = ng.worker_pids()[0];
    assert_eq!(ng.get("/p").status, 504);
    assert_same_worker_and_no_crash(&ng, worker);
    ng.finish();
    // And if the deadline timer panics too, the request still gets an answer: 500.
    let ng = with_panics(
        "eventfd,timer",
        "    pool p handler=builtin:hello workers=1 timeout=1s;",
        "    location /p { pool_pass p; }",
    );
    let worker = ng.worker_pids()[0];
    assert_eq!(ng.get("/p").status, 500);
    assert_same_worker_and_no_crash(&ng, worker);
    ng.finish();
}

#[test]
fn a_panic_in_init_process_leaves_a_worker_that_serves_other_locations() {
    let mut conf = faulty(
        "init_process",
        "    pool p handler=builtin:hello workers=1;",
        "    location /p { pool_pass p; }",
    );
    conf.pools = 0; // the worker never attaches
    let mut ng = Nginx::start(conf);
    ng.allow("panic in the init_process entry point");
    ng.wait_for("the worker's init_process", |ng| {
        ng.log().contains("panic in the init_process entry point")
    });
    let worker = ng.worker_pids()[0];
    assert_eq!(ng.get("/plain").status, 200);
    assert_eq!(ng.get("/p").status, 503);
    assert_same_worker_and_no_crash(&ng, worker);
    ng.finish();
}

#[test]
fn a_panic_in_a_directive_fails_nginx_t_cleanly() {
    let conf = faulty(
        "directive",
        "    pool p handler=builtin:hello;",
        "    location /p { pool_pass p; }",
    );
    let (ok, out) = nginx_test_config(&conf);
    assert!(!ok, "{out}");
    assert!(out.contains("panic in the directive entry point"), "{out}");
    assert!(out.contains("test failed"), "{out}");
}

#[test]
fn a_nested_access_to_the_pools_state_is_a_logged_error_and_the_request_is_answered() {
    let mut ng = Nginx::start(faulty(
        "reenter",
        "    pool p handler=builtin:hello workers=1;",
        "    location /p { pool_pass p; }\n    location = /status { pool_status; }",
    ));
    ng.allow("the pools' state was wanted again while in use");
    let worker = ng.worker_pids()[0];
    for _ in 0..3 {
        assert_eq!(ng.get("/p").status, 500);
    }
    let log = ng.log();
    assert!(
        log.contains(
            "the pools' state was wanted again while in use, at ngx-module/src/request/admit.rs:"
        ),
        "{log}"
    );
    assert!(log.contains("the request could not be tracked"), "{log}");
    // Nothing is left behind: the withdrawn slots are freed by the worker woken for them.
    ng.wait_for("no slot in use", |ng| {
        ng.get("/status").json()["pools"][0]["slots"]["in_use"] == 0
    });
    assert_same_worker_and_no_crash(&ng, worker);
    ng.finish();
}

#[test]
fn overload_writes_a_line_a_second_not_a_line_a_request() {
    let mut ng = Nginx::start(Conf::new(
        "    pool tiny handler=builtin:sleep workers=1 queue=2;",
        "    location /s { pool_log_level warn; pool_pass tiny; }\n    \
         location = /status { pool_status; }",
    ));
    let port = ng.port;
    let statuses = parallel(400, 40, move |_| {
        request(port, "GET", "/s?ms=20", &[], b"").map_or(0, |r| r.status)
    });
    let rejected = statuses.iter().filter(|s| **s == 503).count() as u64;
    assert!(
        rejected > 50,
        "the pool was not overloaded: {rejected} of 400 got 503"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s != 503 && **s != 200).count(),
        0
    );
    // Every 503 is either a line of its own or counted in a summary line.
    ng.wait_for("every 503 accounted for in the log", |ng| {
        rejections_in_log(&ng.log(), "queue full (all slots in use)") == rejected
    });
    let log = ng.log();
    let lines = log.lines().filter(|l| l.contains("503")).count();
    assert!(
        lines < 20,
        "{lines} lines for {rejected} rejections:\n{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("queue full"))
            .all(|l| l.contains("[warn]")),
        "pool_log_level warn applies:\n{log}"
    );
    let j = ng.get("/status").json();
    assert_eq!(j["pools"][0]["counters"]["rejected_full"], rejected, "{j}");
    ng.finish();
}

#[test]
fn a_client_gone_mid_stream_is_abandoned_not_failed() {
    let mut ng = Nginx::start(Conf::new(
        "    pool big handler=builtin:stream workers=1;",
        "    location /big { pool_pass big; }\n    location = /status { pool_status; }",
    ));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.write_all(b"GET /big?bytes=1000000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    s.read_exact(&mut buf).unwrap();
    drop(s);
    ng.wait_for("the pool to let go of the request", |ng| {
        let j = ng.get("/status").json();
        j["pools"][0]["slots"]["in_use"] == 0
    });
    let c = ng.get("/status").json()["pools"][0]["counters"].clone();
    assert_eq!(c["failed"], 0, "nobody saw a failure: {c}");
    assert_eq!(c["abandoned"], 1, "{c}");
    ng.finish();
}

#[test]
fn poold_writes_the_same_local_time_as_nginx() {
    // Five hours east of UTC, with no time zone database needed (a POSIX TZ string).
    let mut conf = Conf::new(
        "    pool p handler=builtin:hello workers=1;",
        "    location /p { pool_pass p; }",
    );
    conf.env.push(("TZ".into(), "XYZ-5".into()));
    let ng = Nginx::start(conf);
    let log = ng.log();
    // Seconds of the day of the first line containing `needle` ("YYYY/MM/DD HH:MM:SS ...").
    let stamp = |needle: &str| -> i64 {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle}:\n{log}"));
        let hms: Vec<i64> = line[11..19]
            .split(':')
            .map(|n| n.parse().unwrap())
            .collect();
        hms[0] * 3600 + hms[1] * 60 + hms[2]
    };
    let nginx = stamp("started poold");
    let poold = stamp("poold \"p\": started: handler");
    let apart = (nginx - poold)
        .rem_euclid(86_400)
        .min((poold - nginx).rem_euclid(86_400));
    assert!(
        apart <= 60,
        "nginx and poold disagree on the time by {apart} s:\n{log}"
    );
    ng.finish();
}
