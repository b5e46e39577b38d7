//! Python WSGI apps through `pool_pass`, run unmodified by the Python adapter: a real nginx,
//! the real module and poold, Debian's CPython, Flask and Django from the test virtualenv.

use ngx_pool_tests::http::{comparable, exchange_streamed, request};
use ngx_pool_tests::{python_apps, python_env, Conf, Nginx};
use std::time::{Duration, Instant};

/// A pool line for app `spec` from the test apps, with `extra` parameters.
fn wsgi_pool(name: &str, spec: &str, extra: &str) -> String {
    // Two workers unless `extra` says how many (nginx -t refuses a parameter given twice).
    let workers = if extra.contains("workers=") {
        ""
    } else {
        "workers=2 "
    };
    format!(
        "    pool {name} handler=wsgi:{spec} venv={} chdir={} {workers}{extra};",
        python_env().display(),
        python_apps().display()
    )
}

#[test]
fn a_flask_app_runs_unmodified() {
    let mut ng = Nginx::start(Conf::new(
        &wsgi_pool("flask", "flaskapp:app", "env=APP_MODE=test"),
        "    location / { pool_pass flask; }",
    ));
    let r = ng.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from flask\n"));
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let j = ng.get("/json?a=1&b=two").json();
    assert_eq!(j["path"], "/json");
    assert_eq!(j["args"]["b"], "two");
    let env = ng.get("/env").json();
    assert_eq!(env["app_mode"], "test");
    assert_eq!(env["cwd"], python_apps().display().to_string());
    assert_eq!(env["prefix"], python_env().display().to_string());
    // A single-request worker keeps the default scheduling class (only lanes run SCHED_BATCH).
    for w in ngx_pool_tests::memory::pool_workers(&ng) {
        let threads = ngx_pool_tests::procs::thread_policies(w);
        assert!(threads.iter().all(|(_, p)| *p == 0), "{threads:?}");
    }

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
    assert_eq!(r.status, 200, "{}", r.text());
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
    assert_eq!(r.status, 200, "{}", r.text());
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
    assert!(r.text().contains("Not Found"));

    // A streamed response reaches the client as the generator yields, not at its end (the view
    // says `X-Accel-Buffering: no`).
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

    // print() reaches the error log as it is written (unbuffered), on stdout and stderr alike.
    assert_eq!(ng.get("/print?m=marker-5f3a").text(), "printed\n");
    // poold passes the workers' lines on as it reads them from their pipe (log_rate=): soon
    // after the answer, not necessarily before it.
    ng.wait_for(
        "the app's print() on stdout and stderr in the error log",
        |ng| {
            let log = ng.log();
            ["stdout", "stderr"]
                .iter()
                .all(|stream| log.contains(&format!("{stream} says marker-5f3a")))
        },
    );
    // ...as lines a parser can read: nginx's format, a level per stream, the pool and the
    // worker's pid (ngx_pool._stdio), as wsgi.errors lines are.
    for (stream, level) in [("stdout", "[notice]"), ("stderr", "[error]")] {
        let line = ng.log_line(&[&format!("{stream} says marker-5f3a")]);
        let stamp = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
        assert!(
            stamp.len() == 19 && stamp.as_bytes()[4] == b'/' && stamp.as_bytes()[13] == b':',
            "no nginx timestamp: {line}"
        );
        assert!(line.contains(level), "{line}");
        assert!(line.contains("poold \"flask\": worker "), "{line}");
    }
    // So is what a logging handler made at import writes (Django's LOGGING makes one): made
    // in the pool manager (preload=on), it writes through the same line writer, tagged with
    // the worker that logs.
    let pid = ng.get("/log?m=marker-77c1").text();
    let line = ng.log_line(&["logging says marker-77c1"]);
    assert!(
        line.contains("[error]") && line.contains(&format!("poold \"flask\": worker {pid}")),
        "{line}"
    );
    ng.finish();
}

