//! No process outlives its pool (issue 26): what a handler forks, a setsid'd daemon included,
//! is gone after its poold is SIGKILLed and after `nginx -s stop`, both with the pool's cgroup
//! v2 and without one (the watchdog and poold as subreapers, forced by NGX_POOL_NO_CGROUP=1);
//! and the pool's cgroup limits (`memory_max=`, `pids_max=`, `cpu_weight=`) where the kernel
//! has the controllers, skipped with a printed reason where it has not.

use ngx_pool_tests::{nginx_test_config, procs, Conf, Nginx};
use std::path::PathBuf;

/// How the pool keeps its processes together in a test.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Cgroup,
    /// No cgroup (NGX_POOL_NO_CGROUP=1): the subreapers alone.
    Subreaper,
}

/// Processes the pool's code started: killed when dropped (a failed test must not leave
/// `sleep 3600`s behind; they are no descendant of nginx once orphaned), if they are still ours.
struct Spawned(Vec<u32>);

impl Spawned {
    fn alive(&self) -> Vec<u32> {
        self.0.iter().copied().filter(|p| is_ours(*p)).collect()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for p in self.alive() {
            procs::kill(p, libc::SIGKILL);
        }
    }
}

/// `pid` is a live `sleep 3600` (not another process that got its pid since).
fn is_ours(pid: u32) -> bool {
    procs::alive(pid) && procs::cmdline(pid).starts_with("sleep 3600")
}

/// The pool's cgroup v2 that `pid` is in, if it is in one.
fn pool_cgroup_of(pid: u32) -> Option<PathBuf> {
    cgroup_of(pid).filter(|d| {
        d.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ngx-pool-"))
    })
}

/// The cgroup v2 directory of `pid` (its `0::` line under the cgroup2 mount), if any.
fn cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split(' ').nth(4).map(String::from))?
    })?;
    Some(PathBuf::from(mount).join(path.trim_start_matches('/')))
}

fn conf(mode: Mode, http: &str) -> Conf {
    let mut c = Conf::new(http, "    location /spawn { pool_pass sp; }");
    if mode == Mode::Subreaper {
        c.env.push(("NGX_POOL_NO_CGROUP".into(), "1".into()));
    }
    c
}

/// Starts nginx with a `builtin:spawn` pool in `mode`; `None` (with a printed SKIPPED line)
/// where the machine has no writable cgroup v2 for the cgroup mode.
fn start(mode: Mode) -> Option<Nginx> {
    let mut ng = Nginx::start(conf(mode, "    pool sp handler=builtin:spawn workers=2;"));
    ng.allow("was killed by SIGKILL; starting a new one");
    let log = ng.log();
    match mode {
        Mode::Cgroup => {
            if let Some(line) = log.lines().find(|l| l.contains("no cgroup for the pool")) {
                ngx_pool_tests::skip(
                    &format!("orphans ({mode:?})"),
                    &format!("no writable cgroup v2 here: {line}"),
                );
                ng.finish();
                return None;
            }
            let poold = ng.poold();
            let watchdog = ng.watchdogs()[0];
            let cg = cgroup_of(poold).expect("poold's cgroup");
            assert_eq!(
                cg.file_name().unwrap().to_string_lossy(),
                format!("ngx-pool-sp-{watchdog}"),
                "poold is in the pool's cgroup"
            );
            assert_ne!(cgroup_of(watchdog), Some(cg), "the watchdog stays outside");
        }
        Mode::Subreaper => assert!(
            log.contains("no cgroup for the pool (NGX_POOL_NO_CGROUP=1)"),
            "{log}"
        ),
    }
    Some(ng)
}

/// Makes the pool's workers start children (plain `sleep`s, children of the worker) and
/// daemons (`sleep`s in a session of their own, orphaned at once, ignoring SIGTERM).
fn spawn_some(ng: &Nginx, into: &mut Spawned) {
    for daemon in [false, true, false, true] {
        let path = if daemon { "/spawn?daemon=1" } else { "/spawn" };
        let r = ng.get(path);
        assert_eq!(r.status, 200, "{path}");
        let pid: u32 = String::from_utf8_lossy(&r.body).trim().parse().unwrap();
        // (A daemon's shell may answer before its child has run `sleep`.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !is_ours(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            is_ours(pid),
            "{path} started {pid}: {}",
            procs::cmdline(pid)
        );
        if daemon {
            // SAFETY: getsid has no memory-safety preconditions.
            let sid = |p: u32| unsafe { libc::getsid(p as i32) };
            assert_ne!(
                sid(pid),
                sid(ng.poold()),
                "daemon {pid} has a session of its own"
            );
            assert_ne!(
                procs::ppid(pid),
                Some(sid(pid) as u32),
                "daemon {pid} is orphaned"
            );
        }
        into.0.push(pid);
    }
}

