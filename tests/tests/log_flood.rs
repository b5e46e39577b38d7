//! A pool whose handler floods stdout and stderr cannot flood the error log: poold passes at
//! most `log_rate=` lines a second from the pool's workers (and what they fork), drops the
//! rest, says how many once a second, and counts them in `pool_status`.

use ngx_pool_tests::{build_c_handler, nginx_test_config, temp_prefix, Conf, Nginx};
use std::time::{Duration, Instant};

const REPORT: &str = " lines from the pool's workers dropped";

/// The lines dropped in `pool`, as the error log's reports say.
fn reported(log: &str, pool: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(&format!("poold \"{pool}\":")))
        .filter_map(|l| {
            let end = l.find(REPORT)?;
            l[..end].rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// The lines of the log that a flood of `n` lines from `who` wrote.
fn flood_lines(log: &str, n: u64, who: &str) -> u64 {
    let tail = format!(" of {n} from the {who}");
    log.lines().filter(|l| l.ends_with(&tail)).count() as u64
}

fn counter(ng: &Nginx, pool: &str) -> u64 {
    let status = ng.get("/status").json();
    let p = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .unwrap_or_else(|| panic!("no pool {pool} in {status}"))
        .clone();
    p["counters"]["log_lines_dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no log_lines_dropped counter in {p}"))
}

#[test]
fn a_handler_flooding_stderr_gets_log_rate_lines_a_second_into_the_error_log() {
    const RATE: u64 = 50;
    const N: u64 = 100_000;
    let libs = temp_prefix();
    let lib = build_c_handler("tests/handlers/log_flood.c", &libs);
    let mut ng = Nginx::start(Conf::new(
        &format!(
            "    pool flood handler=dylib:{lib} workers=1 log_rate={RATE};\n    \
             pool free handler=dylib:{lib} workers=1 log_rate=0;",
            lib = lib.display()
        ),
        "    location /flood/ { pool_pass flood; }\n    location /free/ { pool_pass free; }\n    \
         location = /status { pool_status; }",
    ));
    let size_before = ng.log().len();
    let started = Instant::now();
    let r = ng.get(&format!("/flood/lines?n={N}"));
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), format!("{N}\n"));
    // Promptly: the worker never waits for the log's pace, only for poold to read the pipe.
    assert!(took < Duration::from_secs(5), "the flood took {took:?}");
    // Every line is accounted for: written, or dropped and reported (the last window's report
    // comes at its end, within a second).
    ng.wait_for("every flood line written or reported dropped", |ng| {
        let log = ng.log();
        flood_lines(&log, N, "worker") + reported(&log, "flood") == N
    });
    let elapsed = started.elapsed().as_secs_f64();
    let log = ng.log();
    let written = flood_lines(&log, N, "worker");
    let dropped = reported(&log, "flood");
    let bound = (RATE as f64 * (elapsed + 2.0)) as u64;
    println!(
        "flood of {N} lines in {took:?}: {written} in the log, {dropped} dropped, over \
         {elapsed:.2} s (bound {bound}); the log grew by {} bytes",
        ng.log().len() - size_before
    );
    for l in log.lines().filter(|l| l.contains(REPORT)) {
        println!("  {l}");
    }
    assert!(
        written <= bound,
        "{written} flood lines in the log in {elapsed:.2} s at log_rate={RATE}"
    );
    // The lines let through are as the handler wrote them, the first ones first.
    assert!(
        log.lines()
            .any(|l| l == format!("flood line 1 of {N} from the worker")),
        "the first line is not in the log as written"
    );
    assert!(
        log.contains(&format!("{REPORT} (log_rate={RATE})")),
        "no report line"
    );
    assert!(
        ng.log().len() - size_before < 200_000,
        "the error log grew by {} bytes for a flood of {N} lines",
        ng.log().len() - size_before
    );
    assert_eq!(counter(&ng, "flood"), dropped);

    // What a process the worker forks writes goes through the same limit.
    const CHILD: u64 = 20_000;
    assert_eq!(ng.get(&format!("/flood/child?n={CHILD}")).status, 200);
    ng.wait_for("every child line written or reported dropped", |ng| {
        let log = ng.log();
        flood_lines(&log, N, "worker") + flood_lines(&log, CHILD, "child") + reported(&log, "flood")
            == N + CHILD
    });
    let log = ng.log();
    let child_written = flood_lines(&log, CHILD, "child");
    assert!(
        child_written < CHILD / 10,
        "{child_written} of the child's {CHILD} lines in the log"
    );
    assert_eq!(counter(&ng, "flood"), reported(&log, "flood"));
    let prometheus =
        String::from_utf8_lossy(&ng.get("/status?format=prometheus").body).into_owned();
    let line = format!(
        "ngx_pool_log_lines_dropped_total{{pool=\"flood\"}} {}",
        reported(&log, "flood")
    );
    assert!(
        prometheus.contains(&line),
        "no \"{line}\" in:\n{prometheus}"
    );

    // The flood is over and its last window reported: an ordinary line gets through at once.
    assert_eq!(ng.get("/flood/say?id=after-the-flood").status, 200);
    ng.wait_for("an ordinary worker line after the flood", |ng| {
        ng.log().contains("an ordinary line, id after-the-flood")
    });

    // log_rate=0: no limit, every line reaches the log, nothing is dropped.
    const FREE: u64 = 5_000;
    assert_eq!(ng.get(&format!("/free/lines?n={FREE}")).status, 200);
    ng.wait_for("every line of the unlimited pool", |ng| {
        flood_lines(&ng.log(), FREE, "worker") == FREE
    });
    assert_eq!(counter(&ng, "free"), 0);
    assert_eq!(reported(&ng.log(), "free"), 0);
    ng.finish();
    let _ = std::fs::remove_dir_all(&libs);
}

#[test]
fn a_bad_log_rate_is_refused_by_nginx_t_with_file_and_line() {
    for bad in ["lots", "-1", "1.5", "2000000"] {
        let (ok, out) = nginx_test_config(&Conf::new(
            &format!("    pool p handler=builtin:echo log_rate={bad};"),
            "    location / { pool_pass p; }",
        ));
        assert!(!ok, "nginx -t accepted log_rate={bad}");
        assert!(
            out.contains(&format!("invalid log_rate \"{bad}\"")),
            "{bad}: {out}"
        );
        assert!(out.contains("nginx.conf:"), "file:line missing in:\n{out}");
    }
    let (ok, out) = nginx_test_config(&Conf::new(
        "    pool p handler=builtin:echo log_rate=0;\n    pool q handler=builtin:echo log_rate=1000;",
        "    location / { pool_pass p; }",
    ));
    assert!(ok, "{out}");
}