#[test]
fn exceptions_exits_and_kills_get_the_statuses_named_and_the_pool_goes_on() {
    let mut ng = Nginx::start(Conf::new(
        &wsgi_pool("flask", "flaskapp:app", ""),
        "    location / { pool_pass flask; }\n    location = /status { pool_status; }",
    ));
    ng.allow("killed by SIGKILL");
    // Flask turns an exception into its own 500 page and logs the traceback to wsgi.errors,
    // which is error_log.
    let r = ng.get("/boom");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("Internal Server Error"));
    ng.wait_for("the traceback in error_log", |ng| {
        ng.log().contains("RuntimeError: boom in a view")
    });
    let line = ng.log_line(&["Exception on /boom [GET]"]);
    assert!(line.contains("[error]"), "{line}");

    // sys.exit() and os._exit() in a request: 502 for it, a new worker, the next one served.
    for path in ["/exit", "/hard-exit"] {
        assert_eq!(ng.get(path).status, 502, "{path}");
        assert_eq!(ng.get("/").status, 200, "after {path}");
    }
    // Workers' lines reach the log through poold (their log_rate pipe): soon, not at once.
    ng.wait_for("the SystemExit line", |ng| {
        ng.log().contains("raised SystemExit during a request")
    });

    // SIGKILL of a worker in the middle of Python code.
    let port = ng.port;
    let slow = std::thread::spawn(move || request(port, "GET", "/sleep?s=30", &[], b"").unwrap());
    let mut victim = None;
    ng.wait_for("a worker running /sleep", |ng| {
        let status = ng.get("/status").json();
        victim = status["pools"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["busy_ms"].is_u64())
            .and_then(|w| w["pid"].as_u64());
        victim.is_some()
    });
    ngx_pool_tests::procs::kill(victim.unwrap() as u32, libc::SIGKILL);
    assert_eq!(slow.join().unwrap().status, 502);
    for _ in 0..4 {
        assert_eq!(ng.get("/").status, 200);
    }
    ng.finish();
}

#[test]
fn a_raw_wsgi_app_passes_wsgiref_validate() {
    // Every warning of the validator is an error, so a lax answer fails the request.
    let mut ng = Nginx::start(Conf::new(
        &wsgi_pool(
            "raw",
            "rawapp:validated",
            "env=PYTHONWARNINGS=error::wsgiref.validate.WSGIWarning",
        ),
        "    location / { pool_pass raw; }\n    \
         location /mounted/ { pool_param SCRIPT_NAME /mounted; pool_param X_APP demo; pool_pass raw; }\n    \
         location /old/ { rewrite ^/old(/.*)$ $1 break; pool_pass raw; }",
    ));
    let r = request(
        ng.port,
        "POST",
        "/a%20b/environ?x=1&y=%20",
        &[
            ("Content-Type", "text/plain"),
            ("X-Multi", "one"),
            ("X-Multi", "two"),
            ("User-Agent", "t/1"),
        ],
        b"body bytes",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["REQUEST_METHOD"], "POST");
    assert_eq!(e["SCRIPT_NAME"], "");
    assert_eq!(e["PATH_INFO"], "/a b/environ", "percent-decoded");
    assert_eq!(e["QUERY_STRING"], "x=1&y=%20", "as sent");
    assert_eq!(e["CONTENT_TYPE"], "text/plain");
    assert_eq!(e["CONTENT_LENGTH"], "10");
    assert_eq!(e["SERVER_NAME"], "localhost");
    assert_eq!(e["SERVER_PORT"], ng.port.to_string());
    assert_eq!(e["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(e["REMOTE_ADDR"], "127.0.0.1");
    assert!(e["REMOTE_PORT"].as_str().unwrap().parse::<u16>().is_ok());
    assert_eq!(e["wsgi.url_scheme"], "http");
    assert_eq!(e["wsgi.version"], serde_json::json!([1, 0]));
    assert_eq!(
        (
            &e["wsgi.multithread"],
            &e["wsgi.multiprocess"],
            &e["wsgi.run_once"]
        ),
        (
            &serde_json::json!(false),
            &serde_json::json!(true),
            &serde_json::json!(false)
        )
    );
    assert_eq!(e["http"]["HTTP_X_MULTI"], "one, two");
    assert_eq!(e["http"]["HTTP_USER_AGENT"], "t/1");
    assert_eq!(e["http"]["HTTP_HOST"], "localhost");
    assert!(e["http"].get("HTTP_CONTENT_TYPE").is_none());
    assert_eq!(e["body"], "body bytes");

    // A pool_param mounts the app under a prefix, and reaches the environ.
    let m = ng.get("/mounted/sub/environ").json();
    assert_eq!(
        (m["SCRIPT_NAME"].as_str(), m["PATH_INFO"].as_str()),
        (Some("/mounted"), Some("/sub/environ"))
    );
    assert_eq!(m["X_APP"], "demo");
    // A rewrite is what the app sees, as with uwsgi_param PATH_INFO $document_uri.
    assert_eq!(ng.get("/old/environ").json()["PATH_INFO"], "/environ");

    // wsgi.input: readline, readline(size), readlines, iteration.
    let lines = request(
        ng.port,
        "POST",
        "/lines",
        &[],
        b"first\nsecond\nthird\nlast",
    )
    .unwrap();
    assert_eq!(
        lines.json(),
        serde_json::json!(["first\n", "sec", "ond\n", "third\n", "last"])
    );
    let it = request(ng.port, "POST", "/iterate", &[], b"a\nb\n").unwrap();
    assert_eq!(it.json(), serde_json::json!(["a\n", "b\n"]));

    // write(), then the iterable; close() called on every iterable.
    let r = ng.get("/write");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "written, then iterated\n")
    );
    let r = ng.get("/closing");
    assert_eq!(r.text(), "one\ntwo\n");

    // exc_info before the head: the app's own error response replaces the first one.
    let r = ng.get("/exc-info");
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "the app's own error page\n")
    );

    // wsgi.file_wrapper: a file streamed in blocks.
    let r = ng.get("/file?300000");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 300_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));

    // wsgi.errors: lines in error_log, tagged with the request.
    assert_eq!(ng.get("/errors").status, 204);
    ng.wait_for("the wsgi.errors line", |ng| {
        ng.log().contains("a line for error_log")
    });
    let log = ng.log();
    assert!(
        log.lines()
            .any(|l| l.contains("[error]") && l.contains("a line for error_log")),
        "{log}"
    );
    assert!(log.contains("partial and the rest"), "{log}");
    assert!(
        !log.contains("WSGIWarning") && !log.contains("AssertionError"),
        "{log}"
    );
    ng.finish();
}

