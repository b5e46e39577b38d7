//! Handler libraries through the ABI, in a real nginx with a real poold: the C example (built
//! here with `cc` against only include/ngx_pool.h), the Rust example on the SDK, per-request
//! parameters, a handler that breaks every rule, and libraries that must be refused.

use ngx_pool_tests::http::request;
use ngx_pool_tests::{
    build_c_handler, example_rust_handler, nginx_test_config, temp_prefix, Conf, Nginx,
};

fn fnv1a(data: &[u8]) -> String {
    let mut h: u64 = 1469598103934665603;
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(1099511628211);
    }
    format!("{h:016x}")
}

#[test]
fn the_c_example_echoes_a_parameter_streams_and_reads_the_body() {
    let libs = temp_prefix();
    let lib = build_c_handler("examples/handlers/c/hello.c", &libs);
    let ng = Nginx::start(Conf::new(
        &format!(
            "    pool c handler=dylib:{} \"handler_args=a b\" workers=2;",
            lib.display()
        ),
        "    location /c/ { pool_param X_USER alice; pool_pass c; }\n    \
         location /anon/ { pool_pass c; }",
    ));
    let r = ng.get("/c/hi");
    assert_eq!((r.status, r.text().as_str()), (200, "hello, alice\n"));
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    // A location without pool_param of its own does not get another location's.
    assert_eq!(ng.get("/anon/hi").text(), "hello, you\n");
    // 3 MB streamed in 64 KiB writes, with its Content-Length.
    let r = ng.get("/c/stream?bytes=3000000");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("3000000"));
    assert_eq!(r.body.len(), 3_000_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == b'a' + (i % 26) as u8));
    // A 300 KB body read as a stream (more than the queued window: the handler pulls the rest).
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = request(ng.port, "POST", "/c/body", &[], &body).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["length"], 300_000);
    assert_eq!(r.json()["fnv1a"], fnv1a(&body));
    assert!(
        ng.log()
            .contains("C example handler loaded (handler_args: \"a b\")"),
        "{}",
        ng.log()
    );
    ng.finish();
}

#[test]
fn the_rust_example_does_json_streams_and_turns_errors_and_panics_into_500() {
    let ng = Nginx::start(Conf::new(
        &format!(
            "    pool r handler=dylib:{} handler_args=greeting=hi workers=1;",
            example_rust_handler().display()
        ),
        "    location /r/ { pool_param X_USER bob; pool_pass r; }\n    \
         location = /status { pool_status; }",
    ));
    assert_eq!(ng.get("/r/hello").text(), "hi, bob\n");
    let sum = |ng: &Nginx| {
        let r = request(ng.port, "POST", "/r/sum", &[], br#"{"numbers":[1,2,3.5]}"#).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(
            (j["count"].as_u64(), j["sum"].as_f64()),
            (Some(3), Some(6.5))
        );
        j["worker"].as_u64().unwrap()
    };
    let worker = sum(&ng);
    let r = request(ng.port, "POST", "/r/sum", &[], b"{nope").unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("bad JSON"), "{}", r.text());
    assert_eq!(ng.get("/r/sum").status, 405);
    // Flushed line by line, 100 ms apart: streamed (chunked: no length was declared), whole.
    let r = ng.get("/r/lines?n=3&ms=100");
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(r.text(), "line 0\nline 1\nline 2\n");
    // An Err and a panic: 500 each, the reason in the error log, and the same worker (the pool
    // has one) answers the next request: no unwinding crossed the ABI.
    let r = ng.get("/r/error");
    assert_eq!(r.status, 500);
    let r = ng.get("/r/panic");
    assert_eq!(r.status, 500);
    assert_eq!(sum(&ng), worker, "the worker survived the panic");
    // Workers' lines reach the log through poold (their log_rate pipe): soon after the answers.
    let mut ng = ng;
    ng.wait_for("the panic's line", |ng| {
        ng.log().contains("was asked to panic")
    });
    let log = ng.log();
    assert!(
        log.contains("handler failed: the example handler was asked to fail"),
        "{log}"
    );
    assert!(
        log.contains(
            "handler \"example\" panicked in handle: the example handler was asked to panic"
        ),
        "{log}"
    );
    assert!(
        log.contains("example handler ready (greeting \"hi\")"),
        "{log}"
    );
    let j = ng.get("/status").json();
    assert_eq!(j["pools"][0]["counters"]["worker_exits"], 0);
    ng.finish();
}