fn after_poold_kill(mode: Mode) {
    let Some(mut ng) = start(mode) else { return };
    let mut spawned = Spawned(Vec::new());
    spawn_some(&ng, &mut spawned);
    let poold = ng.poold();
    let cg = pool_cgroup_of(poold);
    assert_eq!(cg.is_some(), mode == Mode::Cgroup);
    procs::kill(poold, libc::SIGKILL);
    ng.wait_for("every process the pool's code started to be gone", |_| {
        spawned.alive().is_empty()
    });
    ng.wait_for("the pool to serve again", |ng| {
        ng.poolds().len() == 1 && ng.poold() != poold && ng.get("/spawn").status == 200
    });
    if mode == Mode::Cgroup {
        assert_eq!(
            pool_cgroup_of(ng.poold()),
            cg,
            "the new poold is in the same cgroup"
        );
    }
    // What the new poold's workers start is ended at the end as well.
    spawn_some(&ng, &mut spawned);
    ng.stop_now();
    ng.finish();
    let deadline = std::time::Instant::now() + ngx_pool_tests::READY_TIMEOUT;
    while !spawned.alive().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(spawned.alive().is_empty(), "left: {:?}", spawned.alive());
    if let Some(cg) = cg {
        assert!(!cg.exists(), "{} removed", cg.display());
    }
}

fn after_nginx_stop(mode: Mode) {
    let Some(mut ng) = start(mode) else { return };
    let mut spawned = Spawned(Vec::new());
    spawn_some(&ng, &mut spawned);
    let watchdog = ng.watchdogs()[0];
    let poold = ng.poold();
    let mut pool: Vec<u32> = vec![watchdog];
    pool.extend(procs::descendants(watchdog));
    let cg = pool_cgroup_of(poold);
    assert_eq!(cg.is_some(), mode == Mode::Cgroup);
    ng.stop_now();
    ng.finish();
    // The master waited for the pool's watchdog, which ends everything before it exits; the
    // loop only allows for /proc catching up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let left = || -> Vec<u32> {
        pool.iter()
            .copied()
            .filter(|p| procs::alive(*p))
            .chain(spawned.alive())
            .collect()
    };
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(left().is_empty(), "left after nginx -s stop: {:?}", left());
    if let Some(cg) = cg {
        assert!(!cg.exists(), "{} removed", cg.display());
    }
}

#[test]
fn cgroup_nothing_outlives_a_poold_kill() {
    after_poold_kill(Mode::Cgroup);
}

#[test]
fn subreaper_nothing_outlives_a_poold_kill() {
    after_poold_kill(Mode::Subreaper);
}

#[test]
fn cgroup_nothing_outlives_nginx_stop() {
    after_nginx_stop(Mode::Cgroup);
}

#[test]
fn subreaper_nothing_outlives_nginx_stop() {
    after_nginx_stop(Mode::Subreaper);
}

