//! Only nginx's workers attach (issue 26, item 2): real attacks on a pool's socket by a hostile
//! local process running as nginx's `user`, from inside another pool's handler, by a flood of
//! fake attachments, and against an external pool's `--allow`.
//!
//! The attacker is tests/python/apps/attacher.py: the real handshake of an nginx worker (its
//! Hello, its eventfd), without the attachment secret. Run as root, the tests start nginx
//! (whose workers then run as `nobody`) and the attacker as `nobody` too, the same user.

use ngx_pool_channel::handshake;
use ngx_pool_channel::layout::LAYOUT_VERSION;
use ngx_pool_tests::{procs, python_apps, python_env, temp_prefix, Conf, ExternalPoold, Nginx};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
/// A user with no business with any pool.
const STRANGER: u32 = 4242;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The attacker's command line, run as `uid` (and the same gid).
fn attacker(uid: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new(python_env().join("bin/python"));
    cmd.arg(python_apps().join("attacher.py"))
        .args(args)
        .uid(uid)
        .gid(uid)
        // Killed with the test if it fails midway (Drop of `Held` kills it too).
        .process_group(0);
    cmd
}

/// One handshake as `uid` on `socket`; the attacker's report.
fn attack_once(uid: u32, socket: &Path) -> Value {
    let out = attacker(
        uid,
        &[
            "once",
            &socket.display().to_string(),
            &LAYOUT_VERSION.to_string(),
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "attacker's report ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Lines of `log` that say poold refused or closed a connection (one per burst: rate-limited).
fn refusal_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("refused pid") || l.contains("more connection(s) refused"))
        .count()
}

fn managed_socket(ng: &Nginx, pool: &str) -> std::path::PathBuf {
    ng.dir.join("logs").join(format!("pool-{pool}.sock"))
}

/// An attacker's report: it ran as nobody, got no region, and both forms of its Hello were
/// refused for want of the secret.
fn assert_refused_without_secret(report: &Value) {
    assert_eq!(report["uid"], NOBODY, "{report}");
    assert_eq!(report["got_fd"], false, "a region was handed out: {report}");
    for kind in ["long", "short"] {
        assert_eq!(
            report[kind]["status"],
            handshake::WELCOME_BAD_SECRET,
            "{kind}: {report}"
        );
    }
}

#[test]
fn a_local_process_of_nginx_s_user_gets_no_region() {
    if !is_root() {
        ngx_pool_tests::skip("peers", "needs root to run the attacker as nginx's user");
        return;
    }
    let ng = Nginx::start(Conf::new(
        "    pool a handler=builtin:echo workers=1;",
        "    location /a { pool_pass a; }",
    ));
    let socket = managed_socket(&ng, "a");
    let report = attack_once(NOBODY, &socket);
    // The nginx workers' user, so the uid passes; no secret: refused, told why.
    assert_refused_without_secret(&report);
    // Both handshakes within a second: one line, the second counted in the next.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ng.log().contains("1 more connection(s) refused") {
        assert!(Instant::now() < deadline, "no count line:\n{}", ng.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = ng.log();
    let first: Vec<&str> = log.lines().filter(|l| l.contains("refused pid")).collect();
    assert_eq!(first.len(), 1, "{log}");
    assert!(
        first[0].contains(&format!("(uid {NOBODY}, gid {NOBODY})"))
            && first[0].contains("no attachment secret"),
        "{}",
        first[0]
    );
    // nginx's own workers are unaffected.
    let r = ng.get("/a");
    assert_eq!(r.status, 200);
    ng.finish();
}

#[test]
fn a_handler_of_another_pool_gets_no_region_nor_does_its_pool_s_secret() {
    if !is_root() {
        ngx_pool_tests::skip("peers", "needs root (the pools run as nobody)");
        return;
    }
    let ng = Nginx::start(Conf::new(
        &format!(
            "    pool a handler=builtin:echo workers=1;\n    pool b handler=wsgi:attacher:app venv={} chdir={} workers=1;",
            python_env().display(),
            python_apps().display()
        ),
        "    location /a { pool_pass a; }\n    location /b { pool_pass b; }",
    ));
    let socket = managed_socket(&ng, "a");
    let r = ng.get(&format!(
        "/b?socket={}&version={LAYOUT_VERSION}",
        socket.display()
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let report: Value = serde_json::from_slice(&r.body).unwrap();
    assert_refused_without_secret(&report);
    // A pool's code may find its own poold's secret in memory: each poold has its own, so it
    // opens no other pool. (Read here as root from poold's descriptor; the right one attaches.)
    let secret_of = |sock: &Path| -> handshake::Secret {
        let pid = ng
            .poolds()
            .into_iter()
            .find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*sock.display().to_string())
                })
            })
            .expect("the pool's poold");
        std::fs::read(format!("/proc/{pid}/fd/5"))
            .unwrap()
            .try_into()
            .expect("32 bytes")
    };
    let (secret_a, secret_b) = (secret_of(&socket), secret_of(&managed_socket(&ng, "b")));
    assert_ne!(secret_a, secret_b);
    let (w, memfd, _, _) =
        handshake::attach_blocking(&socket, LAYOUT_VERSION, Some(&secret_b)).unwrap();
    assert_eq!(
        (w.a, memfd.is_none()),
        (handshake::WELCOME_BAD_SECRET, true)
    );
    let (w, memfd, _, _) =
        handshake::attach_blocking(&socket, LAYOUT_VERSION, Some(&secret_a)).unwrap();
    assert_eq!((w.a, memfd.is_some()), (handshake::WELCOME_OK, true));
    assert!(
        ng.log().contains("attachment secret, so not a worker"),
        "{}",
        ng.log()
    );
    assert_eq!(ng.get("/a").status, 200);
    ng.finish();
}

