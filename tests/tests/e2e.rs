//! End-to-end: HTTP through nginx, the module, shared memory and a pool worker, and back.

use ngx_pool_tests::http::request;
use ngx_pool_tests::{parallel, procs, Conf, Nginx};
use sha2::{Digest, Sha256};
use std::collections::HashSet;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn echo_conf(extra_http: &str) -> Conf {
    Conf::new(
        &format!("    pool app handler=builtin:echo workers=2 timeout=10s;\n    client_max_body_size 64m;\n{extra_http}"),
        "    location /echo { pool_pass app; }",
    )
}

#[test]
fn get_head_post_round_trip_with_headers_and_bodies() {
    let ng = Nginx::start(echo_conf(""));
    let big = "v".repeat(6000);
    let r = request(
        ng.port,
        "GET",
        "/echo/a?x=1&y=2",
        &[("X-Rep", "one"), ("X-Rep", "two"), ("X-Big", &big)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["method"], "GET");
    assert_eq!(j["uri"], "/echo/a?x=1&y=2");
    assert_eq!(j["version"], "1.1");
    assert_eq!(j["client"], "127.0.0.1");
    let headers: Vec<(String, String)> = j["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
        .collect();
    let reps: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "X-Rep")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(reps, ["one", "two"], "repeated headers kept in order");
    assert!(
        headers.iter().any(|(n, v)| n == "X-Big" && *v == big),
        "large header preserved"
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert!(r.header("X-Pool-Worker").is_some());

    let h = request(ng.port, "HEAD", "/echo/h", &[], b"").unwrap();
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert!(h.header("Content-Length").is_some_and(|l| l != "0"));

    // In memory (below client_body_buffer_size) and from nginx's temp file (above it).
    for size in [100usize, 3 << 20] {
        let body: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let r = request(
            ng.port,
            "POST",
            "/echo/p",
            &[("Content-Type", "application/octet-stream")],
            &body,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        assert_eq!(j["method"], "POST");
        assert_eq!(j["body_length"], size);
        assert_eq!(j["body_sha256"], hex(&Sha256::digest(&body)));
    }
    assert!(
        ng.log().contains("buffered to a temporary file"),
        "the large body went through a temp file"
    );
    ng.finish();
}

#[test]
fn five_hundred_concurrent_requests_get_their_own_answers() {
    let ng = Nginx::start(echo_conf(""));
    let port = ng.port;
    let results = parallel(500, 500, move |i| {
        let tag = format!("req-{i}");
        let body = tag.repeat(i % 7 + 1);
        let r = request(
            port,
            "POST",
            &format!("/echo/{i}?tag={tag}"),
            &[("X-Tag", &tag)],
            body.as_bytes(),
        );
        (i, tag, body, r)
    });
    let mut pids = HashSet::new();
    for (i, tag, body, r) in results {
        let r = r.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        let j = r.json();
        assert_eq!(j["uri"], format!("/echo/{i}?tag={tag}"));
        assert!(j["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "X-Tag" && h[1] == tag.as_str()));
        assert_eq!(j["body_sha256"], hex(&Sha256::digest(body.as_bytes())));
        pids.insert(j["pid"].as_u64().unwrap());
    }
    assert!(pids.len() <= 2, "only the 2 pool workers answer: {pids:?}");
    ng.finish();
}

#[test]
fn pool_workers_serve_in_parallel() {
    let ng = Nginx::start(Conf::new(
        "    pool naps handler=builtin:sleep workers=3;",
        "    location /sleep { pool_pass naps; }",
    ));
    let port = ng.port;
    // Nine 200 ms requests at once on three workers: every worker must take some.
    let pids: HashSet<String> = parallel(9, 9, move |_| {
        let r = request(port, "GET", "/sleep?ms=200", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        r.header("X-Pool-Worker").unwrap().to_string()
    })
    .into_iter()
    .collect();
    assert_eq!(
        pids.len(),
        3,
        "requests ran on distinct pool workers: {pids:?}"
    );
    ng.finish();
}

#[test]
fn process_budget_is_exact_under_load() {
    let ng = Nginx::start(
        Conf::new(
            "    pool app handler=builtin:sleep workers=3;",
            "    location /sleep { pool_pass app; }",
        )
        .workers(2),
    );
    let port = ng.port;
    let load = std::thread::spawn(move || {
        parallel(40, 20, move |_| {
            request(port, "GET", "/sleep?ms=50", &[], b"")
                .unwrap()
                .status
        })
    });
    let master = ng.master_pid();
    let children = procs::children(master);
    let workers: Vec<u32> = children
        .iter()
        .copied()
        .filter(|p| procs::cmdline(*p).contains("nginx: worker"))
        .collect();
    let watchdogs = ng.watchdogs();
    let poolds = ng.poolds();
    assert_eq!(workers.len(), 2, "nginx workers");
    assert_eq!(watchdogs.len(), 1, "one watchdog");
    assert_eq!(poolds.len(), 1, "one poold");
    assert_eq!(ng.spares().len(), 1, "the watchdog's spare");
    assert_eq!(procs::children(poolds[0]).len(), 3, "pool workers");
    assert_eq!(
        procs::descendants(master).len(),
        2 + 1 + 1 + 1 + 3,
        "nothing else: 2 nginx workers, the pool's watchdog, its spare, poold and 3 pool workers"
    );
    assert!(load.join().unwrap().iter().all(|s| *s == 200));
    ng.finish();
}

#[test]
fn deadline_gives_504_and_the_pool_keeps_serving() {
    let mut ng = Nginx::start(Conf::new(
        "    pool naps handler=builtin:sleep workers=1 timeout=300ms;",
        "    location /sleep { pool_pass naps; }",
    ));
    let r = ng.get("/sleep?ms=60000&stubborn=1");
    assert_eq!(r.status, 504);
    assert!(
        ng.log().contains("timed out after 300 ms"),
        "nginx logs the deadline"
    );
    // poold stops the stuck worker and forks a fresh one, which serves the next request.
    ng.wait_for("poold to replace the stuck worker", |ng| {
        let log = ng.log();
        log.contains("past the pool's timeout of 300 ms; SIGTERM")
            && log.contains("killed by SIGTERM")
    });
    assert_eq!(ng.get("/sleep?ms=1").status, 200);
    ng.finish();
}

#[test]
fn pool_timeout_gives_one_location_its_own_deadline_under_load() {
    let mut ng = Nginx::start(Conf::new(
        "    pool naps handler=builtin:sleep workers=3 timeout=60s;",
        "    location /sleep { pool_pass naps; }\n    location /quick { pool_pass naps; pool_timeout 300ms; }",
    ));
    // Load on the pool's own deadline meanwhile: requests of 400 ms, past the location's.
    let port = ng.port;
    let load = std::thread::spawn(move || {
        parallel(12, 2, move |_| {
            request(port, "GET", "/sleep?ms=400", &[], b"")
                .unwrap()
                .status
        })
    });
    let r = ng.get("/quick/x?ms=60000&stubborn=1");
    assert_eq!(r.status, 504);
    assert!(ng.log().contains("timed out after 300 ms"));
    // poold enforces the location's deadline too: the stuck worker is replaced.
    ng.wait_for("poold to stop the worker past pool_timeout", |ng| {
        ng.log()
            .contains("past the request's pool_timeout of 300 ms; SIGTERM")
    });
    assert!(load.join().unwrap().iter().all(|s| *s == 200));
    assert_eq!(ng.get("/quick/x?ms=1").status, 200);
    ng.finish();
}

#[test]
fn client_disconnect_is_noticed_while_waiting() {
    use std::io::Write;
    // One worker; a later request may wait 5 s for it at most.
    let ng = Nginx::start(Conf::new(
        "    pool naps handler=builtin:sleep workers=1 queue_timeout=5s;",
        "    location /sleep { pool_pass naps; }",
    ));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.write_all(b"GET /sleep?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Wait until the request reached the pool (the worker is busy), then hang up.
    let mut ng = ng;
    let poold = ng.poold();
    let worker = procs::children(poold)[0];
    ng.wait_for("the pool worker to run the request", |_| {
        procs::wchan(worker).contains("sleep")
    });
    drop(s);
    ng.wait_for("nginx to notice the client left", |ng| {
        ng.log().contains("client prematurely closed connection")
    });
    // The handler sees the cancellation and stops: the worker is free long before its minute
    // is up, so the next request is served instead of hitting queue_timeout.
    assert_eq!(ng.get("/sleep?ms=1").status, 200);
    ng.finish();
}

#[test]
fn a_worker_dying_mid_request_fails_that_request_alone_under_load() {
    let mut ng = Nginx::start(Conf::new(
        "    pool boom handler=builtin:crash workers=3 timeout=10s;",
        "    location /crash { pool_pass boom; }\n    location = /status { pool_status; }",
    ));
    // Healthy requests on the same pool, from 4 clients, while workers die under them.
    let port = ng.port;
    let load = std::thread::spawn(move || {
        parallel(200, 4, move |_| {
            request(port, "GET", "/crash?how=none&ms=5", &[], b"")
                .unwrap()
                .status
        })
    });
    let mut last_death = std::time::Instant::now();
    for how in ["abort", "panic", "segv", "abort", "panic", "segv"] {
        let r = ng.get(&format!("/crash?how={how}"));
        // A panic is caught by the SDK at the ABI boundary: 500, and the worker goes on.
        let expected = if how == "panic" { 500 } else { 502 };
        if how != "panic" {
            last_death = std::time::Instant::now();
        }
        assert_eq!(r.status, expected, "how={how}");
    }
    let healthy = load.join().unwrap();
    assert!(
        healthy.iter().all(|s| *s == 200),
        "a healthy request failed: {:?}",
        healthy.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let log = ng.log();
    assert!(log.contains("killed by SIGABRT"));
    assert!(log.contains("killed by SIGSEGV"));
    assert!(
        log.contains("handler \"crash\" panicked in handle: builtin:crash was asked to panic"),
        "{log}"
    );
    assert_eq!(
        log.matches("killed by").count(),
        4,
        "only the aborts and segfaults killed workers"
    );
    // Every death was replaced: three workers serve again.
    ng.wait_for("three live workers", |ng| {
        let j = ng.get("/status").json();
        j["pools"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "idle" || w["state"] == "busy")
            .count()
            == 3
    });
    eprintln!(
        "a replacement serves {:?} after the last death's 502",
        last_death.elapsed()
    );
    let c = ng.get("/status").json()["pools"][0]["counters"].clone();
    assert!(c["respawns"].as_u64().unwrap() >= 4, "{c}");
    assert_eq!(c["failed"], 6, "{c}");
    ng.finish();
}

#[test]
fn a_worker_that_dies_at_start_is_respawned_with_growing_delays() {
    let mut conf = Conf::new(
        "    pool boom handler=builtin:crash workers=1;",
        "    location /crash { pool_pass boom; }",
    );
    conf.env
        .push(("NGX_POOL_CRASH_AT_START".into(), "1".into()));
    let mut ng = Nginx::start(conf);
    let started = std::time::Instant::now();
    ng.wait_for("the respawn delay to reach 800 ms", |ng| {
        ng.log().contains("respawn in 800 ms")
    });
    let log = ng.log();
    for ms in [100, 200, 400, 800] {
        assert!(log.contains(&format!("respawn in {ms} ms")), "{log}");
    }
    // No fork bomb: a handful of starts in that time, not thousands.
    let deaths = log.matches("killed by SIGABRT").count();
    eprintln!(
        "{deaths} deaths in {:?} before the delay reached 800 ms",
        started.elapsed()
    );
    assert!(deaths <= 8, "{deaths} deaths");
    ng.finish();
}

#[test]
fn idle_pool_uses_no_cpu() {
    let ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:echo workers=2;",
        "    location /echo { pool_pass app; }",
    ));
    assert_eq!(ng.get("/echo").status, 200);
    let poold = ng.poold();
    let mut pids = procs::children(poold);
    pids.push(poold);
    let before: u64 = pids.iter().map(|p| procs::cpu_ticks(*p)).sum();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let after: u64 = pids.iter().map(|p| procs::cpu_ticks(*p)).sum();
    // A spinning process would burn ~150 ticks in 1.5 s; allow one tick of accounting noise.
    assert!(
        after - before <= 1,
        "idle pool used {} ticks",
        after - before
    );
    ng.finish();
}

#[test]
fn status_reports_workers_counters_and_no_leaks() {
    let ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:echo workers=2;",
        "    location /echo { pool_pass app; }\n    location = /status { pool_status; }",
    ));
    let port = ng.port;
    let ok = parallel(50, 10, move |i| {
        request(port, "POST", "/echo", &[], format!("{i}").as_bytes())
            .unwrap()
            .status
    });
    assert!(ok.iter().all(|s| *s == 200));
    let s = ng.get("/status");
    assert_eq!(s.status, 200);
    assert_eq!(s.header("Content-Type"), Some("application/json"));
    let j = s.json();
    let pool = &j["pools"][0];
    assert_eq!(pool["name"], "app");
    assert_eq!(pool["attached"], true);
    let poold = ng.poold();
    assert_eq!(pool["poold_pid"], poold);
    let mut pids: Vec<u64> = pool["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    let mut real: Vec<u64> = procs::children(poold).into_iter().map(u64::from).collect();
    real.sort();
    assert_eq!(pids, real, "status lists the live pool workers");
    let served: u64 = pool["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 50);
    assert_eq!(pool["counters"]["accepted"], 50);
    assert_eq!(pool["counters"]["completed"], 50);
    assert_eq!(pool["slots"]["in_use"], 0, "no slot leaked");
    assert_eq!(pool["chunks"]["in_use"], 0, "no chunk leaked");
    let p = ng.get("/status?format=prometheus");
    let text = String::from_utf8_lossy(&p.body);
    assert!(
        text.contains("ngx_pool_accepted_total{pool=\"app\"} 50"),
        "{text}"
    );
    assert!(text.contains("ngx_pool_workers{pool=\"app\"} 2"), "{text}");
    ng.finish();
}

#[test]
fn what_a_handler_forks_dies_with_its_worker() {
    let mut ng = Nginx::start(Conf::new(
        "    pool sp handler=builtin:spawn workers=1;",
        "    location /spawn { pool_pass sp; }",
    ));
    let r = ng.get("/spawn");
    assert_eq!(r.status, 200);
    let grandchild: u32 = String::from_utf8_lossy(&r.body).trim().parse().unwrap();
    assert!(procs::alive(grandchild));
    let poold = ng.poold();
    let worker = procs::children(poold)
        .into_iter()
        .find(|p| *p != grandchild)
        .unwrap();
    procs::kill(worker, libc::SIGKILL);
    ng.wait_for("the handler's child to die with its worker", |_| {
        !procs::alive(grandchild)
    });
    ng.wait_for("a replacement worker", |_| {
        procs::children(poold).len() == 1
    });
    ng.finish();
}

#[test]
fn queue_timeout_gives_503_to_a_request_no_worker_took() {
    let mut ng = Nginx::start(Conf::new(
        "    pool naps handler=builtin:sleep workers=1 queue_timeout=200ms timeout=10s;",
        "    location /sleep { pool_pass naps; }\n    location = /status { pool_status; }",
    ));
    let port = ng.port;
    let busy = std::thread::spawn(move || {
        request(port, "GET", "/sleep?ms=1500", &[], b"")
            .unwrap()
            .status
    });
    ng.wait_for("the only worker to be busy", |ng| {
        ng.get("/status").json()["pools"][0]["workers"][0]["state"] == "busy"
    });
    // A body, so the queued request holds arena chunks: the withdrawal frees them at once,
    // while its slot waits in the queue for the worker to pop it.
    let r = request(port, "POST", "/sleep?ms=1", &[], &[b'x'; 40_000]).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(ng.log().contains("within queue_timeout (200 ms); 503"));
    let pool = ng.get("/status").json()["pools"][0].clone();
    assert_eq!(
        pool["slots"]["in_use"], 2,
        "the withdrawn slot is still queued"
    );
    assert_eq!(
        pool["chunks"]["in_use"], 1,
        "only the running request's head holds a chunk: {pool}"
    );
    assert_eq!(
        busy.join().unwrap(),
        200,
        "the running request is not cut by queue_timeout"
    );
    let j = ng.get("/status").json();
    assert_eq!(j["pools"][0]["counters"]["queue_timeouts"], 1);
    ng.wait_for("the withdrawn slot to be released", |ng| {
        ng.get("/status").json()["pools"][0]["slots"]["in_use"] == 0
    });
    ng.finish();
}

#[test]
fn max_requests_recycles_workers_without_failing_a_request() {
    let mut ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:echo workers=2 max_requests=20;",
        "    location /echo { pool_pass app; }\n    location = /status { pool_status; }",
    ));
    let port = ng.port;
    // Meanwhile, watch capacity: a retiring worker leaves only once its replacement is up, so
    // at least 2 workers are idle or busy at every look.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut lowest, mut looks) = (usize::MAX, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let j = request(port, "GET", "/status", &[], b"").unwrap().json();
                let serving = j["pools"][0]["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|w| w["state"] == "idle" || w["state"] == "busy")
                    .count();
                lowest = lowest.min(serving);
                looks += 1;
            }
            (lowest, looks)
        })
    };
    let results = parallel(300, 10, move |i| {
        request(port, "POST", "/echo", &[], format!("{i}").as_bytes())
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (lowest, looks) = watch.join().unwrap();
    eprintln!(
        "{looks} looks at the pool during recycling: never fewer than {lowest} workers serving"
    );
    assert!(looks > 10);
    assert!(lowest >= 2, "capacity dipped to {lowest} worker(s)");
    let mut pids = HashSet::new();
    for r in results {
        let r = r.expect("request");
        assert_eq!(r.status, 200);
        pids.insert(r.json()["pid"].as_u64().unwrap());
    }
    // 300 requests at 20-22 per worker, plus what a retiring worker serves while its
    // replacement starts (a few, or dozens when this busy machine is slow to run poold): at
    // least 4 workers served.
    assert!(pids.len() >= 4, "only {} distinct workers", pids.len());
    let j = ng.get("/status").json();
    let c = &j["pools"][0]["counters"];
    assert!(c["recycles"].as_u64().unwrap() >= 3, "{c}");
    assert_eq!(c["failed"], 0);
    ng.wait_for("the last retiring worker to leave", |ng| {
        ng.get("/status").json()["pools"][0]["workers"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    assert!(ng.log().contains("its replacement already serves"));
    ng.finish();
}

/// Private resident memory (KiB) of the nginx workers, poold and its pool workers.
fn private_kib(ng: &Nginx) -> Vec<(u32, u64)> {
    let mut pids = ng.worker_pids();
    for p in ng.poolds() {
        pids.push(p);
        pids.extend(procs::children(p));
    }
    pids.into_iter().map(|p| (p, procs::rss_kib(p).0)).collect()
}

#[test]
fn memory_does_not_grow_with_offered_load() {
    // A small pool (2 workers, 8 waiting) under far more concurrent requests than it admits:
    // the excess gets 503 at once, and no process grows with the load.
    let mut ng = Nginx::start(Conf::new(
        "    pool naps handler=builtin:sleep workers=2 queue=8 timeout=10s;",
        "    location /sleep { pool_pass naps; }\n    location = /status { pool_status; }",
    ));
    let port = ng.port;
    let offer = move |requests: usize, clients: usize| {
        let statuses = parallel(requests, clients, move |_| {
            request(port, "GET", "/sleep?ms=20", &[], b"")
                .unwrap()
                .status
        });
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let refused = statuses.iter().filter(|s| **s == 503).count();
        assert_eq!(ok + refused, requests, "only 200 or 503: {statuses:?}");
        (ok, refused)
    };
    // Warm up at the pool's own size, then measure after a moderate and after a 10x overload.
    offer(100, 10);
    let (_, refused_1) = offer(400, 40);
    let before = private_kib(&ng);
    let (ok_2, refused_2) = offer(4000, 400);
    let after = private_kib(&ng);
    eprintln!("overload: {ok_2} served, {refused_2} refused (503) of 4000 from 400 clients; before {refused_1} refused of 400");
    assert!(refused_2 > 0, "the load exceeded the pool");
    let status = ng.get("/status").json();
    let pool = &status["pools"][0];
    assert_eq!(
        pool["slots"]["total"], 10,
        "admission is bounded by workers + queue"
    );
    assert!(pool["counters"]["rejected_full"].as_u64().unwrap() >= refused_2 as u64);
    for ((pid, b), (_, a)) in before.iter().zip(&after) {
        eprintln!("pid {pid}: private {b} KiB -> {a} KiB");
        assert!(
            *a <= b + 2048,
            "pid {pid} grew from {b} KiB to {a} KiB under 10x the load"
        );
    }
    ng.wait_for("the pool to drain", |ng| {
        ng.get("/status").json()["pools"][0]["slots"]["in_use"] == 0
    });
    ng.finish();
}

#[test]
fn a_dynamic_pool_grows_under_a_burst_and_shrinks_back_when_idle() {
    let mut ng = Nginx::start(Conf::new(
        "    pool dyn handler=builtin:sleep workers=1-3 idle_timeout=1s queue=64 timeout=30s;",
        "    location /sleep { pool_pass dyn; }\n    location = /status { pool_status; }",
    ));
    let workers = |ng: &Nginx| {
        ng.get("/status").json()["pools"][0]["workers"]
            .as_array()
            .map_or(0, |w| w.len())
    };
    assert_eq!(workers(&ng), 1, "starts at MIN");
    // A burst of 9 requests of 600 ms: requests wait, the pool grows to MAX (never more).
    let port = ng.port;
    let burst: Vec<_> = (0..9)
        .map(|_| {
            std::thread::spawn(move || {
                request(port, "GET", "/sleep?ms=600", &[], b"")
                    .unwrap()
                    .status
            })
        })
        .collect();
    let mut peak = 0;
    ng.wait_for("the pool to grow to 3", |ng| {
        peak = peak.max(workers(ng));
        peak >= 3
    });
    let statuses: Vec<u16> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(workers(&ng) <= 3, "above MAX");
    // Idle: back to MIN, one idle_timeout at a time, with no failed request meanwhile.
    ng.wait_for("the pool to shrink to 1", |ng| workers(ng) == 1);
    assert_eq!(ng.get("/sleep?ms=1").status, 200);
    let log = ng.log();
    assert!(
        log.contains("the pool grows to 3 workers (at most 3)"),
        "{log}"
    );
    assert!(
        log.contains("the pool shrinks to 1 workers (at least 1)"),
        "{log}"
    );
    assert!(log.contains("stopped after idle_timeout"), "{log}");
    ng.finish();
}