/// The controllers of the cgroup v2 the test runs in: the nginx master's, and so the
/// watchdog's, whose children the pool cgroups are.
fn available_controllers() -> Vec<String> {
    let Some(own) = cgroup_of(std::process::id()) else {
        return Vec::new();
    };
    std::fs::read_to_string(own.join("cgroup.controllers"))
        .map(|c| c.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

#[test]
fn limits_apply_where_the_controller_is_there() {
    let mut ng = Nginx::start(conf(
        Mode::Cgroup,
        "    pool sp handler=builtin:spawn workers=1 pids_max=12 memory_max=256m cpu_weight=50;",
    ));
    let log = ng.log();
    if log.contains("no cgroup for the pool") {
        ngx_pool_tests::skip("cgroup limits", "no writable cgroup v2 here");
        ng.finish();
        return;
    }
    let cg = pool_cgroup_of(ng.poold()).expect("poold's cgroup");
    let have = available_controllers();
    let mut applied = Vec::new();
    for (key, controller, file, value) in [
        ("memory_max", "memory", "memory.max", "268435456"),
        ("pids_max", "pids", "pids.max", "12"),
        ("cpu_weight", "cpu", "cpu.weight", "50"),
    ] {
        let warning = format!("{key}= is not applied");
        // Where the limit is not applied, the pool says so in one line and runs without it.
        let warned = log
            .lines()
            .filter(|l| l.contains(&warning))
            .collect::<Vec<_>>();
        assert!(warned.len() <= 1, "{log}");
        if !have.iter().any(|c| c == controller) {
            assert_eq!(warned.len(), 1, "{log}");
            ngx_pool_tests::skip(
                &format!("{key}="),
                &format!(
                    "no {controller} controller in cgroup v2 here ({})",
                    warned[0]
                ),
            );
            continue;
        }
        if let Some(line) = warned.first() {
            // There, but the kernel would not give it to the pool (its parent holds
            // processes of its own and is not the root cgroup).
            ngx_pool_tests::skip(&format!("{key}="), line);
            continue;
        }
        let got = std::fs::read_to_string(cg.join(file)).unwrap();
        assert_eq!(got.trim(), value, "{file}");
        applied.push(key);
    }
    let mut spawned = Spawned(Vec::new());
    if applied.contains(&"pids_max") {
        // poold and its worker are in; each request adds a sleep: a fork fails (the handler
        // answers 500) before the cgroup holds more than 12 tasks.
        let mut refused = false;
        for _ in 0..20 {
            let r = ng.get("/spawn");
            if r.status != 200 {
                refused = true;
                break;
            }
            spawned
                .0
                .push(String::from_utf8_lossy(&r.body).trim().parse().unwrap());
        }
        assert!(refused, "20 sleeps under pids_max=12");
        let tasks: usize = std::fs::read_to_string(cg.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(tasks <= 12, "{tasks} tasks");
    } else {
        assert_eq!(ng.get("/spawn").status, 200);
    }
    ng.stop_now();
    ng.finish();
    assert!(!cg.exists(), "{} removed", cg.display());
    drop(spawned);
}

#[test]
fn limits_without_a_cgroup_are_one_warning_each() {
    let mut ng = Nginx::start(conf(
        Mode::Subreaper,
        "    pool sp handler=builtin:spawn workers=1 pids_max=100 memory_max=1g cpu_weight=200;",
    ));
    let log = ng.log();
    for key in ["memory_max", "pids_max", "cpu_weight"] {
        let line = format!("{key}= is not applied: the pool has no cgroup (NGX_POOL_NO_CGROUP=1)");
        assert_eq!(log.matches(&line).count(), 1, "{key}: {log}");
    }
    let mut spawned = Spawned(Vec::new());
    let r = ng.get("/spawn");
    assert_eq!(r.status, 200);
    spawned
        .0
        .push(String::from_utf8_lossy(&r.body).trim().parse().unwrap());
    ng.stop_now();
    ng.finish();
}

#[test]
fn nginx_t_rejects_bad_limits() {
    for (param, reason) in [
        ("memory_max=12k", "invalid memory_max \"12k\""),
        ("memory_max=lots", "invalid memory_max"),
        ("pids_max=0", "invalid pids_max \"0\""),
        ("pids_max=99999999", "invalid pids_max"),
        ("cpu_weight=0", "invalid cpu_weight"),
        ("cpu_weight=10001", "invalid cpu_weight \"10001\""),
    ] {
        let http = format!("    pool sp handler=builtin:spawn {param};");
        let (ok, out) = nginx_test_config(&Conf::new(&http, "    location /x { pool_pass sp; }"));
        assert!(!ok, "nginx -t accepted {param}");
        assert!(out.contains(reason), "{param}: {out}");
        assert!(out.contains("nginx.conf:"), "file:line missing: {out}");
    }
    let (ok, out) = nginx_test_config(&Conf::new(
        "    pool sp handler=builtin:spawn memory_max=1g pids_max=64 cpu_weight=10000;",
        "    location /x { pool_pass sp; }",
    ));
    assert!(ok, "{out}");
}
