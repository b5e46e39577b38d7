//! Reload, quit and external mode against the real nginx.

use ngx_pool_tests::http::request;
use ngx_pool_tests::load::{Load, LoadRun};
use ngx_pool_tests::{free_port, procs, temp_prefix, Conf, ExternalPoold, Nginx, READY_TIMEOUT};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn reload_under_a_stream_of_requests_fails_none() {
    let mut ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:echo workers=2;",
        "    location /echo { pool_pass app; }",
    ));
    let sock = format!("{}/logs/pool-app.sock", ng.dir.display());
    let poold_before = procs::with_arg_containing(&sock);
    let stop = Arc::new(AtomicBool::new(false));
    let port = ng.port;
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut bad) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match request(port, "GET", "/echo/r", &[], b"") {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => bad.push(format!("status {}", r.status)),
                        Err(e) => bad.push(e.to_string()),
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    for _ in 0..3 {
        ng.reload(None);
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for s in streams {
        let (ok, bad) = s.join().unwrap();
        assert!(bad.is_empty(), "failed requests during reload: {bad:?}");
        total += ok;
    }
    assert!(total > 0);
    assert_eq!(
        procs::with_arg_containing(&sock),
        poold_before,
        "an unchanged pool keeps its poold"
    );
    ng.finish(); // quit: checks no poold, pool worker or socket is left
}

#[test]
fn quit_leaves_no_process_and_no_socket() {
    let ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:echo workers=3;",
        "    location /echo { pool_pass app; }",
    ));
    let dir = ng.dir.display().to_string();
    // The master (-p DIR), the pool's watchdog, its spare, poold and its 3 workers (--socket
    // DIR/...); nginx workers retitle themselves and no longer show the prefix.
    assert_eq!(
        procs::with_arg_containing(&dir).len(),
        1 + 1 + 1 + 1 + 3,
        "master, watchdog, spare, poold, 3 pool workers"
    );
    assert_eq!(ng.get("/echo").status, 200);
    ng.finish();
    assert!(procs::with_arg_containing(&dir).is_empty());
}

#[test]
fn external_poold_attached_by_socket() {
    let dir = temp_prefix();
    let poold = ExternalPoold::start(&dir, "ext", "builtin:echo", &["--workers", "2"]);
    let ng = Nginx::start(Conf::new(
        &format!("    pool ext external socket={};", poold.socket.display()),
        "    location /echo { pool_pass ext; }",
    ));
    let r = ng.get("/echo/ext?q=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/echo/ext?q=1");
    let workers: Vec<u32> = procs::children(poold.pid());
    assert!(r
        .header("X-Pool-Worker")
        .is_some_and(|p| workers.contains(&p.parse().unwrap())));
    ng.finish();
    drop(poold);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = free_port();
}

#[test]
fn workers_attach_on_their_own_to_a_poold_that_comes_up_after_them() {
    let dir = temp_prefix();
    let socket = dir.join("late.sock");
    let mut conf = Conf::new(
        &format!("    pool late external socket={};", socket.display()),
        "    location /echo { pool_pass late; }",
    );
    // Nothing to attach to yet: start without waiting for attachments.
    conf.pools = 0;
    let mut ng = Nginx::start(conf);
    ng.allow("cannot attach to");
    ng.wait_for("both workers to fail to attach", |ng| {
        ng.log().matches("cannot attach to").count() >= 2
    });
    let poold = ExternalPoold::start(&dir, "late", "builtin:echo", &["--workers", "1"]);
    // No request asks: the workers must retry by themselves.
    ng.wait_for("both workers to attach with no request", |ng| {
        ng.log().matches("attached to").count() >= 2
    });
    ng.count_descriptors_from_here();
    assert_eq!(ng.get("/echo/x").status, 200);
    ng.finish();
    drop(poold);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn poold_killed_fails_fast_and_comes_back_by_itself() {
    let mut ng = Nginx::start(Conf::new(
        "    pool naps handler=builtin:sleep workers=2;",
        "    location /sleep { pool_pass naps; }",
    ));
    // The watchdog reports the death of the poold it keeps.
    ng.allow("was killed by SIGKILL; starting a new one");
    let port = ng.port;
    let poold = ng.poold();
    // Two requests in flight, then SIGKILL poold: both must fail at once, not after 10 s.
    let inflight: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                request(port, "GET", "/sleep?ms=10000", &[], b"")
                    .unwrap()
                    .status
            })
        })
        .collect();
    let workers = procs::children(poold);
    ng.wait_for("both requests to run", |_| {
        workers.iter().all(|w| procs::wchan(*w).contains("sleep"))
    });
    let killed_at = Instant::now();
    procs::kill(poold, libc::SIGKILL);
    for t in inflight {
        assert_eq!(t.join().unwrap(), 502);
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "answered before the handler would have"
    );
    ng.wait_for("pool workers to die with poold", |_| {
        workers.iter().all(|w| !procs::alive(*w))
    });
    // The watchdog starts a new poold and the nginx workers attach to it: no reload needed.
    // Until then a request gets 503 with Retry-After, never a hang.
    let mut statuses = Vec::new();
    ng.wait_for("the pool to serve again", |_| {
        let r = request(port, "GET", "/sleep?ms=1", &[], b"").unwrap();
        if r.status == 503 {
            assert_eq!(r.header("Retry-After"), Some("1"));
        }
        statuses.push(r.status);
        r.status == 200
    });
    let recovered = killed_at.elapsed();
    eprintln!(
        "service back {recovered:?} after poold was killed ({} requests meanwhile: {statuses:?})",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 200),
        "{statuses:?}"
    );
    let new_poold = ng.poold();
    assert_ne!(new_poold, poold);
    assert!(ng.log().contains("starting a new one"));
    ng.finish();
}