#[test]
fn a_raw_apps_exceptions_give_500_or_a_cut_response_and_close_is_always_called() {
    let mut ng = Nginx::start(
        Conf::new(
            // One worker: /closed must see what the earlier requests did.
            &wsgi_pool("raw", "rawapp:app", "workers=1"),
            "    location / { pool_pass raw; }",
        )
        .workers(1),
    );
    // A header that would split the response: refused in start_response (a ValueError the
    // traceback shows), so a 500, never a forged header.
    let r = ng.get("/bad-header");
    assert_eq!(r.status, 500);
    assert!(r.header("Set-Cookie").is_none());
    // The worker's traceback reaches the log through poold (the log_rate pipe): soon.
    ng.wait_for("the header's refusal in the log", |ng| {
        ng.log().contains("holds CR, LF or NUL")
    });
    // The app was imported as the pool's user, never root, and forked as os.fork() does it:
    // its os.register_at_fork hooks ran (before in the manager, after_in_child in the worker;
    // after_in_parent only in the manager, so not in this copy).
    let f = ng.get("/forked").json();
    assert_ne!(f["imported_as"], 0, "imported as root");
    assert_eq!(f["hooks"], serde_json::json!(["before", "child"]));
    // An exception escaping the app: 500 with a plain body, the traceback in error_log with
    // the request's URI.
    let r = ng.get("/raise");
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "Internal Server Error\n");
    ng.wait_for("the failure and its traceback in the log", |ng| {
        let log = ng.log();
        log.contains("the WSGI app rawapp:app failed:")
            && log.contains(": | RuntimeError: raised by the raw app")
    });
    let line = ng.log_line(&["the WSGI app rawapp:app failed:", "/raise"]);
    let log = ng.log();
    assert!(line.contains("[error]"), "{line}");
    // The traceback keeps its lines, each a log line of its own with poold's prefix.
    assert!(
        log.lines().any(|l| l.contains("[error]")
            && l.contains(": | RuntimeError: raised by the raw app")),
        "{log}"
    );

    // An exception after the head was handed over (exc_info re-raised, or one in the middle of
    // the body): the response is cut short if nginx had sent the head, else it is a 500; never
    // a complete-looking answer. close() is still called.
    for path in ["/late-exc-info", "/fail-midway"] {
        match request(ng.port, "GET", path, &[], b"") {
            Err(_) => {}
            Ok(r) => assert_eq!(r.status, 500, "{path}: {r:?}"),
        }
    }
    // A client that goes away mid-stream: the app's iterable is closed all the same.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 64];
        assert!(s.read(&mut first).unwrap() > 0);
    }
    ng.wait_for("the abandoned iterable closed", |ng| {
        ng.get("/closed").json()["slow"] == 1
    });
    assert_eq!(ng.get("/closing").status, 200);
    let closed = ng.get("/closed").json();
    assert_eq!(closed["midway"], 1);
    assert_eq!(closed["closing"], 1);
    ng.finish();
}

