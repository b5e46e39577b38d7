//! Python WSGI apps through `pool_pass`, run unmodified by the Python adapter: a real nginx,
//! the real module and poold, Debian's CPython, Flask and Django from the test virtualenv.

use ngx_pool_tests::http::{exchange_streamed, request};
use ngx_pool_tests::{python_apps, python_env, Conf, Nginx};
use std::time::{Duration, Instant};

fn text(r: &ngx_pool_tests::http::Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// A pool line for app `spec` from the test apps, with `extra` parameters.
fn wsgi_pool(name: &str, spec: &str, extra: &str) -> String {
    format!(
        "    pool {name} handler=wsgi:{spec} venv={} chdir={} workers=2 {extra};",
        python_env().display(),
        python_apps().display()
    )
}

#[test]
fn a_flask_app_runs_unmodified() {
    let ng = Nginx::start(Conf::new(
        &wsgi_pool("flask", "flaskapp:app", "env=APP_MODE=test"),
        "    location / { pool_pass flask; }",
    ));
    let r = ng.get("/");
    assert_eq!((r.status, text(&r).as_str()), (200, "hello from flask\n"));
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let j = ng.get("/json?a=1&b=two").json();
    assert_eq!(j["path"], "/json");
    assert_eq!(j["args"]["b"], "two");
    let env = ng.get("/env").json();
    assert_eq!(env["app_mode"], "test");
    assert_eq!(env["cwd"], python_apps().display().to_string());
    assert_eq!(env["prefix"], python_env().display().to_string());

    // A form POST, repeated fields included.
    let form = b"name=Ada+L&tag=x&tag=y%21";
    let r = request(
        ng.port,
        "POST",
        "/form",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["name"], "Ada L");
    assert_eq!(r.json()["tags"], serde_json::json!(["x", "y!"]));

    // A multipart file upload of 300 KB.
    let file: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    body.extend_from_slice(&file);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let r = request(
        ng.port,
        "POST",
        "/upload",
        &[("Content-Type", "multipart/form-data; boundary=XyZ")],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["filename"], "data.bin");
    assert_eq!(r.json()["size"], 300_000);
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(&file)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(r.json()["sha256"], want);

    // Cookies, and a session carried by its cookie.
    let r = ng.get("/cookie");
    assert_eq!(
        r.header("Set-Cookie"),
        Some("flavour=oat; HttpOnly; Path=/")
    );
    let first = ng.get("/session");
    assert_eq!(first.json()["n"], 1);
    let session = first
        .header("Set-Cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let r = request(ng.port, "GET", "/session", &[("Cookie", &session)], b"").unwrap();
    assert_eq!(r.json()["n"], 2);

    // A redirect, a 404.
    let r = ng.get("/go");
    assert_eq!((r.status, r.header("Location")), (302, Some("/")));
    let r = ng.get("/nowhere");
    assert_eq!(r.status, 404);
    assert!(text(&r).contains("Not Found"));

    // A streamed response reaches the client as the generator yields, not at its end.
    let started = Instant::now();
    let mut first_bytes = None;
    let s = exchange_streamed(
        ng.port,
        "GET",
        "/stream?n=3&pause=0.6",
        0,
        |_| 0,
        1 << 16,
        |got| {
            if got > 0 && first_bytes.is_none() {
                first_bytes = Some(started.elapsed());
            }
        },
    )
    .unwrap();
    assert!(s.complete);
    let ticks = b"tick 0\ntick 1\ntick 2\n";
    assert_eq!(s.body_len, ticks.len() as u64);
    assert_eq!(
        s.sha256,
        ngx_pool_tests::http::sha256_of(21, |i| ticks[i as usize])
    );
    let (first, total) = (first_bytes.unwrap(), started.elapsed());
    assert!(
        total >= Duration::from_millis(1800) && total - first >= Duration::from_millis(1000),
        "the first tick came at {first:?}, the end at {total:?}: not streamed"
    );
    ng.finish();
}
