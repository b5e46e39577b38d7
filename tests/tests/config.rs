//! `nginx -t` rejects every bad directive, naming file, line and reason.

use ngx_pool_tests::{nginx_test_config, Conf, Nginx};

fn rejected(http: &str, server: &str, reason: &str) {
    let (ok, out) = nginx_test_config(&Conf::new(http, server));
    assert!(!ok, "nginx -t accepted:\n{http}\n{server}");
    assert!(
        out.contains(reason),
        "reason \"{reason}\" missing in:\n{out}"
    );
    assert!(out.contains("nginx.conf:"), "file:line missing in:\n{out}");
}

const LOC: &str = "    location /x { pool_pass app; }";

#[test]
fn good_configuration_passes() {
    let (ok, out) = nginx_test_config(&Conf::new(
        "    pool app handler=builtin:echo workers=2 queue=10 timeout=5s;",
        LOC,
    ));
    assert!(ok, "{out}");
    assert!(out.contains("test is successful"));
}

#[test]
fn unknown_pool_in_pool_pass() {
    rejected(
        "    pool app handler=builtin:echo;",
        "    location /y { pool_pass nope; }",
        "unknown pool \"nope\"",
    );
}

#[test]
fn duplicate_pool_name() {
    rejected(
        "    pool app handler=builtin:echo;\n    pool app handler=builtin:cpu;",
        LOC,
        "duplicate pool \"app\"",
    );
}

#[test]
fn bad_number() {
    rejected(
        "    pool app handler=builtin:echo workers=many;",
        LOC,
        "invalid workers \"many\"",
    );
    rejected(
        "    pool app handler=builtin:echo queue=-1;",
        LOC,
        "invalid queue",
    );
}

#[test]
fn bad_pool_timeout() {
    rejected(
        "    pool app handler=builtin:echo;",
        "    location /x { pool_pass app; pool_timeout soon; }",
        "invalid pool_timeout \"soon\"",
    );
    rejected(
        "    pool app handler=builtin:echo;\n    pool_timeout 1s;\n    pool_timeout 2s;",
        LOC,
        "is duplicate",
    );
}

#[test]
fn bad_time() {
    rejected(
        "    pool app handler=builtin:echo timeout=soon;",
        LOC,
        "invalid timeout \"soon\"",
    );
}

#[test]
fn unknown_handler() {
    rejected(
        "    pool app handler=builtin:nope;",
        LOC,
        "unknown handler \"builtin:nope\"",
    );
    rejected("    pool app handler=python:app;", LOC, "unknown handler");
}

#[test]
fn unknown_parameter() {
    rejected(
        "    pool app handler=builtin:echo colour=blue;",
        LOC,
        "invalid parameter \"colour=blue\"",
    );
}

#[test]
fn pool_pass_outside_a_location_and_missing_handler() {
    rejected("    pool app;", LOC, "needs handler=");
    rejected(
        "    pool app handler=builtin:echo;\n    pool_pass app;",
        LOC,
        "\"pool_pass\" directive is not allowed here",
    );
}