#[test]
fn a_django_project_runs_unmodified() {
    let ng = Nginx::start(Conf::new(
        &wsgi_pool("django", "djangoapp.wsgi:application", ""),
        "    location / { pool_pass django; }\n    \
         location /shop/ { pool_param SCRIPT_NAME /shop; pool_pass django; }",
    ));
    let r = ng.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from django\n"));
    let j = ng.get("/json?q=ok").json();
    assert_eq!(
        (j["path"].as_str(), j["q"].as_str()),
        (Some("/json"), Some("ok"))
    );
    // Mounted under a prefix: Django sees SCRIPT_NAME and routes on the rest.
    let j = ng.get("/shop/json").json();
    assert_eq!(
        (j["path"].as_str(), j["script"].as_str()),
        (Some("/shop/json"), Some("/shop"))
    );

    let r = request(
        ng.port,
        "POST",
        "/form",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=Grace&tag=a&tag=b",
    )
    .unwrap();
    assert_eq!(r.json()["name"], "Grace");
    assert_eq!(r.json()["tags"], serde_json::json!(["a", "b"]));

    let mut body =
        b"--B0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.txt\"\r\n\r\n"
            .to_vec();
    body.extend_from_slice(&[b'z'; 5000]);
    body.extend_from_slice(b"\r\n--B0--\r\n");
    let r = request(
        ng.port,
        "POST",
        "/upload",
        &[("Content-Type", "multipart/form-data; boundary=B0")],
        &body,
    )
    .unwrap();
    assert_eq!(
        (r.json()["filename"].as_str(), r.json()["size"].as_u64()),
        (Some("f.txt"), Some(5000))
    );

    assert!(ng
        .get("/cookie")
        .header("Set-Cookie")
        .unwrap()
        .starts_with("flavour=oat;"));
    let first = ng.get("/session");
    let cookie = first
        .header("Set-Cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = request(ng.port, "GET", "/session", &[("Cookie", &cookie)], b"").unwrap();
    assert_eq!(r.json()["n"], 2);
    let r = ng.get("/go");
    assert_eq!((r.status, r.header("Location")), (302, Some("/")));
    assert_eq!(ng.get("/nowhere").status, 404);
    let r = ng.get("/stream");
    assert_eq!(r.text(), "tick 0\ntick 1\ntick 2\n");
    // Django's own 500 page, its log line in error_log through wsgi.errors.
    assert_eq!(ng.get("/boom").status, 500);
    ng.finish();
}

/// What a response must agree on between servers: status, headers but the ones each server
/// sets its own way, body.
#[test]
fn flask_under_the_pool_answers_as_under_gunicorn() {
    let gunicorn = ngx_pool_tests::Gunicorn::start("flaskapp:app", &["-w", "2"]);
    let peer = ngx_pool_tests::free_port();
    let ng = Nginx::start(Conf::new(
        &format!(
            "{}\n    server {{ listen 127.0.0.1:{peer}; location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
            wsgi_pool("flask", "flaskapp:app", ""),
            gunicorn.port
        ),
        "    location / { pool_pass flask; }",
    ));
    let upload = {
        let mut b =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n"
                .to_vec();
        b.extend((0..70_000u32).map(|i| (i % 256) as u8));
        b.extend_from_slice(b"\r\n--XyZ--\r\n");
        b
    };
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);
    let cases: Vec<Case> = vec![
        ("GET", "/", vec![], vec![]),
        ("HEAD", "/", vec![], vec![]),
        ("GET", "/json?a=1&b=%C3%A9", vec![], vec![]),
        (
            "POST",
            "/form",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            b"name=x&tag=1&tag=2".to_vec(),
        ),
        (
            "POST",
            "/upload",
            vec![("Content-Type", "multipart/form-data; boundary=XyZ")],
            upload,
        ),
        ("POST", "/digest", vec![], vec![7u8; 200_000]),
        ("GET", "/cookie", vec![], vec![]),
        ("GET", "/go", vec![], vec![]),
        ("GET", "/nowhere", vec![], vec![]),
        ("GET", "/stream?n=5", vec![], vec![]),
        ("GET", "/big?bytes=500000", vec![], vec![]),
        ("GET", "/boom", vec![], vec![]),
        ("DELETE", "/json", vec![], vec![]),
        (
            "GET",
            "/json",
            vec![("If-None-Match", "\"x\""), ("Accept", "application/json")],
            vec![],
        ),
    ];
    for (method, path, headers, body) in &cases {
        let ours = request(ng.port, method, path, headers, body).unwrap();
        let theirs = request(peer, method, path, headers, body).unwrap();
        let (a, b) = (comparable(&ours), comparable(&theirs));
        assert_eq!(a.0, b.0, "{method} {path}: status");
        assert_eq!(a.1, b.1, "{method} {path}: headers");
        if let (Some(x), Some(y)) = (
            ours.header("Content-Length"),
            theirs.header("Content-Length"),
        ) {
            assert_eq!(x, y, "{method} {path}: Content-Length");
        }
        assert!(
            a.2 == b.2,
            "{method} {path}: bodies differ:\n{}\n---\n{}",
            ours.text(),
            theirs.text()
        );
    }
    ng.finish();
    drop(gunicorn);
}

fn parallel_load(
    port: u16,
    path: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u32, Vec<String>)> {
    std::thread::spawn(move || {
        let mut ok = 0;
        let mut bad = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match request(port, "GET", path, &[], b"") {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => bad.push(format!("{} {}", r.status, r.text())),
                Err(e) => bad.push(e.to_string()),
            }
        }
        (ok, bad)
    })
}