#[test]
fn sigkill_of_the_nginx_master_takes_poold_and_its_workers_down() {
    let ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:echo workers=2;",
        "    location /echo { pool_pass app; }",
    ));
    let dir = ng.dir.display().to_string();
    // nginx's own workers outlive a SIGKILLed master (that is nginx): kill them however this ends.
    let _nginx_workers = procs::KillOnDrop {
        pids: ng.worker_pids(),
        is_theirs: |p| procs::cmdline(p).starts_with("nginx: worker process"),
    };
    let pool_side: Vec<u32> = procs::with_arg_containing(&format!("{dir}/logs/pool-app.sock"));
    assert_eq!(pool_side.len(), 5, "watchdog, spare, poold and 2 workers");
    procs::kill(ng.master_pid(), libc::SIGKILL);
    // Ours must not outlive it.
    let deadline = Instant::now() + READY_TIMEOUT;
    while pool_side.iter().any(|p| procs::alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "poold or a pool worker outlived the master"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ng.log().contains("nginx master is gone; stopping"));
}

#[test]
fn sigkill_of_an_nginx_worker_leaks_no_slot_or_chunk() {
    // One nginx worker, so the requests in flight are surely the victim's; the master forks a
    // fresh worker after the kill.
    let mut ng = Nginx::start(
        Conf::new(
            "    pool naps handler=builtin:sleep workers=4;",
            "    location /sleep { pool_pass naps; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    ng.allow("exited on signal 9");
    let port = ng.port;
    let victim = ng.worker_pids()[0];
    // Eight slow requests, all on the victim.
    let inflight: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                request(port, "GET", "/sleep?ms=700", &[], b"").map(|r| r.status)
            })
        })
        .collect();
    ng.wait_for("requests in flight", |ng| {
        let j = ng.get("/status").json();
        j["pools"][0]["slots"]["in_use"].as_u64().unwrap_or(0) >= 4
    });
    procs::kill(victim, libc::SIGKILL);
    let statuses: Vec<_> = inflight.into_iter().map(|t| t.join().unwrap()).collect();
    // The victim's clients lose their connection (nginx may have given it all of them);
    // everyone else is answered.
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(200)) || s.is_err()),
        "{statuses:?}"
    );
    ng.wait_for("poold to reclaim the dead worker's requests", |ng| {
        let j = ng.get("/status").json();
        let p = &j["pools"][0];
        p["slots"]["in_use"] == 0 && p["chunks"]["in_use"] == 0
    });
    assert!(ng.log().contains("detached with"), "poold logs the reclaim");
    assert_eq!(ng.get("/sleep?ms=1").status, 200);
    ng.finish();
}

