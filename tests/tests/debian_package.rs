//! The Debian packages (scripts/package-deb: libnginx-mod-http-pool and python3-ngx-pool)
//! installed into the system with apt-get, loaded by Debian's own nginx through modules-enabled,
//! serving a built-in pool, a WSGI pool in a venv and a WSGI pool in Debian's python3 with no
//! venv, reloaded, stopped, and removed without a file left behind. Needs root, Debian's
//! nginx-core and nginx-dev (scripts/test installs them); reported as skipped otherwise.

use ngx_pool_tests::{free_port, procs, python_apps, python_env, repo_dir, READY_TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skip(reason: &str) {
    ngx_pool_tests::skip("debian_package", reason);
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The packages scripts/package-deb builds, in the order it prints them.
const PACKAGES: [&str; 2] = ["libnginx-mod-http-pool", "python3-ngx-pool"];

/// A WSGI app of the standard library alone: it says which Python runs it and where the
/// extension serving it (`ngx_pool._native`, what `python3 -m ngx_pool serve` runs) comes from.
const SYSTEM_APP: &str = r#"import sys


def app(environ, start_response):
    native = sys.modules["ngx_pool._native"].__file__
    body = ("%s %s %s" % (sys.executable, sys.prefix, native)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// Undoes everything the test did to the system, whatever happened.
struct Installed {
    site: PathBuf,
    main_conf: PathBuf,
    pid_file: PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            if let Ok(pid) = pid.trim().parse::<u32>() {
                // Its workers too: killed alone, it would leave them running.
                for p in procs::children(pid) {
                    procs::kill(p, libc::SIGKILL);
                }
                procs::kill(pid, libc::SIGKILL);
            }
        }
        for p in procs::with_arg_containing("/run/ngx-pool/pkgtest") {
            procs::kill(p, libc::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.site);
        let _ = std::fs::remove_file(&self.main_conf);
        // One at a time: apt-get removes nothing when it does not know one of those it is given.
        for package in PACKAGES {
            let _ = Command::new("apt-get")
                .args(["remove", "-y", "-qq", package])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output();
        }
    }
}

fn get(port: u16, path: &str) -> (u16, String) {
    let r = ngx_pool_tests::http::request(port, "GET", path, &[], b"").unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_debian_package_installs_into_debians_nginx_and_removes_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root (apt-get install needs it)");
    }
    let nginx = Path::new("/usr/sbin/nginx");
    if !nginx.exists() || !Path::new("/usr/share/nginx/src/conf_flags").exists() {
        return skip("Debian's nginx-core and nginx-dev are not installed");
    }
    let root = repo_dir();
    let built = run(Command::new(root.join("scripts/package-deb")).arg("--no-install"));
    let debs: Vec<String> = built
        .lines()
        .filter_map(|l| l.strip_prefix("package: "))
        .map(String::from)
        .collect();
    assert_eq!(debs.len(), 2, "the packages' paths:\n{built}");
    for (deb, package) in debs.iter().zip(PACKAGES) {
        assert!(
            deb.contains(&format!("/{package}_")),
            "{deb} is not {package}"
        );
    }
    let dir = ngx_pool_tests::temp_prefix();
    let port = free_port();
    let guard = Installed {
        site: PathBuf::from(format!(
            "/etc/nginx/conf.d/ngx-pool-test-{}.conf",
            std::process::id()
        )),
        main_conf: dir.join("nginx.conf"),
        pid_file: dir.join("nginx.pid"),
    };
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&debs)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let files: Vec<String> = PACKAGES
        .iter()
        .flat_map(|p| {
            run(Command::new("dpkg").args(["-L", p]))
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(files
        .iter()
        .any(|f| f == "/etc/nginx/modules-enabled/50-mod-http-pool.conf"));
    let dist_packages = "/usr/lib/python3/dist-packages";
    for installed in ["ngx_pool/__init__.py", "ngx_pool-"] {
        assert!(
            files
                .iter()
                .any(|f| f.starts_with(&format!("{dist_packages}/{installed}"))),
            "python3-ngx-pool installs no {installed}: {files:?}"
        );
    }
    assert!(
        !files.iter().any(|f| f.contains("libngx_pool_python")),
        "the embedded adapter is packaged: {files:?}"
    );
    // Debian's python3 sees the package, its metadata included (as `pip list` would).
    let pyproject = std::fs::read_to_string(root.join("python/ngx-pool/pyproject.toml")).unwrap();
    let version = pyproject
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .expect("pyproject.toml's version")
        .trim_matches('"');
    // (From /: nothing of the working directory's is imported.)
    let seen = run(Command::new("/usr/bin/python3").current_dir("/").args([
        "-c",
        "import ngx_pool, ngx_pool._native, importlib.metadata as m; print(m.version('ngx-pool'), ngx_pool.__file__)",
    ]));
    assert_eq!(
        seen.trim(),
        format!("{version} {dist_packages}/ngx_pool/__init__.py"),
        "what Debian's python3 imports"
    );

    // The dependency-free app of the pool that has no venv=, readable by www-data.
    std::fs::write(dir.join("sysapp.py"), SYSTEM_APP).unwrap();

    // The site, as an operator writes it: the module is loaded by modules-enabled alone.
    std::fs::write(
        &guard.site,
        format!(
            "pool pkgtest_hello handler=builtin:hello workers=2;\n\
             pool pkgtest_web handler=wsgi:flaskapp:app venv={} chdir={} workers=2;\n\
             pool pkgtest_sys handler=wsgi:sysapp:app chdir={} workers=2;\n\
             server {{\n    listen 127.0.0.1:{port};\n    location /hello {{ pool_pass pkgtest_hello; }}\n    \
             location /sys {{ pool_pass pkgtest_sys; }}\n    \
             location / {{ pool_pass pkgtest_web; }}\n}}\n",
            python_env().display(),
            python_apps().display(),
            dir.display()
        ),
    )
    .unwrap();
    // Debian's nginx.conf with its own pid and logs (its default site's port 80 may be taken).
    std::fs::write(
        &guard.main_conf,
        format!(
            "user www-data;\nworker_processes 2;\npid {pid};\nerror_log {log} info;\n\
             include /etc/nginx/modules-enabled/*.conf;\nevents {{ worker_connections 256; }}\n\
             http {{ access_log off; include /etc/nginx/conf.d/*.conf; }}\n",
            pid = guard.pid_file.display(),
            log = dir.join("error.log").display()
        ),
    )
    .unwrap();
    let conf = guard.main_conf.display().to_string();
    run(Command::new(nginx).args(["-t", "-c", &conf]));
    // Debian's nginx daemonizes: the daemon must not hold this test's pipes.
    let started = Command::new(nginx)
        .args(["-c", &conf])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        started.success(),
        "Debian's nginx did not start: {}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
    let log = || std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    wait("the workers to attach to the three pools", || {
        log().matches("attached to /run/ngx-pool/pkgtest_").count() >= 6
    });
    assert_eq!(get(port, "/hello"), (200, "hello".into()));
    let (status, body) = get(port, "/json");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"path\":\"/json\""), "{body}");
    // No venv=: the app runs in Debian's python3 with python3-ngx-pool's extension.
    let native = files
        .iter()
        .find(|f| {
            f.starts_with(&format!("{dist_packages}/ngx_pool/_native.")) && f.ends_with(".so")
        })
        .expect("python3-ngx-pool's extension");
    let (status, body) = get(port, "/sys");
    assert_eq!(status, 200, "{body}\n{}", log());
    assert_eq!(body, format!("/usr/bin/python3 /usr {native}"));
    // Its pool manager is Debian's interpreter itself (`python3 -m ngx_pool serve`, started by
    // the watchdog, the poold of /usr/lib/ngx-pool), and so are its workers (forked from it).
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let pool = procs::with_arg_containing("/run/ngx-pool/pkgtest_sys");
    let serving: Vec<u32> = pool
        .iter()
        .copied()
        .filter(|p| procs::cmdline(*p).contains("-m ngx_pool serve"))
        .collect();
    let managers: Vec<u32> = serving
        .iter()
        .copied()
        .filter(|p| procs::ppid(*p).is_some_and(|pp| !serving.contains(&pp)))
        .collect();
    assert_eq!(managers.len(), 1, "one pool manager among {pool:?}");
    let watchdog = procs::ppid(managers[0]).unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{watchdog}/exe")).unwrap(),
        Path::new("/usr/lib/ngx-pool/poold"),
        "the manager's parent"
    );
    assert_eq!(serving.len(), 3, "the manager and 2 workers: {pool:?}");
    for pid in serving {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, python, "process {pid}: {}", procs::cmdline(pid));
    }

    run(Command::new(nginx).args(["-c", &conf, "-s", "reload"]));
    wait("the reloaded workers", || {
        log().matches("attached to /run/ngx-pool/pkgtest_").count() >= 12
    });
    assert_eq!(get(port, "/hello").0, 200);
    assert_eq!(get(port, "/json").0, 200);
    assert_eq!(get(port, "/sys").0, 200);

    let master: u32 = std::fs::read_to_string(&guard.pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    run(Command::new(nginx).args(["-c", &conf, "-s", "quit"]));
    wait("nginx and every pool process to exit", || {
        !procs::alive(master) && procs::with_arg_containing("/run/ngx-pool/pkgtest").is_empty()
    });
    let log_text = log();
    for bad in ["[alert]", "[emerg]", "[crit]"] {
        assert!(!log_text.contains(bad), "{bad} in:\n{log_text}");
    }

    run(Command::new("apt-get")
        .args(["remove", "-y", "-qq"])
        .args(PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let left: Vec<&String> = files
        .iter()
        .filter(|f| {
            let p = Path::new(f.as_str());
            // The package's own files and links, not the directories it shares (/usr, /lib).
            p.symlink_metadata().is_ok_and(|m| !m.is_dir()) && !p.is_dir()
        })
        .collect();
    assert!(left.is_empty(), "left behind by apt-get remove: {left:?}");
    // Nor what was made of them (py3compile's byte code, removed by py3clean).
    for made in ["ngx_pool", &format!("ngx_pool-{version}.dist-info")] {
        let p = Path::new(dist_packages).join(made);
        assert!(
            !p.exists(),
            "left behind by apt-get remove: {}",
            p.display()
        );
    }
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