#[test]
fn an_import_error_is_503_until_fixed_and_a_reload_deploys_new_code_without_a_failed_request() {
    let app_dir = ngx_pool_tests::temp_prefix();
    let app = app_dir.join("deployed.py");
    std::fs::write(
        &app,
        "def app(environ, start_response):\n    return [b'no colon'\n",
    )
    .unwrap();
    let mut conf = Conf::new(
        &format!(
            "    pool web handler=wsgi:deployed:app venv={} chdir={} workers=2;",
            python_env().display(),
            app_dir.display()
        ),
        "    location / { pool_pass web; }",
    );
    // Nothing to attach to until the app imports.
    conf.pools = 0;
    let mut ng = Nginx::start(conf);
    let r = ng.get("/");
    assert_eq!((r.status, r.header("Retry-After")), (503, Some("1")));
    let log = ng.log();
    assert!(
        log.contains("cannot load the WSGI app deployed:app:"),
        "{log}"
    );
    assert!(log.contains("SyntaxError"), "{log}");
    // Retried with a growing delay; the traceback is logged whole once, then shortened.
    ng.wait_for("three failed loads", |ng| {
        ng.log()
            .matches("could not load its handler; trying again")
            .count()
            >= 3
    });
    let log = ng.log();
    assert_eq!(log.matches("deployed.py\", line 2").count(), 1, "{log}");
    assert!(
        log.contains("SyntaxError: '[' was never closed (attempt 2; the whole text is above"),
        "{log}"
    );

    // Fixed on disk: poold's retries pick it up, no reload needed.
    let version = |v: &str| {
        format!(
            "def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'{v}']\n"
        )
    };
    std::fs::write(&app, version("v1")).unwrap();
    ng.wait_for("the fixed app to serve", |ng| ng.get("/").text() == "v1");

    // A deploy: new code, nginx -s reload while clients keep asking; none of them fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| parallel_load(ng.port, "/", stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&app, version("v2")).unwrap();
    ng.reload(None);
    ng.wait_for("the new code to serve", |ng| ng.get("/").text() == "v2");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for c in clients {
        let (ok, bad) = c.join().unwrap();
        assert!(bad.is_empty(), "failed during the deploy: {bad:?}");
        served += ok;
    }
    assert!(served > 20, "the load ran ({served} requests)");
    ng.finish();
    let _ = std::fs::remove_dir_all(&app_dir);
}

#[test]
fn a_1_gib_upload_and_a_1_gib_download_through_flask_in_constant_memory() {
    use ngx_pool_tests::memory::{assert_bounded, pool_workers, RssWatch};
    const GIB: u64 = 1 << 30;
    let ng = Nginx::start(Conf::new(
        &wsgi_pool("flask", "flaskapp:app", "workers=1 arena=32m timeout=10m"),
        "    location / { pool_pass flask; client_max_body_size 2g; }",
    ));
    let byte = |i: u64| (i ^ (i >> 9)) as u8;
    let watched = || {
        let mut pids = pool_workers(&ng);
        pids.extend(ng.worker_pids());
        RssWatch::new(pids)
    };
    let watch = watched();
    let up = exchange_streamed(ng.port, "POST", "/digest", GIB, byte, 1 << 16, |_| {}).unwrap();
    assert_eq!(up.status, 200);
    let j: serde_json::Value = serde_json::from_slice(&up.start).unwrap();
    assert_eq!(j["size"], GIB);
    assert_eq!(j["sha256"], ngx_pool_tests::http::sha256_of(GIB, byte));
    assert_bounded("1 GiB upload", &watch.finish(), 32 * 1024);

    let watch = watched();
    let down = exchange_streamed(
        ng.port,
        "GET",
        &format!("/big?bytes={GIB}"),
        0,
        |_| 0,
        1 << 16,
        |_| {},
    )
    .unwrap();
    assert!(down.complete);
    assert_eq!(down.body_len, GIB);
    assert_eq!(down.sha256, ngx_pool_tests::http::sha256_of(GIB, |_| b'x'));
    assert_bounded("1 GiB download", &watch.finish(), 32 * 1024);
    ng.finish();
}

#[test]
fn a_leaking_app_is_recycled_by_max_rss_and_preload_off_imports_in_each_worker() {
    let mut ng = Nginx::start(
        Conf::new(
            &format!(
                "{}\n{}",
                wsgi_pool("leaky", "flaskapp:app", "workers=1 max_rss=64m"),
                wsgi_pool("late", "flaskapp:app", "workers=2 preload=off")
            ),
            "    location / { pool_pass leaky; }\n    location /late/ { pool_param SCRIPT_NAME /late; pool_pass late; }",
        )
        .workers(1),
    );
    let first = ng.get("/leak?mb=48").json();
    assert_eq!(first["held_mb"], 48);
    // That request left the worker above max_rss: it retires, a fresh one (nothing held)
    // serves next, and no request failed.
    ng.wait_for("a fresh worker", |ng| {
        ng.get("/pid").text().parse::<u64>().ok() != first["pid"].as_u64()
    });
    let again = ng.get("/leak?mb=8").json();
    assert_eq!(again["held_mb"], 8, "the hoard went with the old worker");
    // (Said once poold reaped the old one, which may be after its replacement served.)
    ng.wait_for("the retirement's line", |ng| ng.log().contains("max_rss"));

    // preload=off: the manager only starts Python; each worker imports the app itself.
    assert_eq!(ng.get("/late/").text(), "hello from flask\n");
    assert!(ng
        .log()
        .contains("WSGI app flaskapp:app to be imported in each worker (preload=off)"));
    ng.finish();
}