#[test]
fn single_process_mode_keeps_its_poold_and_stops_it_on_quit() {
    // With `master_process off` one process is master and worker: the worker-side hook must not
    // close the master's lifeline (that once stopped poold at start).
    let mut conf = Conf::new(
        "    pool app handler=builtin:echo workers=1;",
        "    location /echo { pool_pass app; }",
    )
    .workers(1);
    conf.single_process = true;
    let ng = Nginx::start(conf);
    assert_eq!(ng.get("/echo/single").status, 200);
    assert!(!ng.log().contains("nginx master is gone"));
    ng.finish();
}

/// Streams of requests from `clients` threads until `stop`; returns (ok, failures).
fn request_streams(
    port: u16,
    path: &'static str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u32, Vec<String>)>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut bad) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match request(port, "GET", path, &[], b"") {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => bad.push(format!("status {}", r.status)),
                        Err(e) => bad.push(e.to_string()),
                    }
                }
                (ok, bad)
            })
        })
        .collect()
}

#[test]
fn a_changed_pool_starts_a_new_generation_and_drains_the_old_one_under_load() {
    let mut ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:sleep workers=2;",
        "    location /sleep { pool_pass app; }\n    location = /status { pool_status; }",
    ));
    let old_poold = ng.poold();
    let stop = Arc::new(AtomicBool::new(false));
    // Requests that take a while: some are in flight on the old generation at the reload.
    let streams = request_streams(ng.port, "/sleep?ms=30", 4, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    ng.reload(Some(Conf::new(
        "    pool app handler=builtin:sleep workers=4;",
        "    location /sleep { pool_pass app; }\n    location = /status { pool_status; }",
    )));
    ng.wait_for("the old generation to drain and stop", |_| {
        !procs::alive(old_poold)
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for s in streams {
        let (ok, bad) = s.join().unwrap();
        assert!(bad.is_empty(), "failed requests across the switch: {bad:?}");
        total += ok;
    }
    assert!(total > 0);
    let log = ng.log();
    assert!(log.contains("(generation 2) on"), "{log}");
    assert!(log.contains("generation 1 (poold"));
    assert!(log.contains("drained: the last nginx worker of the old generation is gone"));
    assert_ne!(ng.poold(), old_poold);
    let status = ng.get("/status").json();
    assert_eq!(status["pools"][0]["workers"].as_array().unwrap().len(), 4);
    // The old generation's socket went with it; the new one's is in place.
    assert!(!ng.dir.join("logs/pool-app.sock").exists());
    assert!(ng.dir.join("logs/pool-app.g2.sock").exists());
    ng.finish();
}

#[test]
fn a_pool_whose_new_settings_do_not_start_keeps_serving_with_the_old_ones() {
    let mut ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:echo workers=2;",
        "    location /echo { pool_pass app; }",
    ));
    let old_poold = ng.poold();
    // The new configuration passes `nginx -t`, but the pool's new poold cannot start: nginx
    // reloads, and the pool stays on its running poold with the previous settings.
    ng.allow("cannot start /nonexistent/poold");
    ng.reload(Some(Conf::new(
        "    pool app handler=builtin:echo workers=3;\n    pool_daemon /nonexistent/poold;",
        "    location /echo { pool_pass app; }",
    )));
    assert!(ng
        .log()
        .contains("the pool keeps running with its previous settings"));
    assert_eq!(ng.poold(), old_poold, "the old poold is untouched");
    assert_eq!(procs::children(old_poold).len(), 2, "with its old settings");
    for _ in 0..20 {
        assert_eq!(ng.get("/echo").status, 200);
    }
    ng.finish();
}

