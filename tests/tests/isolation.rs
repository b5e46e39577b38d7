//! A pool's code cannot crash nginx, reach another pool's traffic, regain root or leave a
//! process behind (issue 26): each attack runs for real, as a hostile local process or handler
//! would, against a real nginx and poold.

use ngx_pool_tests::{procs, Conf, Nginx};
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

/// Runs `attack` in a child process switched to uid and gid `id` (what a compromised handler
/// is); returns its exit code. The child only makes system calls, then `_exit`s.
fn as_user(id: u32, attack: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child calls only async-signal-safe functions (setgroups, setgid, setuid,
    // ptrace, open, close, _exit) before it exits; the parent waits for it.
    unsafe {
        match libc::fork() {
            0 => {
                let code = if libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setgid(id) == 0
                    && libc::setuid(id) == 0
                {
                    attack()
                } else {
                    99
                };
                libc::_exit(code)
            }
            pid if pid > 0 => {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                libc::WEXITSTATUS(status)
            }
            _ => panic!("fork failed"),
        }
    }
}

/// What a process of `id` can do to process `pid`: bit 1 if it could ptrace-attach, 2 if it
/// could open its memory, 4 if it could open one of its descriptors through /proc.
fn reach(id: u32, pid: u32) -> i32 {
    let mem = std::ffi::CString::new(format!("/proc/{pid}/mem")).unwrap();
    let fd0 = std::ffi::CString::new(format!("/proc/{pid}/fd/0")).unwrap();
    as_user(id, move || {
        let mut got = 0;
        // SAFETY: plain system calls on paths and a pid; a successful attach is undone.
        unsafe {
            if libc::ptrace(libc::PTRACE_ATTACH, pid as libc::pid_t, 0, 0) == 0 {
                libc::ptrace(libc::PTRACE_DETACH, pid as libc::pid_t, 0, 0);
                got |= 1;
            }
            let f = libc::open(mem.as_ptr(), libc::O_RDONLY);
            if f >= 0 {
                libc::close(f);
                got |= 2;
            }
            let f = libc::open(fd0.as_ptr(), libc::O_RDONLY);
            if f >= 0 {
                libc::close(f);
                got |= 4;
            }
        }
        got
    })
}

#[test]
fn a_process_of_nginxs_user_cannot_inspect_nginx_workers_or_pool_workers() {
    let mut ng = Nginx::start(
        Conf::new(
            "    pool a handler=builtin:echo workers=1;\n    pool b handler=builtin:echo workers=1;",
            "    location /a { pool_pass a; }\n    location /b { pool_pass b; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    assert_eq!(ng.get("/a").status, 200);
    let worker = ng.worker_pids()[0];
    // The nginx workers' user: nobody, as nginx defaults to when started as root.
    let uid = std::fs::read_to_string(format!("/proc/{worker}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .map(|u| u.parse::<u32>().unwrap())
        })
        .unwrap();
    assert_ne!(
        uid, 0,
        "the test needs nginx's workers to run as another user than root"
    );
    // The attack against nginx's worker, as that same user (what a compromised handler is).
    assert_eq!(
        reach(uid, worker),
        0,
        "a process of nginx's user reached an nginx worker"
    );
    // ...and against the other pool's worker.
    let s = ng.get("/status").json();
    let b_worker = s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "b")
        .and_then(|p| p["workers"][0]["pid"].as_u64())
        .unwrap() as u32;
    assert_eq!(
        reach(uid, b_worker),
        0,
        "a process of the pools' user reached pool b's worker"
    );
    // Nothing a pool worker starts can gain privileges through a setuid binary.
    let status = std::fs::read_to_string(format!("/proc/{b_worker}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // The check itself can tell: the same user reaches a plain process of its own.
    let own = procs::Owned::spawn(
        std::process::Command::new("setpriv")
            .args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &uid.to_string(),
                "--clear-groups",
            ])
            .args(["sleep", "30"]),
    )
    .expect("setpriv (util-linux)");
    let pid = own.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| !c.starts_with("sleep"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "setpriv did not exec sleep"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let reached = reach(uid, pid);
    drop(own);
    assert_ne!(
        reached, 0,
        "the probe cannot reach even its own user's process"
    );
    ng.allow("stays dumpable");
    ng.finish();
}

#[test]
fn a_handler_that_writes_over_its_region_is_survived_and_the_pool_heals() {
    let libs = ngx_pool_tests::temp_prefix();
    let lib = ngx_pool_tests::build_c_handler("tests/handlers/hostile.c", &libs);
    let mut ng = Nginx::start(Conf::new(
        &format!(
            "    pool h handler=dylib:{} workers=2 timeout=3s;",
            lib.display()
        ),
        "    location /hostile/ { pool_pass h; }",
    ));
    ng.allow("region was written over");
    ng.allow("its shared region is corrupt");
    let workers = ng.worker_pids();
    assert_eq!(ng.get("/hostile/ok").status, 200);
    // The attack: a pool worker overwrites every byte of the region it shares with nginx.
    let port = ng.port;
    let attack = std::thread::spawn(move || {
        ngx_pool_tests::http::request(port, "GET", "/hostile/scribble", &[], b"")
            .map(|r| r.status)
            .ok()
    });
    // Requests fail for a moment (the region is garbage), then a new generation serves them.
    let started = std::time::Instant::now();
    let healed = loop {
        if let Ok(r) = ngx_pool_tests::http::request(port, "GET", "/hostile/ok", &[], b"") {
            if r.status == 200
                && r.body == b"ok"
                && started.elapsed() > std::time::Duration::from_millis(1)
            {
                // Served by the new generation once the old one noticed.
                if ng.log().contains("region was written over") {
                    break started.elapsed();
                }
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the pool did not serve again within 5 s:\n{}",
            ng.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = attack.join();
    assert_eq!(ng.worker_pids(), workers, "an nginx worker died");
    let log = ng.log();
    assert!(!log.contains("exited on signal"), "{log}");
    eprintln!("the pool served again {healed:?} after its region was written over");
    ng.finish();
}

#[test]
fn a_large_pool_serves_while_it_is_still_forking() {
    let workers = 1024;
    let ng = Nginx::start(
        Conf::new(
            &format!("    pool big handler=builtin:hello workers={workers};"),
            "    location /big { pool_pass big; }\n    location = /status { pool_status; }",
        )
        .workers(1),
    );
    // nginx's worker attached (Nginx::start waits for it): poold accepted it between steps.
    let started = std::time::Instant::now();
    assert_eq!(ng.get("/big").status, 200);
    let served_after = started.elapsed();
    let up = |ng: &Nginx| {
        ng.get("/status").json()["pools"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "idle" || w["state"] == "busy")
            .count()
    };
    let then = up(&ng);
    assert!(
        then < workers,
        "all {workers} workers were up before the first request was served"
    );
    let mut ng = ng;
    ng.wait_for("every worker up", |ng| up(ng) == workers);
    eprintln!(
        "first request served {served_after:?} after attaching, with {then} of {workers} workers up; all up {:?} later",
        started.elapsed()
    );
    ng.finish();
}

#[test]
fn a_pool_may_run_as_a_user_of_its_own() {
    let ng = Nginx::start(
        Conf::new(
            "    pool own handler=builtin:echo workers=1 user=daemon;\n    pool plain handler=builtin:echo workers=1;",
            "    location /own { pool_pass own; }\n    location /nginxs { pool_pass plain; }",
        )
        .workers(1),
    );
    let nginx_uid = procs::uid(ng.worker_pids()[0]);
    let daemon_uid = nix::unistd::User::from_name("daemon")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    // nginx's workers attached to both (Nginx::start waited) and are served by both.
    let own = ng.get("/own");
    assert_eq!(own.status, 200);
    let plain = ng.get("/nginxs");
    assert_eq!(plain.status, 200);
    let pid = |r: &ngx_pool_tests::http::Response| r.json()["pid"].as_u64().unwrap() as u32;
    assert_eq!(
        procs::uid(pid(&own)),
        daemon_uid,
        "the pool's worker runs as its user"
    );
    assert_eq!(
        procs::uid(pid(&plain)),
        nginx_uid,
        "a pool without user= runs as nginx's"
    );
    // nginx -t names an unknown user.
    let (ok, out) = ngx_pool_tests::nginx_test_config(&Conf::new(
        "    pool p handler=builtin:echo user=no-such-user-here;",
        "",
    ));
    assert!(
        !ok && out.contains("unknown user \"no-such-user-here\" in user="),
        "{out}"
    );
    ng.finish();
}

/// A pool of one worker running the hostile handler, serving, with the lines of a heal that
/// `evidence` (what nginx reports) starts allowed.
fn hostile_pool(evidence: &str) -> Nginx {
    let libs = ngx_pool_tests::temp_prefix();
    let lib = ngx_pool_tests::build_c_handler("tests/handlers/hostile.c", &libs);
    let mut ng = Nginx::start(Conf::new(
        &format!("    pool h handler=dylib:{} workers=1;", lib.display()),
        "    location /hostile/ { pool_pass h; }",
    ));
    ng.allow(evidence);
    ng.allow("found it inconsistent");
    ng.allow("its region was written over");
    assert_eq!(ng.get("/hostile/ok").status, 200);
    ng
}

/// Sends `attack`, then rounds of 4 concurrent requests until all are answered 200 and the log
/// shows nginx's report (`evidence`): within 5 s, or the test fails.
fn heals_within_5s(ng: &Nginx, attack: &str, evidence: &str) {
    assert_eq!(ng.get(attack).status, 200);
    let port = ng.port;
    let started = std::time::Instant::now();
    loop {
        let statuses: Vec<u16> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    ngx_pool_tests::http::request(port, "GET", "/hostile/ok", &[], b"")
                        .map_or(0, |r| r.status)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        if statuses.iter().all(|s| *s == 200) && ng.log().contains(evidence) {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "not healed:\n{}",
            ng.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_region_broken_where_its_checks_cannot_see_heals_on_nginxs_report() {
    use ngx_pool_channel::layout::Header;
    let ng = hostile_pool("could not be queued");
    // Both queue positions moved on by the queue's size: consistent spans, so the region's
    // checks pass, but every push finds the queue "full" (before: 503 forever, until a reload).
    let shift = format!(
        "/hostile/shift?{},{}",
        std::mem::offset_of!(Header, enqueue_pos),
        std::mem::offset_of!(Header, dequeue_pos)
    );
    heals_within_5s(&ng, &shift, "found it inconsistent");
    ng.finish();
}

#[test]
fn a_slot_free_list_emptied_heals_on_nginxs_report() {
    use ngx_pool_channel::layout::Header;
    let ng = hostile_pool("no free slot while");
    // The request slots' free list emptied: the region's checks pass, and only the slot of
    // the attack's own request comes back to it, so the pool serves one request at a time and
    // answers "full" to every other (before: so until a reload).
    let empty = format!("/hostile/empty?{}", std::mem::offset_of!(Header, slot_free));
    heals_within_5s(&ng, &empty, "no free slot while");
    ng.finish();
}

#[test]
fn a_pools_code_cannot_signal_nginxs_workers_or_other_pools() {
    let libs = ngx_pool_tests::temp_prefix();
    let lib = ngx_pool_tests::build_c_handler("tests/handlers/hostile.c", &libs);
    let mut ng = Nginx::start(
        Conf::new(
            &format!(
                "    pool h handler=dylib:{} workers=1;\n    pool other handler=builtin:echo workers=1;",
                lib.display()
            ),
            "    location /hostile/ { pool_pass h; }\n    location /other { pool_pass other; }",
        )
        .workers(1),
    );
    let worker = ng.worker_pids()[0];
    let other = ng.get("/other").json()["pid"].as_u64().unwrap() as u32;
    // A signal (0: the permission check alone, the same as for SIGSTOP or SIGKILL) to the
    // nginx worker and to another pool's worker, from the pool's code running as nginx's user:
    // refused (EPERM, 1); without the scope it could stop or kill them.
    for pid in [worker, other] {
        let r = ng.get(&format!("/hostile/kill?{pid},0"));
        assert_eq!(r.status, 200);
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "kill -1 errno 1",
            "the pool's code could signal {pid}"
        );
    }
    assert_eq!(ng.get("/hostile/ok").status, 200);
    assert_eq!(ng.get("/other").status, 200);
    assert_eq!(ng.worker_pids(), vec![worker]);
    ng.allow("signals not scoped");
    ng.finish();
}

#[test]
fn root_is_gone_for_good_before_any_of_the_pools_code_runs() {
    let dir = ngx_pool_tests::temp_prefix();
    let lib = ngx_pool_tests::build_c_handler("tests/handlers/hostile.c", &dir);
    // What root could write (a directory of root's only) and where the attempts report (anyone's).
    let root_only = dir.join("root-only");
    let reports = dir.join("reports");
    let apps = dir.join("apps");
    for (d, mode) in [(&root_only, 0o755), (&reports, 0o1777), (&apps, 0o755)] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let attempt = |name: &str| {
        format!(
            "{}:{}",
            root_only.join(name).display(),
            reports.join(name).display()
        )
    };
    // A WSGI module whose import tries the same, in the app's own interpreter.
    std::fs::write(
        apps.join("rootgrab.py"),
        "import os\n\
         target, report = os.environ['ROOTGRAB'].split(':')\n\
         got = []\n\
         for attempt in (lambda: os.setuid(0), lambda: os.setresuid(0, 0, 0)):\n\
         \x20   try:\n\
         \x20       attempt()\n\
         \x20       got.append('became-root')\n\
         \x20   except PermissionError:\n\
         \x20       got.append('EPERM')\n\
         try:\n\
         \x20   open(target, 'w').write('root was here')\n\
         \x20   got.append('written')\n\
         except OSError:\n\
         \x20   got.append('not-written')\n\
         open(report, 'w').write(' '.join(got) + ' uid %d euid %d' % (os.getuid(), os.geteuid()))\n\
         def app(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [b'ok']\n",
    )
    .unwrap();
    let ng = Nginx::start(
        Conf::new(
            &format!(
                "    pool c handler=dylib:{} handler_args=setuid-at-init:{} env=HOSTILE_ROOT_AT_LOAD={} workers=1;\n    \
                 pool own handler=dylib:{} handler_args=setuid-at-init:{} user=daemon workers=1;\n    \
                 pool py handler=wsgi:rootgrab:app venv={} chdir={} env=ROOTGRAB={} workers=1;",
                lib.display(),
                attempt("init"),
                attempt("constructor"),
                lib.display(),
                attempt("own-init"),
                ngx_pool_tests::python_env().display(),
                apps.display(),
                attempt("import"),
            ),
            &format!(
                "    location /hostile/ {{ pool_pass c; pool_param X_FILE {}; }}\n    \
                 location /own/ {{ pool_pass own; }}\n    location /py {{ pool_pass py; }}",
                root_only.join("worker").display()
            ),
        )
        .workers(1),
    );
    assert_eq!(ng.get("/py").status, 200);
    assert_eq!(ng.get("/own/").status, 200);
    let nobody = procs::uid(ng.worker_pids()[0]);
    let daemon = nix::unistd::User::from_name("daemon")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert_ne!(
        nobody, 0,
        "the test needs nginx's workers to run as another user than root"
    );
    let report = |name: &str| std::fs::read_to_string(reports.join(name)).unwrap_or_default();
    let refused = |uid: u32| format!("setuid -1 setresuid -1 uid {uid} euid {uid} written -1");
    assert_eq!(
        report("constructor"),
        refused(nobody),
        "a library constructor"
    );
    assert_eq!(report("init"), refused(nobody), "init");
    assert_eq!(
        report("own-init"),
        refused(daemon),
        "init of a pool with a user of its own"
    );
    assert_eq!(
        report("import"),
        format!("EPERM EPERM not-written uid {nobody} euid {nobody}"),
        "a WSGI module's import"
    );
    // A pool worker, at a request.
    let r = ng.get("/hostile/setuid");
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        refused(nobody),
        "a pool worker"
    );
    let written: Vec<_> = std::fs::read_dir(&root_only)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(written.is_empty(), "written as root: {written:?}");
    // Every id of every poold is the pool's user's, and the processes that keep root (the
    // watchdog and its spare) never load the pool's code: no mapping of the handler library.
    for poold in ng.poolds() {
        let uids = procs::ids(poold, "Uid:");
        assert!(
            uids.iter().all(|u| *u == uids[0] && *u != 0),
            "poold {poold} ids {uids:?}"
        );
        let gids = procs::ids(poold, "Gid:");
        assert!(
            gids.iter().all(|g| *g == gids[0] && *g != 0),
            "poold {poold} gids {gids:?}"
        );
    }
    for root in ng.watchdogs().into_iter().chain(ng.spares()) {
        assert_eq!(procs::ids(root, "Uid:")[0], 0);
        let maps = std::fs::read_to_string(format!("/proc/{root}/maps")).unwrap();
        assert!(
            !maps.contains("libhostile"),
            "{root} maps the pool's library"
        );
        assert!(!maps.contains("libpython"), "{root} maps libpython");
    }
    ng.finish();
}

/// Makes `path` (a directory) the pool's user's, as a log directory owned by nginx's `user` is.
fn give_to(path: &std::path::Path, uid: u32) {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
}

#[test]
fn the_watchdog_reopens_only_a_plain_log_file_and_a_fifo_there_does_not_stall_it() {
    // The error log's directory writable by the pool's user (Debian's nginx once had
    // /var/log/nginx owned by www-data): what the pool's code puts in the log's place must not
    // make the root watchdog open another file for poold, nor stall it.
    // (The socket goes elsewhere: in a directory others may write, it is refused.)
    let run = ngx_pool_tests::temp_prefix();
    let mut ng = Nginx::start(Conf::new(
        &format!(
            "    pool p handler=builtin:echo workers=1 socket={}/p.sock;",
            run.display()
        ),
        "    location /p { pool_pass p; }",
    ));
    let logs = ng.dir.join("logs");
    give_to(&logs, procs::uid(ng.worker_pids()[0]));
    let victim = ng.dir.join("root-only");
    std::fs::write(&victim, "root's\n").unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (log, rotated) = (logs.join("error.log"), logs.join("error.log.1"));
    std::fs::rename(&log, &rotated).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    // The watchdog looks once a second; give it two looks (what is checked is that nothing
    // happens, which no event announces).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let poold = ng.poold();
    for fd in [1, 2] {
        let target = std::fs::read_link(format!("/proc/{poold}/fd/{fd}")).unwrap();
        assert_ne!(target, victim, "poold's fd {fd} is the file the link named");
    }
    // A FIFO in its place: the watchdog must still restart a killed poold.
    std::fs::remove_file(&log).unwrap();
    nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    procs::kill(poold, libc::SIGKILL);
    let started = std::time::Instant::now();
    while ng.get("/p").status != 200 || ng.poolds() == vec![poold] {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the pool did not come back: the watchdog is stuck"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's\n");
    std::fs::remove_file(&log).unwrap();
    std::fs::rename(&rotated, &log).unwrap();
    give_to(&logs, 0);
    ng.allow("was killed by SIGKILL");
    ng.finish();
}

#[test]
fn a_socket_directory_others_may_write_is_refused_with_the_reason() {
    // Root binds the socket and gives it to the pool's user: in a directory the pool's user may
    // write, a file renamed into the socket's place would be given away instead.
    let dir = ngx_pool_tests::temp_prefix();
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    give_to(&shared, 65534);
    let mut conf = Conf::new(
        &format!(
            "    pool p handler=builtin:echo workers=1 socket={}/p.sock;\n    pool ok handler=builtin:echo workers=1;",
            shared.display()
        ),
        "    location /p { pool_pass p; }\n    location /ok { pool_pass ok; }",
    );
    conf.pools = 1;
    let mut ng = Nginx::start(conf);
    ng.wait_for("the reason in the log", |ng| {
        ng.log().contains("may be written by others than root")
    });
    assert_eq!(ng.get("/p").status, 503);
    assert_eq!(ng.get("/ok").status, 200, "the other pools run");
    assert!(!shared.join("p.sock").exists());
    ng.allow("may be written by others than root");
    ng.allow("cannot start poold");
    ng.allow("no socket at");
    ng.finish();
}

#[test]
fn a_spare_starts_again_after_the_poold_binary_was_replaced_on_disk() {
    // A package upgrade or a rebuild replaces the binary under a running pool: the watchdog
    // starts its spare from the binary it runs, not from whatever the path names now.
    let dir = ngx_pool_tests::temp_prefix();
    let bin = dir.join("poold");
    std::fs::copy(ngx_pool_tests::poold_path(), &bin).unwrap();
    let mut ng = Nginx::start(Conf::new(
        &format!(
            "    pool_daemon {};\n    pool p handler=builtin:echo workers=1;",
            bin.display()
        ),
        "    location /p { pool_pass p; }",
    ));
    std::fs::copy(ngx_pool_tests::poold_path(), dir.join("poold.new")).unwrap();
    std::fs::rename(dir.join("poold.new"), &bin).unwrap();
    let spare = ng.spares()[0];
    procs::kill(spare, libc::SIGKILL);
    ng.wait_for("a new spare", |ng| ng.spares().iter().any(|s| *s != spare));
    assert!(!ng.log().contains("cannot start the watchdog's spare"));
    assert_eq!(ng.get("/p").status, 200);
    ng.finish();
}
