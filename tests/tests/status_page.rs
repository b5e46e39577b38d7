//! `pool_status`'s page for people, in a real headless browser (Debian's chromium, driven by
//! Selenium from the test virtualenv): it loads without console errors, lists 30 pools in its
//! overview, follows the open pool live without a reload, and its charts move under load; a
//! screenshot of the page under load is kept (target/test-artifacts/status-page.png).

use ngx_pool_tests::http::request;
use ngx_pool_tests::load::Load;
use ngx_pool_tests::{python_env, repo_dir, Conf, Nginx};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

#[test]
fn the_status_page_shows_the_live_worker_count_in_a_browser() {
    // The pool the test follows, and 29 more: the overview is one line each.
    let others: String = (1..30)
        .map(|i| format!("    pool p{i:02} handler=builtin:hello workers=1;\n"))
        .collect();
    let ng = Nginx::start(Conf::new(
        &format!("    pool app handler=builtin:sleep workers=3;\n{others}"),
        "    location /sleep { pool_pass app; }\n    location = /status { pool_status; }",
    ));
    let artifacts = repo_dir().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    // What a browser asks for gets the page; curl's */* keeps the JSON.
    let page = request(
        ng.port,
        "GET",
        "/status",
        &[("Accept", "text/html,*/*;q=0.8")],
        b"",
    )
    .unwrap();
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert!(String::from_utf8_lossy(&page.body).contains("<title>ngx-pool status</title>"));
    let body = String::from_utf8_lossy(&page.body).into_owned();
    // Self-contained: nothing loaded from elsewhere (the SVG namespace URI is a name, never
    // fetched).
    for asset in ["src=", "href=\"http", "url(", "fetch(\"http", "import "] {
        assert!(!body.contains(asset), "an external asset: {asset}");
    }
    assert_eq!(
        ng.get("/status").header("Content-Type"),
        Some("application/json")
    );
    assert_eq!(
        ng.get("/status?format=html").header("Content-Type"),
        Some("text/html; charset=utf-8")
    );

    if !std::path::Path::new("/usr/bin/chromedriver").exists() {
        panic!("no /usr/bin/chromedriver: scripts/test installs chromium and chromium-driver");
    }
    let mut browser = Command::new(python_env().join("bin/python"))
        .arg(repo_dir().join("tests/python/browser_status.py"))
        .args([
            &format!("http://127.0.0.1:{}/status", ng.port),
            "app",
            "3",
            "30",
            &screenshot.display().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the browser script");
    let mut out = BufReader::new(browser.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "READY", "the page did not show 3 idle workers");
    // One worker busy for a while; the open page must show it by itself.
    let port = ng.port;
    let slow = std::thread::spawn(move || {
        request(port, "GET", "/sleep?ms=6000", &[], b"")
            .unwrap()
            .status
    });
    writeln!(browser.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "BUSY", "the page did not show the busy worker");
    // Load on the pool until the page's chart has moved.
    let load = Load::get(ng.port, "/sleep?ms=20", 4).start();
    writeln!(browser.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let status = browser.wait().unwrap();
    let outcomes = load.finish();
    assert!(outcomes.iter().all(|o| o.status() == 200));
    assert!(
        status.success() && line.trim() == "OK",
        "browser check failed: {line}"
    );
    assert_eq!(slow.join().unwrap(), 200);
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        screenshot.display()
    );
    ng.finish();
}