#[test]
fn quit_finishes_the_requests_in_flight_then_stops_every_pool_process() {
    let mut ng = Nginx::start(Conf::new(
        "    pool naps handler=builtin:sleep workers=2;",
        "    location /sleep { pool_pass naps; }",
    ));
    let port = ng.port;
    let poold = ng.poold();
    let workers = procs::children(poold);
    let inflight: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                request(port, "GET", "/sleep?ms=700", &[], b"")
                    .unwrap()
                    .status
            })
        })
        .collect();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !workers.iter().all(|w| procs::wchan(*w).contains("sleep")) {
        assert!(Instant::now() < deadline, "the requests never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Graceful shutdown with both requests running.
    ng.quit();
    for t in inflight {
        assert_eq!(
            t.join().unwrap(),
            200,
            "a request in flight was cut by quit"
        );
    }
    ng.finish(); // waits for the master; no poold, pool worker or socket left
    assert!(!procs::alive(poold));
}

#[test]
fn stop_under_load_leaves_no_process_and_no_socket() {
    let mut ng = Nginx::start(Conf::new(
        "    pool naps handler=builtin:sleep workers=2;\n    pool app handler=builtin:echo workers=2;",
        "    location /sleep { pool_pass naps; }\n    location /echo { pool_pass app; }",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let streams = request_streams(ng.port, "/sleep?ms=50", 4, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let pool_side: Vec<u32> = ng
        .poolds()
        .into_iter()
        .flat_map(|p| {
            let mut v = procs::children(p);
            v.push(p);
            v
        })
        .chain(ng.watchdogs())
        .collect();
    assert_eq!(
        pool_side.len(),
        2 * (1 + 1 + 2),
        "2 x (watchdog, poold, 2 workers)"
    );
    ng.stop_now();
    stop.store(true, Ordering::Relaxed);
    for s in streams {
        let _ = s.join(); // requests cut by a fast stop may fail: that is what stop means
    }
    ng.finish(); // no process of the prefix, no socket file left
    assert!(pool_side.iter().all(|p| !procs::alive(*p)));
}

/// The spare (or spares) among `pid`'s children.
fn spares_of(pid: u32) -> Vec<u32> {
    procs::children(pid)
        .into_iter()
        .filter(|p| procs::is_spare(*p))
        .collect()
}

#[test]
fn any_one_process_of_a_pool_killed_the_pool_answers_again_within_five_seconds() {
    let mut ng = Nginx::start(Conf::new(
        "    pool k handler=builtin:echo workers=2;",
        "    location /k { pool_pass k; }",
    ));
    let socket = ng.dir.join("logs/pool-k.sock").display().to_string();
    let serves =
        |ng: &Nginx| request(ng.port, "GET", "/k", &[], b"").is_ok_and(|r| r.status == 200);
    let back_within_5s = |ng: &mut Nginx, what: &str| {
        let t = std::time::Instant::now();
        ng.wait_for(what, |ng| serves(ng));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what}: {:?}",
            t.elapsed()
        );
    };
    assert!(serves(&ng));
    // The watchdog: poold never stops serving, and the spare (root, as the watchdog: poold
    // has given root up) takes the watchdog's place, with a spare of its own.
    let watchdog = ng.watchdogs()[0];
    let spare = ng.spares()[0];
    let poold = ng.poold();
    procs::kill(watchdog, libc::SIGKILL);
    ng.wait_for("the spare's own spare", |_| !spares_of(spare).is_empty());
    back_within_5s(&mut ng, "the pool after its watchdog was killed");
    assert!(procs::alive(poold), "poold lives on");
    assert_eq!(procs::uid(spare), 0, "the spare is root");
    // The spare standing in: its own spare takes its place.
    let next = spares_of(spare)[0];
    procs::kill(spare, libc::SIGKILL);
    ng.wait_for("the next spare's spare", |_| !spares_of(next).is_empty());
    back_within_5s(&mut ng, "the pool after the spare standing in was killed");
    assert!(procs::alive(poold), "poold lives on");
    // poold itself: the one standing in starts a new one.
    procs::kill(poold, libc::SIGKILL);
    back_within_5s(&mut ng, "the pool after poold was killed");
    ng.wait_for("a new poold under the one standing in", |_| {
        procs::children(next)
            .iter()
            .any(|p| procs::cmdline(*p).contains("poold") && !procs::is_spare(*p) && *p != poold)
    });
    ng.allow("is gone; its spare");
    ng.allow("is gone; starting");
    ng.allow("poold exited");
    ng.allow("was killed by SIGKILL");
    ng.allow("unknown process");
    ng.finish();
    let left = procs::with_arg_containing(&socket);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_frozen_poold_never_stalls_the_nginx_worker() {
    let mut ng = Nginx::start(Conf::new(
        "    pool f handler=builtin:hello workers=1;",
        "    location /f { pool_pass f; }",
    ));
    assert_eq!(ng.get("/f").status, 200);
    let poold = ng.poold();
    let old_workers = ng.worker_pids();
    procs::kill(poold, libc::SIGSTOP);
    // New nginx workers must attach to the frozen poold.
    ng.signal("reload");
    ng.wait_for("the new workers", |ng| {
        let now = ng.worker_pids();
        now.len() == 2 && now.iter().all(|p| !old_workers.contains(p))
    });
    // Everything else of those workers is served at once meanwhile; the pool's requests wait
    // a short while for the attachment, then get 503 (never a hang).
    let mut slowest = Duration::ZERO;
    let mut pool_statuses = Vec::new();
    for i in 0..40 {
        let t = Instant::now();
        assert_eq!(ng.get("/plain").status, 200);
        slowest = slowest.max(t.elapsed());
        if i % 10 == 0 {
            let t = Instant::now();
            let status = ng.get("/f").status;
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "the pool's request took {:?}",
                t.elapsed()
            );
            pool_statuses.push(status);
        }
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a return-200 request took {slowest:?}"
    );
    assert!(pool_statuses.iter().all(|s| *s == 503), "{pool_statuses:?}");
    // New workers that never attached may be meeting a poold still loading its app: said at
    // notice level at first, an error once it lasts (10 s).
    let said = |ng: &Nginx, level: &str, why: &str| {
        ng.log().lines().any(|l| {
            l.contains(level) && l.contains("did not answer within 1s") && l.ends_with(why)
        })
    };
    assert!(said(&ng, "[notice]", "(still starting?)"), "{}", ng.log());
    ng.wait_for("the error once it lasts", |ng| {
        said(ng, "[error]", "(frozen or overloaded?)")
    });
    // Thawed, the pool is back without a reload.
    procs::kill(poold, libc::SIGCONT);
    ng.wait_for("the pool back", |ng| ng.get("/f").status == 200);
    ng.finish();
}

/// How many requests of a load run there were, and how many failed (no answer, or a status
/// other than 2xx/3xx).
fn tally(run: LoadRun) -> (u64, u64) {
    let outcomes = run.finish();
    let failed = outcomes
        .iter()
        .filter(|o| !(200..400).contains(&o.status()))
        .count();
    (outcomes.len() as u64, failed as u64)
}

#[test]
fn a_hostile_run_loses_nothing_outside_the_pool_that_was_hit() {
    let mut ng = Nginx::start(Conf::new(
        "    pool hit handler=builtin:sleep workers=2 timeout=5s;\n    pool other handler=builtin:hello workers=1;",
        "    location /hit { pool_pass hit; }\n    location /other { pool_pass other; }\n    \
         location = /status { pool_status; }",
    ));
    let socket = ng.dir.join("logs/pool-hit.sock").display().to_string();
    let port = ng.port;
    let plain = Load::get(port, "/plain", 8).start();
    let other = Load::get(port, "/other", 8).start();
    let hit = Load::get(port, "/hit?ms=5", 8).start();
    // The hit pool's watchdog (a child of the master naming its socket) and poold (its child).
    let watchdog_of_hit = |ng: &Nginx| -> u32 {
        ng.watchdogs()
            .into_iter()
            .find(|w| procs::cmdline(*w).contains(&socket))
            .expect("the hit pool's watchdog")
    };
    let poold_of = |watchdog: u32| -> Option<u32> {
        procs::children(watchdog)
            .into_iter()
            .find(|c| procs::cmdline(*c).contains("poold") && !procs::is_spare(*c))
    };
    let poold_of_hit =
        |ng: &Nginx| -> u32 { poold_of(watchdog_of_hit(ng)).expect("the hit pool's poold") };
    std::thread::sleep(Duration::from_millis(500)); // load under way
                                                    // Frozen for a second.
    let p = poold_of_hit(&ng);
    procs::kill(p, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    procs::kill(p, libc::SIGCONT);
    // A pool worker.
    let worker = procs::children(p)[0];
    procs::kill(worker, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(700));
    // poold.
    procs::kill(p, libc::SIGKILL);
    ng.wait_for("the hit pool back", |ng| ng.get("/hit?ms=1").status == 200);
    // The watchdog.
    ng.wait_for("a new poold under the watchdog", |ng| {
        poold_of(watchdog_of_hit(ng)).is_some_and(|c| c != p)
    });
    procs::kill(watchdog_of_hit(&ng), libc::SIGKILL);
    ng.wait_for("the hit pool serving", |ng| {
        ng.get("/hit?ms=1").status == 200
    });
    let (plain_n, plain_failed) = tally(plain);
    let (other_n, other_failed) = tally(other);
    let (hit_n, hit_failed) = tally(hit);
    eprintln!("plain {plain_n} ({plain_failed} failed), other {other_n} ({other_failed}), hit {hit_n} ({hit_failed})");
    assert!(plain_n > 100 && other_n > 100, "the load ran");
    assert_eq!(plain_failed, 0, "return 200 requests failed");
    assert_eq!(other_failed, 0, "requests of the other pool failed");
    // The hit pool ends idle with nothing held.
    ng.wait_for("the hit pool idle and whole", |ng| {
        let j = ng.get("/status").json();
        let hit = j["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "hit")
            .cloned()
            .unwrap();
        hit["attached"] == true && hit["slots"]["in_use"] == 0 && hit["chunks"]["in_use"] == 0
    });
    for a in [
        "is gone; starting",
        "its spare",
        "poold exited",
        "unknown process",
        "was killed by SIGKILL",
        "killed by SIGKILL",
    ] {
        ng.allow(a);
    }
    ng.finish();
}

/// Kills what a daemonized nginx left, even when the test failed: the master by its pid file,
/// then whatever still runs with the prefix in its arguments.
struct DaemonGuard {
    dir: std::path::PathBuf,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("logs/nginx.pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill has no memory preconditions; a stale pid at worst gets a signal it
            // ignores (the test's own prefix makes that unlikely).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for p in procs::with_arg_containing(&self.dir.display().to_string()) {
            // SAFETY: as above.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts nginx with `conf` as a daemon (`daemon on`, as Debian runs it) in `dir` on `port`;
/// returns once the starting process exited and its stdout and stderr closed, with what it
/// printed. Panics if they stay open (a process of nginx's kept them).
fn start_daemon(dir: &std::path::Path, port: u16, conf: &Conf) -> String {
    let path = ngx_pool_tests::write_conf(dir, port, conf);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("daemon off;", "daemon on;", 1)).unwrap();
    let mut starter = std::process::Command::new(&conf.nginx)
        .env_remove("PYTHONUNBUFFERED")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nginx");
    let (mut out, mut err) = (
        starter.stdout.take().unwrap(),
        starter.stderr.take().unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let _ = out.read_to_end(&mut a);
        let _ = err.read_to_end(&mut b);
        let _ = tx.send(String::from_utf8_lossy(&b).into_owned());
    });
    let status = starter.wait().expect("nginx's starting process");
    assert!(status.success(), "nginx did not start");
    rx.recv_timeout(READY_TIMEOUT)
        .expect("stdout and stderr of the starting nginx never closed: a daemon process kept them")
}

/// The pid in a pid file of nginx's, once it is there.
fn pid_in(file: &std::path::Path) -> i32 {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(pid) = std::fs::read_to_string(file)
            .unwrap_or_default()
            .trim()
            .parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the pid is one of this test's nginx masters.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal {sig} to {pid}");
}

/// GET `path` until it answers 200 (or the readiness timeout passes).
fn served(port: u16, path: &str) -> ngx_pool_tests::http::Response {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match request(port, "GET", path, &[], b"") {
            Ok(r) if r.status == 200 => return r,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("{path} is not served: {other:?}"),
        }
    }
}

/// Quits the master in `dir`'s pid file and waits until no process of `dir` is left.
fn quit_daemon(dir: &std::path::Path) {
    send(pid_in(&dir.join("logs/nginx.pid")), libc::SIGQUIT);
    let prefix = dir.display().to_string();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !procs::with_arg_containing(&prefix).is_empty() {
        assert!(Instant::now() < deadline, "processes left after quit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A prefix (removed, with every process of it, by the guard), a port and a configuration
/// with one echo pool at /echo, for the daemonized tests.
fn echo_daemon_conf() -> (DaemonGuard, u16, Conf) {
    let conf = Conf::new(
        "    pool app handler=builtin:echo workers=1;",
        "    location /echo { pool_pass app; }",
    );
    (DaemonGuard { dir: temp_prefix() }, free_port(), conf)
}

#[test]
fn a_daemonized_nginx_leaves_the_descriptors_it_was_started_with() {
    // The shell or script that started nginx must see its stdout close when the master
    // detaches, though poold was forked before that.
    let (guard, port, conf) = echo_daemon_conf();
    let dir = guard.dir.clone();
    let said = start_daemon(&dir, port, &conf);
    assert!(said.trim().is_empty(), "nginx printed: {said}");
    // Serving, from a pool worker, and poold's stdin and stdout are not the starter's pipe.
    let r = served(port, "/echo/d");
    assert!(r.header("X-Pool-Worker").is_some());
    let sock = format!("{}/logs/pool-app.sock", dir.display());
    let poold = procs::with_arg_containing(&sock);
    assert!(!poold.is_empty());
    let link = |p: u32, fd: &str| {
        std::fs::read_link(format!("/proc/{p}/fd/{fd}"))
            .unwrap_or_default()
            .display()
            .to_string()
    };
    for &p in &poold {
        for fd in [0, 1] {
            let target = link(p, &fd.to_string());
            // A pool worker's stdout is the pipe its poold reads (log_rate=).
            let poolds_pipe = target.starts_with("pipe:")
                && procs::ppid(p).is_some_and(|parent| {
                    poold.contains(&parent)
                        && std::fs::read_dir(format!("/proc/{parent}/fd"))
                            .into_iter()
                            .flatten()
                            .flatten()
                            .any(|e| link(parent, &e.file_name().to_string_lossy()) == target)
                });
            assert!(
                target == "/dev/null" || target.ends_with("error.log") || poolds_pipe,
                "process {p} of the pool has descriptor {fd} on {target}"
            );
        }
    }
    quit_daemon(&dir);
    drop(guard);
}

/// USR2 to the master in `logs/nginx.pid`: nginx's binary upgrade. Returns the old master and
/// the new one, once the new one has written its pid file (the old one's is now `.oldbin`).
fn upgrade_binary(logs: &std::path::Path) -> (i32, i32) {
    let old = pid_in(&logs.join("nginx.pid"));
    send(old, libc::SIGUSR2);
    assert_eq!(pid_in(&logs.join("nginx.pid.oldbin")), old);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let p = pid_in(&logs.join("nginx.pid"));
        if p != old {
            return (old, p);
        }
        assert!(Instant::now() < deadline, "no new master");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_binary_upgrade_keeps_the_pools_reachable_after_the_old_master_quits() {
    // nginx's binary upgrade (Debian's `service nginx upgrade`): USR2 starts a new master with
    // its own poolds on the same socket paths, then the old master is told to quit. The old
    // poolds must not take the new ones' sockets with them: a later reload's workers attach.
    let (guard, port, conf) = echo_daemon_conf();
    let dir = guard.dir.clone();
    start_daemon(&dir, port, &conf);
    served(port, "/echo/before");
    let logs = dir.join("logs");
    let (old, new) = upgrade_binary(&logs);
    send(old, libc::SIGQUIT);
    let deadline = Instant::now() + READY_TIMEOUT;
    while procs::alive(old as u32) {
        assert!(Instant::now() < deadline, "the old master did not quit");
        std::thread::sleep(Duration::from_millis(20));
    }
    served(port, "/echo/after-upgrade");
    // A reload: its new workers must find the socket to attach.
    let attached = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("logs/error.log"))
            .unwrap_or_default()
            .matches("attached to")
            .count()
    };
    let before = attached(&dir);
    send(new, libc::SIGHUP);
    let deadline = Instant::now() + READY_TIMEOUT;
    while attached(&dir) < before + conf.worker_processes as usize {
        assert!(
            Instant::now() < deadline,
            "the reloaded workers did not attach to the pool:\n{}",
            std::fs::read_to_string(logs.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    served(port, "/echo/after-reload");
    quit_daemon(&dir);
    assert!(
        !logs.join("pool-app.sock").exists(),
        "the new master's poold left its socket"
    );
    drop(guard);
}

#[test]
fn pool_lines_follow_the_error_log_through_a_rotation() {
    // logrotate's way: the file renamed, then `nginx -s reopen` makes a new one. poold, its
    // workers and what a handler prints must write to the new file, not to the renamed one.
    // The pool has a user of its own, who may not open the new file (nginx's user's): the
    // watchdog, root, reopens it and passes it to poold.
    let mut ng = Nginx::start(Conf::new(
        "    pool crash handler=builtin:crash workers=1 user=daemon;",
        "    location /crash { pool_pass crash; }",
    ));
    ng.allow("panic at");
    ng.allow("killed by signal");
    ng.allow("SIGABRT");
    assert_eq!(ng.get("/crash?how=none").status, 200);
    let logs = ng.dir.join("logs");
    std::fs::rename(logs.join("error.log"), logs.join("error.log.1")).unwrap();
    ng.signal("reopen");
    let new_log = || std::fs::read_to_string(logs.join("error.log")).unwrap_or_default();
    // A worker's own line (a handler's panic, logged by the worker) in the new file; they look
    // at the path once a second, so a line or two may still go to the old one.
    ng.wait_for("a pool worker's line in the reopened log", |ng| {
        assert_eq!(ng.get("/crash?how=panic").status, 500);
        new_log().contains("panic at")
    });
    // poold's own line: a worker killed under a request (again, until one lands in the new
    // file: poold too looks at the path at most once a second).
    let poold = ng.poold();
    let poold_line = |l: &str| l.contains(&format!("{poold}#0: poold \"crash\""));
    let deadline = Instant::now() + READY_TIMEOUT;
    while !new_log().lines().any(poold_line) {
        assert!(
            Instant::now() < deadline,
            "no line of poold {poold} in the reopened log:\n{}",
            new_log()
        );
        let status = ng.get("/crash?how=abort").status;
        assert!(matches!(status, 502 | 503), "{status}");
        std::thread::sleep(Duration::from_millis(200)); // a dead worker's replacement
    }
    ng.wait_for("a fresh worker", |ng| {
        ng.get("/crash?how=none").status == 200
    });
    ng.finish();
}

#[test]
fn a_removed_socket_file_is_made_again_for_the_workers_started_after() {
    // Deleted by hand or by a cleaner: the attached workers never notice, and poold binds the
    // path again, so a reload's new workers still attach.
    let mut ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:echo workers=1;",
        "    location /echo { pool_pass app; }",
    ));
    let sock = ng.dir.join("logs/pool-app.sock");
    std::fs::remove_file(&sock).unwrap();
    assert_eq!(ng.get("/echo/attached").status, 200);
    ng.wait_for("poold to make its socket file again", |ng| {
        ng.log().contains("was removed; made it again")
    });
    assert!(sock.exists());
    ng.reload(None);
    assert_eq!(ng.get("/echo/after-reload").status, 200);
    ng.finish();
}

#[test]
fn an_aborted_binary_upgrade_leaves_the_old_master_s_pools_reachable() {
    // USR2, then the new master told to quit instead of the old one (nginx's documented way
    // back), then HUP to the old master for new workers: they must find the pool's socket,
    // which the quitting new poold removed with its own.
    let (guard, port, conf) = echo_daemon_conf();
    let dir = guard.dir.clone();
    start_daemon(&dir, port, &conf);
    served(port, "/echo/before");
    let logs = dir.join("logs");
    let (old, new) = upgrade_binary(&logs);
    let error_log = || std::fs::read_to_string(logs.join("error.log")).unwrap_or_default();
    // The new master's worker attached to its own poold before it is sent away.
    let deadline = Instant::now() + READY_TIMEOUT;
    while error_log().matches("attached to").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the new master's worker did not attach"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    send(new, libc::SIGQUIT);
    let deadline = Instant::now() + READY_TIMEOUT;
    while procs::alive(new as u32) {
        assert!(Instant::now() < deadline, "the new master did not quit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    while !error_log().contains("was removed; made it again") {
        assert!(
            Instant::now() < deadline,
            "the old poold did not make its socket again:\n{}",
            error_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = error_log().matches("attached to").count();
    send(old, libc::SIGHUP);
    let deadline = Instant::now() + READY_TIMEOUT;
    while error_log().matches("attached to").count() < before + 1 {
        assert!(
            Instant::now() < deadline,
            "the old master's new worker did not attach:\n{}",
            error_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    served(port, "/echo/after-abort");
    // nginx.pid went with the new master: the old one's is nginx.pid.oldbin.
    if !logs.join("nginx.pid").exists() {
        std::fs::rename(logs.join("nginx.pid.oldbin"), logs.join("nginx.pid")).unwrap();
    }
    quit_daemon(&dir);
    drop(guard);
}