#[test]
fn pool_param_with_variables_and_the_default_set_reach_the_handler() {
    let ng = Nginx::start(Conf::new(
        "    pool e handler=builtin:echo workers=1;\n    pool_param X_REAL $remote_addr:$server_port;",
        "    location /e/ { pool_pass e; }\n    \
         location /app/ { pool_param SCRIPT_NAME /app; pool_param X_TWO \"two words\"; pool_pass e; }",
    ));
    let j = ng.get("/e/x?y=1").json();
    let p = &j["params"];
    let port = ng.port.to_string();
    assert_eq!(p["X_REAL"], format!("127.0.0.1:{port}"), "{j}");
    assert_eq!(p["SERVER_PORT"], port);
    assert_eq!(p["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(p["REQUEST_SCHEME"], "http");
    assert_eq!(p["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(p["REMOTE_PORT"], j["client_port"].to_string(), "{j}");
    assert_ne!(j["client_port"], 0);
    assert_eq!(p["DOCUMENT_URI"], "/e/x");
    assert_eq!(p["SCRIPT_NAME"], "");
    assert_eq!(p["SERVER_ADDR"], "127.0.0.1");
    assert!(p["SERVER_NAME"].is_string());
    // Its own pool_params replace the inherited ones (as uwsgi_param), and one of the
    // defaults' names overrides the default.
    let j = ng.get("/app/page").json();
    let p = &j["params"];
    assert_eq!(p["SCRIPT_NAME"], "/app", "{j}");
    assert_eq!(p["X_TWO"], "two words");
    assert!(p.get("X_REAL").is_none(), "{j}");
    assert_eq!(p["REMOTE_ADDR"], "127.0.0.1");
    ng.finish();
}

#[test]
fn a_handler_breaking_the_rules_gets_the_right_status_and_a_log_line() {
    let libs = temp_prefix();
    let lib = build_c_handler("tests/handlers/rules.c", &libs);
    let mut ng = Nginx::start(Conf::new(
        // One worker: the stale-handle check needs the same process for both requests.
        &format!("    pool rules handler=dylib:{} workers=1;", lib.display()),
        "    location /rules/ { pool_pass rules; }\n    location = /status { pool_status; }",
    ));
    for (path, status) in [
        ("/rules/none", 502),
        ("/rules/error", 500),
        ("/rules/overrun", 502),
        ("/rules/short", 502),
        ("/rules/early", 502),
        ("/rules/inject", 500),
        ("/rules/ok", 200),
    ] {
        assert_eq!(ng.get(path).status, status, "{path}");
    }
    let r = ng.get("/rules/statuses");
    assert_eq!(
        r.text(),
        "start_status_42=-1 header_past_end=-6 header_null_out=-1 unknown_param_absent=1"
    );
    // A second head after the first was flushed: the response is cut short (no final chunk),
    // or, if the failure reached nginx before it sent the head, 502.
    match request(ng.port, "GET", "/rules/twice", &[], b"") {
        Err(_) => {}
        Ok(r) => assert_eq!(r.status, 502, "a cut-short response parsed whole: {r:?}"),
    }
    // A handle kept past its request is refused, not dereferenced.
    assert_eq!(ng.get("/rules/keep").status, 200);
    let r = ng.get("/rules/stale");
    assert_eq!(r.text(), "stale method absent, write -2");
    // A segfault kills only its worker: 502, and the pool serves on.
    assert_eq!(ng.get("/rules/segv").status, 502);
    assert_eq!(ng.get("/rules/ok").status, 200);
    // Workers' lines reach the log through poold (their log_rate pipe): soon after the answers.
    ng.wait_for("the twice-started response's line", |ng| {
        ng.log().contains("started its response twice")
    });
    let log = ng.log();
    for line in [
        "handler \"rules\" returned without a response to \"/rules/none\"; 502",
        "handler \"rules\" failed on \"/rules/error\" with status -100; 500",
        "handler \"rules\" wrote past its Content-Length of 5 on \"/rules/overrun\"; 502",
        "handler \"rules\" declared a Content-Length of 10 for \"/rules/short\" and wrote 5 bytes; 502",
        "handler \"rules\" wrote its body before starting the response on \"/rules/early\"; 502",
        "(it gave the header \"X-A\" a name or value HTTP does not allow); 500",
        "handler \"rules\" started its response twice on \"/rules/twice\"; the response is cut short",
        "killed by SIGSEGV",
    ] {
        assert!(log.contains(line), "no \"{line}\" in the log:\n{log}");
    }
    ng.wait_for("the worker back", |ng| {
        let j = ng.get("/status").json();
        j["pools"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "idle")
            .count()
            == 1
    });
    let j = ng.get("/status").json();
    assert_eq!(j["pools"][0]["slots"]["in_use"], 0, "nothing leaked: {j}");
    assert_eq!(j["pools"][0]["chunks"]["in_use"], 0, "nothing leaked: {j}");
    ng.finish();
}

#[test]
fn libraries_that_cannot_serve_are_refused_with_one_clear_line_and_503() {
    let libs = temp_prefix();
    let wrong = build_c_handler("tests/handlers/wrong_abi.c", &libs);
    let nosym = build_c_handler("tests/handlers/no_symbol.c", &libs);
    let rules = build_c_handler("tests/handlers/rules.c", &libs);
    let mut conf = Conf::new(
        &format!(
            "    pool wrong handler=dylib:{} workers=1;\n    pool nosym handler=dylib:{} workers=1;\n    \
             pool badinit handler=dylib:{} handler_args=fail-init workers=1;\n    \
             pool ok handler=builtin:hello workers=1;",
            wrong.display(),
            nosym.display(),
            rules.display()
        ),
        "    location /wrong { pool_pass wrong; }\n    location /nosym { pool_pass nosym; }\n    \
         location /badinit { pool_pass badinit; }\n    location /ok { pool_pass ok; }",
    );
    conf.pools = 1; // only `ok` can be attached to
    let mut ng = Nginx::start(conf);
    for path in ["/wrong", "/nosym", "/badinit"] {
        let r = ng.get(path);
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.header("Retry-After"), Some("1"));
    }
    assert_eq!(
        ng.get("/ok").status,
        200,
        "the other pools are not affected"
    );
    let log = ng.log();
    let w = wrong.display();
    for line in [
        format!(
            "handler library {w}: built for handler ABI version 2.0; this poold speaks 1.{}",
            ngx_pool_abi::NGX_POOL_ABI_MINOR
        ),
        format!(
            "handler library {}: does not export ngx_pool_handler_v1",
            nosym.display()
        ),
        format!("dylib:{}: init failed with status -100", rules.display()),
        "its handler failed to load (see above): the pool answers 503 while poold retries".into(),
    ] {
        assert!(log.contains(&line), "no \"{line}\" in:\n{log}");
    }
    // Retried with a growing delay, never a crash loop.
    ng.wait_for("three retries of the wrong library", |ng| {
        ng.log()
            .lines()
            .filter(|l| {
                l.contains("poold \"wrong\"")
                    && l.contains("could not load its handler; trying again in")
            })
            .count()
            >= 3
    });
    let delays: Vec<u64> = ng
        .log()
        .lines()
        .filter(|l| l.contains("poold \"wrong\"") && l.contains("trying again in"))
        .filter_map(|l| {
            l.split("trying again in ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(delays.windows(2).all(|d| d[1] > d[0]), "delays {delays:?}");
    assert!(
        !ng.log().contains("no socket at"),
        "nginx waited for a socket that never came"
    );
    ng.finish();
}

#[test]
fn nginx_t_names_a_missing_handler_library() {
    let (ok, out) = nginx_test_config(&Conf::new(
        "    pool p handler=dylib:/nonexistent/libnothere.so;",
        "    location / { pool_pass p; }",
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains("handler library \"/nonexistent/libnothere.so\": No such file or directory"),
        "{out}"
    );
    assert!(
        out.contains("nginx.conf:"),
        "names the file and line: {out}"
    );
    for (bad, reason) in [
        (
            "handler=lua:x",
            "expected builtin:NAME, dylib:PATH, wsgi:MODULE:CALLABLE or asgi:MODULE:APP",
        ),
        ("handler=dylib:", "needs a path"),
    ] {
        let (ok, out) = nginx_test_config(&Conf::new(
            &format!("    pool p {bad};"),
            "    location / { pool_pass p; }",
        ));
        assert!(!ok && out.contains(reason), "{bad}: {out}");
    }
    let (ok, out) = nginx_test_config(&Conf::new(
        "    pool p handler=builtin:echo;",
        "    location / { pool_param \"BAD=NAME\" x; pool_pass p; }",
    ));
    assert!(!ok && out.contains("invalid pool_param name"), "{out}");
}

#[test]
fn a_reload_to_a_library_that_fails_keeps_the_running_generation() {
    let libs = temp_prefix();
    let rules = build_c_handler("tests/handlers/rules.c", &libs);
    let http = |args: &str| {
        format!(
            "    pool p handler=dylib:{} {args} workers=1;",
            rules.display()
        )
    };
    let server = "    location /rules/ { pool_pass p; }";
    let mut ng = Nginx::start(Conf::new(&http(""), server));
    assert_eq!(ng.get("/rules/ok").status, 200);
    ng.allow("keeps running with its previous settings");
    ng.reload(Some(Conf::new(&http("handler_args=fail-init"), server)));
    assert_eq!(ng.get("/rules/ok").status, 200, "{}", ng.log());
    assert!(ng
        .log()
        .contains("its handler failed to load (the reason is in the error log above); the pool keeps running with its previous settings"));
    // poold's own line says the same, not that the pool answers 503 (it does not).
    let log = ng.log();
    assert!(
        log.contains(
            "this new generation does not start: the running one keeps serving with the previous settings"
        ),
        "{log}"
    );
    assert!(
        !log.contains("the pool answers 503 and poold tries again"),
        "{log}"
    );
    ng.finish();
}

#[test]
fn a_library_built_for_abi_1_0_loads_and_its_missing_fork_hooks_are_not_read() {
    let libs = temp_prefix();
    let lib = build_c_handler("tests/handlers/abi_1_0.c", &libs);
    let ng = Nginx::start(Conf::new(
        &format!("    pool old handler=dylib:{} workers=2;", lib.display()),
        "    location / { pool_pass old; }",
    ));
    // Had poold called the hooks past the declared size, no worker would have been forked.
    for _ in 0..4 {
        let r = ng.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "abi 1.0\n"));
    }
    ng.finish();
}

#[test]
fn a_rust_handler_fans_out_over_the_pool_and_completes_at_one_worker_too() {
    for workers in [4, 1] {
        let mut ng = Nginx::start(Conf::new(
            &format!(
                "    pool r handler=dylib:{} workers={workers};",
                example_rust_handler().display()
            ),
            "    location /r/ { pool_pass r; }\n    location = /status { pool_status; }",
        ));
        // 1² + .. + 12² = 650, each task 30 ms of work.
        // With idle workers the tasks spread; a pool starved of CPU for a moment (tests run side
        // by side) leaves them to their caller, as it should: spread at least once in a few tries.
        let mut ran_on = Vec::new();
        for _ in 0..5 {
            let r = ng.get("/r/squares?n=12&ms=30");
            assert_eq!(r.status, 200, "{}", r.text());
            let j = r.json();
            assert_eq!(j["sum"], 650);
            ran_on.push(j["workers"].as_u64().unwrap());
            if workers == 1 || ran_on.last() >= Some(&2) {
                break;
            }
        }
        if workers == 1 {
            assert_eq!(ran_on, [1], "the caller ran every task itself");
        } else {
            assert!(
                ran_on.iter().any(|w| *w >= 2),
                "the tasks never spread over the pool: workers per try {ran_on:?}"
            );
        }
        // Every worker fanning out at once still completes.
        let all: Vec<_> = (0..workers)
            .map(|_| {
                let port = ng.port;
                std::thread::spawn(move || {
                    request(port, "GET", "/r/squares?n=12&ms=10", &[], b"").unwrap()
                })
            })
            .collect();
        for t in all {
            let r = t.join().unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["sum"], 650);
        }
        // nginx has the whole answer once its declared length is in; the worker gives its
        // tasks' slots back just after.
        ng.wait_for("the tasks' slots to be back", |ng| {
            ng.pool_status("r")["slots"]["in_use"] == 0
        });
        let s = ng.get("/status").json();
        let c = &s["pools"][0]["counters"];
        let (submitted, done, inline) = (
            c["tasks_submitted"].as_u64().unwrap(),
            c["tasks_completed"].as_u64().unwrap(),
            c["tasks_inline"].as_u64().unwrap(),
        );
        assert_eq!(
            done + inline,
            12 * (workers as u64 + ran_on.len() as u64),
            "every task ran once: {c}"
        );
        assert!(submitted >= done, "{c}");
        assert_eq!(c["tasks_failed"], 0, "{c}");
        assert_eq!(s["pools"][0]["slots"]["in_use"], 0, "{s}");
        assert_eq!(s["pools"][0]["chunks"]["in_use"], 0, "{s}");
        ng.finish();
    }
}
