//! Python ASGI apps through `pool_pass` (FastAPI from the test virtualenv), run unmodified by
//! the `ngx-pool` package's ASGI handler: an event loop per worker with `concurrency=`
//! requests at once, the lifespan, deadlines that cancel one request, clients that leave.

use ngx_pool_tests::http::request;
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

/// A file the app records into (`ASGI_RECORD`), fresh for the test.
fn record_file(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("asgi-record-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
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
    let _ = std::fs::remove_file(&rec);
}