#[test]
fn fake_attachments_by_nginx_s_user_do_not_keep_reloaded_workers_out() {
    if !is_root() {
        ngx_pool_tests::skip("peers", "needs root to run the attacker as nginx's user");
        return;
    }
    let mut ng = Nginx::start(Conf::new(
        "    pool a handler=builtin:echo workers=1;",
        "    location /a { pool_pass a; }",
    ));
    let socket = managed_socket(&ng, "a");
    // 300 connections (the table has 256 slots, 2 taken by nginx), held open.
    // The holder: the handshakes (and some silent connections) kept open until dropped.
    let mut held = procs::Owned::spawn(
        attacker(
            NOBODY,
            &[
                "hold",
                &socket.display().to_string(),
                &LAYOUT_VERSION.to_string(),
                "300",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped()),
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(held.child().stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        report["regions"], 0,
        "fake attachments took slots: {report}"
    );
    // The new workers of a reload attach (before: the table was full, every one refused) and
    // are served, while the attacker still holds its connections.
    let pool_before = ng.poold();
    ng.reload(None);
    assert_eq!(
        ng.poold(),
        pool_before,
        "the pool was not kept across the reload"
    );
    for _ in 0..4 {
        assert_eq!(ng.get("/a").status, 200);
    }
    assert!(
        !ng.log().contains("no room for another nginx worker"),
        "{}",
        ng.log()
    );
    // Refusals were logged a line a second at most, not one each (the silent quarter is closed
    // after its hello wait, counted the same way).
    let lines = refusal_lines(&ng.log());
    assert!((1..=10).contains(&lines), "{lines} lines:\n{}", ng.log());
    drop(held);
    ng.finish();
}

#[test]
fn an_external_pool_admits_the_user_allow_names_and_refuses_another() {
    if !is_root() {
        ngx_pool_tests::skip("peers", "needs root to connect as other users");
        return;
    }
    let dir = temp_prefix();
    let poold = ExternalPoold::start(
        &dir,
        "ext",
        "builtin:echo",
        &["--workers", "1", "--allow", "nobody"],
    );
    // The allow list is the check now: anyone may connect, and is judged by its credentials.
    let mode = std::fs::metadata(&poold.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666);
    let stranger = attack_once(STRANGER, &poold.socket);
    assert_eq!(stranger["got_fd"], false, "{stranger}");
    assert_eq!(
        stranger["long"]["status"],
        handshake::WELCOME_BAD_USER,
        "{stranger}"
    );
    let allowed = attack_once(NOBODY, &poold.socket);
    assert_eq!(allowed["got_fd"], true, "{allowed}");
    assert_eq!(
        allowed["long"]["status"],
        handshake::WELCOME_OK,
        "{allowed}"
    );
    let log = poold.log_text();
    assert!(
        log.contains("refused pid")
            && log.contains(&format!(
                "(uid {STRANGER}, gid {STRANGER}): not a user allowed"
            )),
        "{log}"
    );
    // nginx's workers (nobody) attach and are served.
    let ng = Nginx::start(Conf::new(
        &format!("    pool ext external socket={};", poold.socket.display()),
        "    location /ext { pool_pass ext; }",
    ));
    assert_eq!(ng.get("/ext").status, 200);
    ng.finish();
    drop(poold);
    let _ = std::fs::remove_dir_all(&dir);
}
