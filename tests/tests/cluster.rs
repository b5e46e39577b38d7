//! Scale-out: three ngx-pool hosts, each in its own network namespace with its own address,
//! behind a front nginx (`nginx-conf/cluster/`, run by `scripts/cluster`). Each test makes its
//! own cluster (its own subnet) and is skipped, saying so, where namespaces cannot be made.

use ngx_pool_tests::cluster::Cluster;
use ngx_pool_tests::load::{Load, Outcome};
use std::time::{Duration, Instant};

fn ok(o: &Outcome) -> bool {
    matches!(&o.result, Ok(r) if r.status == 200)
}

/// Every request of the run answered 200; else the failures, with when they started.
fn assert_none_failed(outcomes: &[Outcome]) {
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !ok(o))
        .map(|o| {
            (
                o.started,
                o.result.as_ref().map(|r| r.status).map_err(|e| e.clone()),
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
}

#[test]
fn requests_spread_over_the_three_hosts() {
    let Some(c) = Cluster::up(21, 3) else { return };
    let mut served = [0u32; 3];
    for i in 0..90 {
        let r = c
            .get(&format!("/cpu?n={}", 1000 + i))
            .expect("GET through the front");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let h = c
            .host_of(&r)
            .expect("an X-Served-By naming one of the hosts");
        served[h as usize - 1] += 1;
    }
    // least_conn with one request at a time falls back to round robin: an even spread.
    assert!(
        served.iter().all(|&n| n >= 20),
        "served per host: {served:?}"
    );
    c.check_logs();
}

#[test]
fn a_saturated_host_overflows_to_the_others_without_a_503() {
    let Some(c) = Cluster::up(22, 3) else { return };
    // Host 1's slow pool (workers=2 queue=0) filled straight, past the front.
    let hog: Vec<_> = (0..2)
        .map(|_| {
            let addr = c.addr(1);
            std::thread::spawn(move || {
                ngx_pool_tests::http::request_to(&addr, 8080, "GET", "/slow?ms=4000", &[], b"")
                    .map(|r| r.status)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = c
            .get_host(1, "/pool-status?format=json")
            .expect("host 1's status");
        let busy = status.json()["pools"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "slow"))
            .map(|p| p["slots"]["in_use"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        if busy >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "host 1's slow pool never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    let full = c.get_host(1, "/slow?ms=1").expect("host 1 straight");
    assert_eq!(full.status, 503, "a full host says so at once");
    // As many requests at once as hosts 2 and 3 have room for: every one is served there.
    for round in 0..3 {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let port = c.port;
                std::thread::spawn(move || {
                    ngx_pool_tests::http::request(port, "GET", "/slow?ms=300", &[], b"")
                })
            })
            .collect();
        for t in clients {
            let r = t.join().unwrap().expect("GET through the front");
            assert_eq!(r.status, 200, "round {round}: a client saw {}", r.status);
            assert_ne!(
                c.host_of(&r),
                Some(1),
                "round {round}: served by the full host"
            );
        }
    }
    for h in hog {
        assert_eq!(h.join().unwrap().expect("the hogging requests"), 200);
    }
    // The front did meet the full host and moved the request on (its log's tries).
    let log = c.front_access_log();
    let moved = log
        .lines()
        .filter(|l| {
            l.contains(&format!("upstream={}:8080, ", c.addr(1)))
                && l.contains("upstream_status=503, 200")
        })
        .count();
    assert!(moved >= 1, "no request was moved off the full host:\n{log}");
    c.check_logs();
}

#[test]
fn a_host_killed_mid_load_loses_only_its_requests_in_flight() {
    let Some(mut c) = Cluster::up(23, 3) else {
        return;
    };
    let clients = 6;
    let run = Load::get(c.port, "/cpu?n=300000", clients).start();
    std::thread::sleep(Duration::from_secs(1)); // load, not synchronisation: a second of traffic
    let killed_at = run.t0.elapsed();
    c.host_cmd("kill", 2); // SIGKILL of host 2's nginx, poold and pool workers
                           // The kill happened somewhere in between (the script takes its time under load): a request
                           // started before it was done may have been in flight on host 2.
    let killed_by = run.t0.elapsed();
    let fail_timeout = Duration::from_secs(5);
    std::thread::sleep(fail_timeout + Duration::from_secs(2));
    let outcomes = run.finish();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !ok(o)).collect();
    // Only requests in flight at the kill may fail: at most one per client, none started after.
    assert!(failed.len() <= clients, "{} failed", failed.len());
    for o in &failed {
        assert!(
            o.started <= killed_by,
            "a request started {:?} after the kill was done failed: {:?}",
            o.started - killed_by,
            o.result.as_ref().map(|r| r.status)
        );
    }
    let after = |o: &&Outcome| o.started > killed_at + Duration::from_secs(1);
    let late: Vec<&Outcome> = outcomes.iter().filter(after).collect();
    assert!(
        late.len() > 20,
        "the front kept serving: {} requests after the kill",
        late.len()
    );
    assert!(
        late.iter()
            .all(|o| matches!(&o.result, Ok(r) if c.host_of(r) != Some(2))),
        "host 2 answered after it was killed"
    );
    let served_by = |h| {
        late.iter()
            .filter(|o| matches!(&o.result, Ok(r) if c.host_of(r) == Some(h)))
            .count()
    };
    assert!(
        served_by(1) > 0 && served_by(3) > 0,
        "both other hosts take the load"
    );
    eprintln!(
        "{} requests, {} failed (in flight on host 2 at the kill), {} after the kill",
        outcomes.len(),
        failed.len(),
        late.len()
    );
    // Every process of host 2 got SIGKILL at once, but not in the same instant: a watchdog's
    // spare may see its watchdog die first and say it takes its place, a moment before its own.
    c.allow("is gone; its spare");
    c.check_logs();
}

#[test]
fn reload_of_one_host_under_load_fails_no_request() {
    let Some(c) = Cluster::up(24, 3) else { return };
    let run = Load::get(c.port, "/cpu?n=100000", 4).start();
    let attached_before = c.host_log(1).matches("attached to").count();
    for i in 1..=2 {
        c.host_cmd("reload", 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        // The new generation of host 1's nginx workers attached to both pools.
        while c.host_log(1).matches("attached to").count() < attached_before + 2 * i {
            assert!(
                Instant::now() < deadline,
                "host 1's new workers did not attach"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(500)); // traffic on the reloaded host
    let outcomes = run.finish();
    assert_none_failed(&outcomes);
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(&o.result, Ok(r) if c.host_of(r) == Some(1))),
        "host 1 served"
    );
    c.check_logs();
}

#[test]
fn a_host_cut_off_for_seconds_costs_delays_not_failures() {
    let Some(c) = Cluster::up(25, 3) else { return };
    let run = Load::get(c.port, "/cpu?n=20000", 6).start();
    std::thread::sleep(Duration::from_secs(1)); // load, not synchronisation: traffic before
    let cut_at = run.t0.elapsed();
    c.host_cmd("link-down", 2); // host 2's cable pulled: packets dropped, nothing refused
    std::thread::sleep(Duration::from_secs(7)); // longer than fail_timeout (5 s)
    let back_at = run.t0.elapsed();
    let logged_before = c.front_access_log().lines().count();
    c.host_cmd("link-up", 2);
    // Host 2 takes new requests through the front again (nginx tries it once fail_timeout has
    // passed): a quick answer from it, not one that was held up while the link was down.
    let quick_from_2 = |l: &str| {
        l.contains(&format!("upstream={}:8080 upstream_status=200 ", c.addr(2)))
            && l.rsplit("upstream_time=")
                .next()
                .and_then(|t| t.trim().parse::<f64>().ok())
                .is_some_and(|t| t < 0.5)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c
        .front_access_log()
        .lines()
        .skip(logged_before)
        .any(quick_from_2)
    {
        assert!(
            Instant::now() < deadline,
            "host 2 never served again after its link came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcomes = run.finish();
    // A connect to the cut host times out (1 s) and the request moves; one in flight there, or
    // sent on a kept-alive connection, finishes once TCP retransmits after the link is back.
    assert_none_failed(&outcomes);
    let during: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.started > cut_at && o.started < back_at)
        .collect();
    assert!(
        during.len() > 20,
        "only {} requests while host 2 was cut off",
        during.len()
    );
    eprintln!(
        "{} requests, {} while host 2 was cut off ({} by hosts 1 and 3), none failed",
        outcomes.len(),
        during.len(),
        during
            .iter()
            .filter(|o| matches!(&o.result, Ok(r) if c.host_of(r) != Some(2)))
            .count()
    );
    c.check_logs();
}