#[test]
fn bad_python_settings_are_named_by_nginx_t_or_at_start() {
    let venv = python_env();
    let apps = python_apps();
    // A venv whose interpreter is not there (moved or copied without it).
    let hollow = ngx_pool_tests::temp_prefix();
    std::fs::write(
        hollow.join("pyvenv.cfg"),
        "home = /usr/bin\nversion = 3.12.1\n",
    )
    .unwrap();
    for (params, reason) in [
        (
            "handler=wsgi:my-app".to_string(),
            "invalid WSGI app \"my-app\" (expected wsgi:MODULE:CALLABLE".to_string(),
        ),
        (
            "handler=wsgi:a:b venv=/nonexistent".into(),
            "venv \"/nonexistent\" is not a directory".into(),
        ),
        (
            "handler=wsgi:a:b venv=/tmp".into(),
            "venv \"/tmp\" is not a virtualenv (no pyvenv.cfg".into(),
        ),
        (
            format!("handler=wsgi:a:b venv={}", hollow.display()),
            format!(
                "venv \"{}\" has no interpreter: {}/bin/python is not an executable file",
                hollow.display(),
                hollow.display()
            ),
        ),
        (
            "handler=wsgi:a:b python=/nonexistent/python3".into(),
            "python \"/nonexistent/python3\" is not an executable file".into(),
        ),
        (
            format!(
                "handler=wsgi:a:b python=/usr/bin/python3 venv={}",
                venv.display()
            ),
            "python=\"/usr/bin/python3\" and venv= both name the pool's interpreter".into(),
        ),
        (
            "handler=wsgi:a:b chdir=/nonexistent".into(),
            "chdir \"/nonexistent\" is not a directory".into(),
        ),
        (
            "handler=wsgi:a:b python_path=/tmp:/nope".into(),
            "python_path \"/nope\" is not a directory".into(),
        ),
        (
            "handler=wsgi:a:b preload=maybe".into(),
            "invalid preload \"maybe\" (on or off)".into(),
        ),
        (
            "handler=wsgi:a:b env=1X=y".into(),
            "invalid env \"1X=y\"".into(),
        ),
    ] {
        let (ok, out) = ngx_pool_tests::nginx_test_config(&Conf::new(
            &format!("    pool p {params};"),
            "    location / { pool_pass p; }",
        ));
        assert!(!ok, "{params}: nginx -t passed");
        assert!(
            out.contains(&reason) && out.contains("nginx.conf:"),
            "{params}: {out}"
        );
    }

    // What only a start can tell: an interpreter the pool's user may not run (here one only
    // root may), and one without the ngx-pool package (a fresh venv). The pool answers 503,
    // the log names the interpreter (and the command that installs the package).
    let private = hollow.join("python-root-only");
    std::fs::write(&private, "#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n").unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let bare = hollow.join("bare-venv");
    let made = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&bare)
        .status()
        .unwrap();
    assert!(made.success());
    for (interpreter, want) in [
        (
            format!("python={}", private.display()),
            format!(
                "the pool's interpreter {} cannot run as user",
                private.display()
            ),
        ),
        (
            format!("venv={}", bare.display()),
            format!(
                "the pool's interpreter {}/bin/python has no ngx-pool package: install it into that Python (`{}/bin/python -m pip install ngx-pool`",
                bare.display(),
                bare.display()
            ),
        ),
    ] {
        let mut conf = Conf::new(
            &format!(
                "    pool p handler=wsgi:flaskapp:app {interpreter} chdir={};",
                apps.display()
            ),
            "    location / { pool_pass p; }",
        );
        conf.pools = 0;
        let mut ng = Nginx::start(conf);
        assert_eq!(ng.get("/").status, 503);
        ng.wait_for("the watchdog's reason", |ng| ng.log().contains(&want));
        ng.allow(&want);
        ng.allow("no socket at");
        // The workers never attach, so Nginx::start did not wait for them to be set up: count
        // their descriptors once each has tried (a worker still in init_process has fewer).
        ng.wait_for("both workers to fail to attach", |ng| {
            let log = ng.log();
            ng.worker_pids()
                .iter()
                .all(|pid| log.contains(&format!("{pid}#{pid}: pool \"p\": cannot attach")))
        });
        ng.count_descriptors_from_here();
        ng.finish();
    }
    let _ = std::fs::remove_dir_all(&hollow);

    // Threads started by the import: a warning, and the workers serve.
    let ng = Nginx::start(Conf::new(
        &format!(
            "    pool t handler=wsgi:threaded:app venv={} chdir={};",
            venv.display(),
            apps.display(),
        ),
        "    location / { pool_pass t; }",
    ));
    assert_eq!(
        ng.get("/").text(),
        "1 threads\n",
        "the thread stayed in the manager"
    );
    let log = ng.log();
    assert!(
        log.lines().any(|l| l.contains("[warn]")
            && l.contains("importing the app threaded:app started 1 threads")
            && l.contains("set preload=off")),
        "{log}"
    );
    ng.finish();
}

