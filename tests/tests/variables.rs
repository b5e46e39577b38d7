//! The module's nginx variables (`$pool_name`, `$pool_worker`, `$pool_queue_time`,
//! `$pool_exec_time`, `$pool_status`), read back from a real access log.

use ngx_pool_tests::http::request;
use ngx_pool_tests::{Conf, Nginx};

fn access_lines(ng: &Nginx) -> Vec<Vec<String>> {
    std::fs::read_to_string(ng.dir.join("logs/access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(String::from).collect())
        .collect()
}

fn line_for(ng: &mut Nginx, uri: &str) -> Vec<String> {
    let mut found = None;
    ng.wait_for(&format!("the access log line of {uri}"), |ng| {
        found = access_lines(ng)
            .into_iter()
            .rev()
            .find(|l| l.last().map(String::as_str) == Some(uri));
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn access_log_variables_say_which_pool_worker_how_long_and_how_it_ended() {
    let mut ng = Nginx::start(Conf::new(
        "    log_format pool '$pool_name $pool_worker $pool_queue_time $pool_exec_time $pool_status $status $request_uri';\n    \
         pool naps handler=builtin:sleep workers=1 queue=0 timeout=1s;\n    \
         pool boom handler=builtin:crash workers=1;",
        "    access_log logs/access.log pool;\n    \
         location /sleep { pool_pass naps; }\n    location /crash { pool_pass boom; }\n    \
         location = /status { pool_status; }",
    ));
    ng.allow("killed by SIGABRT");
    let r = ng.get("/sleep?ms=150");
    assert_eq!(r.status, 200);
    let l = line_for(&mut ng, "/sleep?ms=150");
    assert_eq!(
        (l[0].as_str(), l[4].as_str(), l[5].as_str()),
        ("naps", "ok", "200"),
        "{l:?}"
    );
    let worker: u32 = l[1].parse().expect("a pid");
    let status = ng.get("/status").json();
    assert!(
        status["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["pid"] == worker)),
        "{worker} is not a pool worker: {status}"
    );
    let queue: f64 = l[2].parse().unwrap();
    let exec: f64 = l[3].parse().unwrap();
    assert!(
        l[2].contains('.') && l[2].split('.').nth(1).unwrap().len() == 3,
        "{l:?}"
    );
    assert!(exec >= 0.150 && queue < exec, "queue {queue}, exec {exec}");

    // A worker killed under the request; the deadline; a full queue.
    assert_eq!(ng.get("/crash?how=abort").status, 502);
    assert_eq!(line_for(&mut ng, "/crash?how=abort")[4], "crashed");
    assert_eq!(ng.get("/sleep?ms=5000").status, 504);
    assert_eq!(line_for(&mut ng, "/sleep?ms=5000")[4], "timeout");
    // (The worker past its deadline was replaced: wait for the new one.)
    ng.wait_for("a fresh worker", |ng| ng.get("/sleep?ms=0").status == 200);
    let port = ng.port;
    let busy = std::thread::spawn(move || {
        request(port, "GET", "/sleep?ms=700", &[], b"")
            .unwrap()
            .status
    });
    ng.wait_for("the worker busy", |ng| {
        ng.get("/status").json()["pools"][0]["slots"]["in_use"].as_u64() == Some(1)
    });
    assert_eq!(ng.get("/sleep?ms=1").status, 503);
    assert_eq!(line_for(&mut ng, "/sleep?ms=1")[4], "full");
    assert_eq!(busy.join().unwrap(), 200);

    // Not a pool location: nothing to say.
    assert_eq!(ng.get("/plain").status, 200);
    let l = line_for(&mut ng, "/plain");
    assert_eq!(&l[..5], ["-", "-", "-", "-", "-"], "{l:?}");
    ng.finish();
}
