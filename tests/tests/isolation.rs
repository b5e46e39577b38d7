//! A pool's code cannot crash nginx, reach another pool's traffic, regain root or leave a
//! process behind (issue 26): each attack runs for real, as a hostile local process or handler
//! would, against a real nginx and poold.

use ngx_pool_tests::{Conf, Nginx};
use std::os::unix::fs::OpenOptionsExt;

/// The descriptors of process `pid` that are memfds of ngx-pool regions (`/memfd:ngx-pool:…`).
fn region_fds(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:ngx-pool:"))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_region_cannot_be_truncated_under_nginx() {
    let ng = Nginx::start(
        Conf::new(
            "    pool p handler=builtin:echo workers=2;",
            "    location /p { pool_pass p; }",
        )
        .workers(1),
    );
    let worker = ng.worker_pids()[0];
    let fds = region_fds(worker);
    assert!(!fds.is_empty(), "the nginx worker maps the pool's region");
    for path in &fds {
        // The attack of a process that got hold of the memfd (here through /proc, as root, the
        // strongest such process): shrink it to nothing, or grow it.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .expect("open the memfd through /proc");
        let len = f.metadata().unwrap().len();
        assert!(f.set_len(0).is_err(), "a region was truncated");
        assert!(f.set_len(len + 4096).is_err(), "a region was grown");
        assert_eq!(f.metadata().unwrap().len(), len);
    }
    // nginx and the pool go on.
    for _ in 0..20 {
        assert_eq!(ng.get("/p").status, 200);
    }
    assert_eq!(ng.worker_pids(), vec![worker], "the nginx worker lived");
    ng.finish();
}

#[test]
fn a_pool_param_named_http_x_replaces_the_clients_own_header() {
    let apps = ngx_pool_tests::python_apps();
    let ng = Nginx::start(
        Conf::new(
            &format!(
                "    pool echo handler=builtin:echo workers=1;\n    pool raw handler=wsgi:rawapp:app venv={} chdir={} workers=1;\n    pool_param HTTP_X_FORWARDED_PROTO $scheme;\n    pool_param HTTP_X_FORWARDED_HOST $host;",
                ngx_pool_tests::python_env().display(),
                apps.display()
            ),
            "    location /echo { pool_pass echo; }\n    location /raw/ { pool_pass raw; }",
        )
        .workers(1),
    );
    let spoof = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Other", "kept"),
    ];
    // A native handler sees the operator's values as parameters and no client header of
    // those names; other headers pass.
    let r = ngx_pool_tests::http::request(ng.port, "GET", "/echo", &spoof, b"").unwrap();
    let doc = r.json();
    let headers: Vec<String> = doc["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(!headers.contains(&"x-forwarded-proto".into()), "{doc}");
    assert!(!headers.contains(&"x-forwarded-host".into()), "{doc}");
    assert!(headers.contains(&"x-other".into()), "{doc}");
    assert_eq!(doc["params"]["HTTP_X_FORWARDED_PROTO"], "http", "{doc}");
    // A WSGI app (what Werkzeug's ProxyFix reads) sees one value, the operator's.
    let r = ngx_pool_tests::http::request(ng.port, "GET", "/raw/environ", &spoof, b"").unwrap();
    let env = r.json();
    assert_eq!(env["http"]["HTTP_X_FORWARDED_PROTO"], "http", "{env}");
    assert_eq!(env["http"]["HTTP_X_FORWARDED_HOST"], "localhost", "{env}");
    assert_eq!(env["http"]["HTTP_X_OTHER"], "kept", "{env}");
    ng.finish();
}