#[test]
fn a_python_worker_past_its_deadline_dies_on_sigterm_and_is_replaced() {
    // Python installs no signal handlers in the pool: SIGTERM stops a worker at once, as poold
    // expects, even in the middle of a sleep.
    let ng = Nginx::start(Conf::new(
        &wsgi_pool("flask", "flaskapp:app", "workers=1 timeout=1s"),
        "    location / { pool_pass flask; }",
    ));
    let r = ng.get("/sleep?s=20");
    assert_eq!(r.status, 504);
    assert_eq!(ng.get("/").text(), "hello from flask\n");
    let log = ng.log();
    assert!(log.contains("killed by SIGTERM"), "{log}");
    assert!(!log.contains("ignored SIGTERM"), "{log}");
    ng.finish();
}

#[test]
fn a_pool_runs_in_the_apps_own_interpreter_with_no_libpython_of_ours() {
    // `python -m ngx_pool serve`: the venv's own python is the pool manager and every worker
    // (the `ngx-pool` package with its extension, installed in the venv), as an external pool.
    let dir = ngx_pool_tests::temp_prefix();
    let apps = python_apps().display().to_string();
    let poold = ngx_pool_tests::ExternalPoold::start_in_python(
        &dir,
        "own",
        "wsgi:fanout:app",
        &["--workers", "3", "--chdir", &apps],
    );
    let ng = Nginx::start(Conf::new(
        &format!("    pool own external socket={};", poold.socket.display()),
        "    location / { pool_pass own; }",
    ));
    // The seed's view: its map fans out onto the same pool's other workers.
    let r = ng.get("/seed?n=8");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), poold.log_text());
    let j = r.json();
    assert_eq!(j["sum"], 140);
    assert!(j["workers"].as_u64().unwrap() >= 2, "no fan-out: {j}");
    // Every process of the pool is the venv's python, and none maps a libpython: the
    // interpreter is the executable itself, as under Gunicorn.
    let python = std::fs::canonicalize(python_env().join("bin/python")).unwrap();
    let mut pool = ngx_pool_tests::procs::children(poold.pid());
    pool.push(poold.pid());
    assert_eq!(pool.len(), 4, "the manager and 3 workers");
    for pid in pool {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, python, "process {pid}");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            !maps.contains("libpython"),
            "process {pid} maps a libpython"
        );
    }
    ng.finish();
}

