//! `pool_status`'s page for people, in a real headless browser (Debian's chromium, driven by
//! Selenium from the test virtualenv): it loads without console errors and follows the pool
//! live, without a reload.

use ngx_pool_tests::http::request;
use ngx_pool_tests::{python_env, repo_dir, Conf, Nginx};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

#[test]
fn the_status_page_shows_the_live_worker_count_in_a_browser() {
    let ng = Nginx::start(Conf::new(
        "    pool app handler=builtin:sleep workers=3;",
        "    location /sleep { pool_pass app; }\n    location = /status { pool_status; }",
    ));
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
    assert!(
        !body.contains("http://") && !body.contains("https://") && !body.contains("src="),
        "an external asset"
    );
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
        .args([&format!("http://127.0.0.1:{}/status", ng.port), "app", "3"])
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
    let status = browser.wait().unwrap();
    assert!(
        status.success() && line.trim() == "OK",
        "browser check failed: {line}"
    );
    assert_eq!(slow.join().unwrap(), 200);
    ng.finish();
}