#[test]
fn nginx_t_starts_no_poold() {
    // This test's own prefix: other tests' poolds come and go meanwhile.
    let dir = ngx_pool_tests::temp_prefix();
    let (ok, said) = ngx_pool_tests::nginx_test_config_in(
        &dir,
        &Conf::new("    pool app handler=builtin:echo;", LOC),
    );
    assert!(ok, "{said}");
    assert!(!said.contains("started poold"), "{said}");
    let log = std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default();
    assert!(!log.contains("started poold"), "{log}");
    assert!(
        !dir.join("logs/pool-app.sock").exists(),
        "a socket was made"
    );
    let socket = dir.join("logs/pool-app.sock").display().to_string();
    assert_eq!(
        ngx_pool_tests::procs::with_arg_containing(&socket),
        Vec::<u32>::new()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_queue_timeout() {
    rejected(
        "    pool app handler=builtin:echo queue_timeout=never;",
        LOC,
        "invalid queue_timeout \"never\"",
    );
}

#[test]
fn bad_spin() {
    rejected(
        "    pool app handler=builtin:echo spin=1s;",
        LOC,
        "invalid spin \"1s\" (a time up to 10ms",
    );
}

#[test]
fn a_prefix_without_logs_puts_sockets_in_the_runtime_directory() {
    // Laid out like Debian's (root-owned prefix, no logs/): the default socket cannot go in
    // logs/, so it goes to /run/ngx-pool, which the master creates.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        ngx_pool_tests::skip(
            "the /run/ngx-pool socket",
            "needs root to create /run/ngx-pool",
        );
        return;
    }
    let name = format!("layout{}", std::process::id());
    let mut conf = Conf::new(
        &format!("    pool {name} handler=builtin:echo workers=1;"),
        &format!("    location /e {{ pool_pass {name}; }}"),
    );
    conf.prefix_without_logs = true;
    let ng = Nginx::start(conf);
    assert!(!ng.dir.join("logs").exists());
    let socket = std::path::PathBuf::from(format!("/run/ngx-pool/{name}.sock"));
    assert!(socket.exists(), "{}", ng.log());
    assert_eq!(ng.get("/e").status, 200);
    ng.finish();
    assert!(!socket.exists(), "the socket is removed at exit");
    let left = ngx_pool_tests::procs::with_arg_containing(&socket.display().to_string());
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[test]
fn a_socket_in_a_missing_directory_fails_nginx_t_with_what_to_do() {
    let (ok, out) = nginx_test_config(&Conf::new(
        "    pool p handler=builtin:echo socket=/nonexistent/dir/p.sock;",
        "    location / { pool_pass p; }",
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains("the directory of socket \"/nonexistent/dir/p.sock\" does not exist (create it, or choose another socket=)"),
        "{out}"
    );
    assert!(out.contains("nginx.conf:"), "{out}");
}

#[test]
fn the_readme_shows_poolds_help_as_it_is() {
    let readme = std::fs::read_to_string(ngx_pool_tests::repo_dir().join("README.md")).unwrap();
    let block = readme
        .split_once("`poold --help`:\n\n```\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .map(|(b, _)| b)
        .expect("a poold --help block in the README");
    let out = std::process::Command::new(ngx_pool_tests::poold_path())
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(
        block,
        String::from_utf8_lossy(&out.stdout),
        "README's poold --help is stale: paste the output of poold --help"
    );
}

#[test]
fn the_systemd_unit_for_external_pools_passes_systemd_analyze_verify() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("no systemd-analyze here: skipped");
        return;
    };
    assert!(out.status.success());
    // The unit as packaged, with poold where this build has it (verify checks ExecStart).
    let unit = std::fs::read_to_string(
        ngx_pool_tests::repo_dir().join("packaging/systemd/ngx-pool@.service"),
    )
    .unwrap()
    .replace(
        "/usr/lib/ngx-pool/poold",
        &ngx_pool_tests::poold_path().display().to_string(),
    );
    let dir = ngx_pool_tests::temp_prefix();
    std::fs::write(dir.join("ngx-pool@.service"), unit).unwrap();
    std::os::unix::fs::symlink("ngx-pool@.service", dir.join("ngx-pool@app.service")).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .args(["verify"])
        .arg(dir.join("ngx-pool@app.service"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn bad_buffering_directives_are_named_by_nginx_t() {
    let pool = "    pool p handler=builtin:hello;";
    for (directive, reason) in [
        ("pool_buffering maybe;", "it must be \"on\" or \"off\""),
        ("pool_request_buffering 1;", "it must be \"on\" or \"off\""),
        ("pool_buffering on; pool_buffering off;", "is duplicate"),
        ("pool_buffers 1 16k;", "invalid number of buffers"),
        ("pool_buffers 8 lots;", "invalid size \"lots\""),
        ("pool_buffers 8 0;", "size must not be 0"),
        ("pool_max_header_size 10;", "must be at least 64"),
        ("pool_temp_file_write_size 1x;", "invalid size"),
        // Sizes that disagree, as proxy_* checks them.
        (
            "pool_buffers 4 16k; pool_busy_buffers_size 64k;",
            "must be less than the size of all \"pool_buffers\" minus one buffer",
        ),
        (
            "pool_max_temp_file_size 1k;",
            "must be equal to zero to disable temporary files usage",
        ),
    ] {
        rejected(
            pool,
            &format!("    location / {{ {directive} pool_pass p; }}"),
            reason,
        );
    }
    let (ok, out) = nginx_test_config(&Conf::new(
        pool,
        "    pool_temp_path pool_tmp 1 2;\n    location / { pool_buffering off; pool_request_buffering off; pool_buffers 16 8k; pool_max_temp_file_size 0; pool_pass p; }",
    ));
    assert!(ok, "{out}");
}

#[test]
fn a_duplicate_parameter_a_huge_arena_and_a_long_socket_path_fail_nginx_t() {
    rejected(
        "    pool p handler=builtin:echo handler=builtin:hello;",
        "",
        "duplicate parameter \"handler=\"",
    );
    rejected(
        "    pool p handler=builtin:echo workers=2 workers=3;",
        "",
        "duplicate parameter \"workers=\"",
    );
    rejected(
        "    pool p handler=builtin:echo arena=99999999g;",
        "",
        "invalid arena \"99999999g\"",
    );
    let long = format!("/tmp/{}.sock", "s".repeat(120));
    rejected(
        &format!("    pool p handler=builtin:echo socket={long};"),
        "",
        "a unix socket's path has at most 107 bytes",
    );
}

#[test]
fn asgi_settings_out_of_place_fail_nginx_t() {
    for (pool, reason) in [
        (
            "    pool p handler=wsgi:app:app concurrency=8;",
            "concurrency= is only for asgi: pools (a wsgi worker runs one request at a time)",
        ),
        (
            "    pool p handler=builtin:echo lifespan=off;",
            "lifespan= is only for asgi: pools",
        ),
        (
            "    pool p handler=asgi:main:app lifespan=sometimes;",
            "invalid lifespan \"sometimes\" (auto, on or off)",
        ),
        (
            "    pool p handler=asgi:main:app workers=100 concurrency=1000;",
            "too many requests at once: workers=100 x concurrency=1000",
        ),
        (
            "    pool p handler=asgi:main-app;",
            "invalid ASGI app \"main-app\"",
        ),
    ] {
        rejected(pool, "", reason);
    }
}