#[test]
fn an_external_poold_binary_hands_a_wsgi_pool_to_the_apps_interpreter() {
    // `poold --handler wsgi:...` (as a systemd unit runs it): the binary, which has no Python,
    // binds the socket, drops root, and becomes the venv's `python -m ngx_pool serve`.
    let dir = ngx_pool_tests::temp_prefix();
    let venv = python_env().display().to_string();
    let apps = python_apps().display().to_string();
    let poold = ngx_pool_tests::ExternalPoold::start(
        &dir,
        "ext",
        "wsgi:flaskapp:app",
        &["--workers", "2", "--venv", &venv, "--chdir", &apps],
    );
    let ng = Nginx::start(Conf::new(
        &format!("    pool ext external socket={};", poold.socket.display()),
        "    location / { pool_pass ext; }",
    ));
    let r = ng.get("/");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "hello from flask\n"),
        "{}",
        poold.log_text()
    );
    // The same process (an exec, not a child), now the venv's interpreter.
    let exe = std::fs::read_link(format!("/proc/{}/exe", poold.pid())).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(python_env().join("bin/python")).unwrap()
    );
    ng.finish();
    drop(poold);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_cpython_on_the_machine_runs_the_app_in_its_own_interpreter() {
    // scripts/python-matrix made a venv per CPython 3.9-3.13 found (Flask and the ngx-pool
    // package built for it): one pool each, the seed's fan-out view in each.
    let matrix = ngx_pool_tests::repo_dir().join("target/py-matrix");
    let mut found = Vec::new();
    for minor in 9..=13 {
        let version = format!("3.{minor}");
        let venv = matrix.join(&version);
        if venv.join(".ngx-pool-wheel").exists() {
            found.push((minor, version, venv));
        } else {
            ngx_pool_tests::skip(
                &format!("CPython {version}"),
                &format!(
                    "no {} (scripts/python-matrix makes it where that Python is installed)",
                    venv.display()
                ),
            );
        }
    }
    if found.is_empty() {
        ngx_pool_tests::skip("the Python matrix", "no Python of it on this machine");
        return;
    }
    let apps = python_apps().display().to_string();
    // The interpreter's own libpython, where it has one (pyenv's builds do): found through
    // LD_LIBRARY_PATH, as the copy's run path still names root's home.
    let lib_of = |venv: &std::path::Path| -> String {
        let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap_or_default();
        cfg.lines()
            .find_map(|l| l.strip_prefix("home = "))
            .map(|home| format!(" env=LD_LIBRARY_PATH={}/../lib", home.trim()))
            .unwrap_or_default()
    };
    let pools: Vec<String> = found
        .iter()
        .map(|(minor, _, venv)| {
            format!(
                "    pool py3{minor} handler=wsgi:fanout:app venv={} chdir={apps} workers=2{};",
                venv.display(),
                lib_of(venv)
            )
        })
        .collect();
    let locations: Vec<String> = found
        .iter()
        .map(|(minor, version, _)| {
            format!("    location /{version}/ {{ pool_param SCRIPT_NAME /{version}; pool_pass py3{minor}; }}")
        })
        .collect();
    let ng = Nginx::start(Conf::new(&pools.join("\n"), &locations.join("\n")));
    for (_, version, venv) in &found {
        let v = ng.get(&format!("/{version}/version"));
        assert_eq!(v.status, 200, "{version}: {}", v.text());
        let v = v.json();
        assert!(
            v["version"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{version}.")),
            "{version}: {v}"
        );
        let pid = v["pid"].as_u64().unwrap();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(
            exe,
            std::fs::canonicalize(venv.join("bin/python")).unwrap(),
            "{version}: the worker is that interpreter"
        );
        let seed = ng.get(&format!("/{version}/seed?n=8"));
        assert_eq!(seed.status, 200, "{version}: {}", seed.text());
        assert_eq!(seed.json()["sum"], 140, "{version}");
        eprintln!("CPython {version}: served, the seed's map fanned out");
    }
    ng.finish();
}

#[test]
fn an_interpreter_that_cannot_run_is_named_and_the_pool_answers_503() {
    // A venv whose python fails as the pool's user (a broken install, or one in a directory that
    // user cannot enter): the pool does not start, error_log names the interpreter and why.
    let venv = ngx_pool_tests::temp_prefix();
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::write(venv.join("pyvenv.cfg"), "home = /nonexistent\n").unwrap();
    let python = venv.join("bin/python");
    std::fs::write(
        &python,
        "#!/bin/sh\necho 'cannot find the standard library' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut conf = Conf::new(
        &format!(
            "    pool broken handler=wsgi:flaskapp:app venv={} chdir={} workers=1;\n    pool ok handler=builtin:echo workers=1;",
            venv.display(),
            python_apps().display()
        ),
        "    location / { pool_pass broken; }\n    location /ok { pool_pass ok; }",
    );
    conf.pools = 1;
    let mut ng = Nginx::start(conf);
    let said = format!(
        "the pool's interpreter {} cannot run as user",
        python.display()
    );
    ng.wait_for("the interpreter named", |ng| {
        ng.log().contains(&said) && ng.log().contains("cannot find the standard library")
    });
    assert_eq!(ng.get("/").status, 503);
    assert_eq!(ng.get("/ok").status, 200);
    ng.allow(&said);
    ng.allow("no socket at");
    ng.finish();
}

#[test]
fn the_demos_flask_app_fans_out_over_its_pool_and_creates_no_process() {
    // examples/flask as scripts/run serves it (nginx-conf/demo.conf's pool line).
    let flask = ngx_pool_tests::repo_dir().join("examples/flask");
    let ng = Nginx::start(Conf::new(
        &format!(
            "    pool flask handler=wsgi:app:app venv={} chdir={} workers=2 timeout=30s;",
            python_env().display(),
            flask.display()
        ),
        "    location /flask/ { pool_param SCRIPT_NAME /flask; pool_pass flask; }",
    ));
    let before = ng.pool_processes();
    let mut ran_tasks = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let r = ng.get("/flask/fanout?n=8");
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["sum"], 140);
        ran_tasks.extend(
            j["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap()),
        );
    }
    assert_eq!(ran_tasks.len(), 2, "both workers ran tasks: {ran_tasks:?}");
    assert_eq!(
        ng.pool_processes(),
        before,
        "the fan-out created no process"
    );
    ng.finish();
}
