//! The Debian package (scripts/package-deb) installed into the system with apt-get, loaded by
//! Debian's own nginx through modules-enabled, serving a built-in and a WSGI pool, reloaded,
//! stopped, and removed without a file left behind. Needs root, Debian's nginx-core and
//! nginx-dev (scripts/test installs them); reported as skipped otherwise.

use ngx_pool_tests::{free_port, procs, python_apps, python_env, repo_dir, READY_TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skip(reason: &str) {
    eprintln!("SKIPPED debian_package: {reason}");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

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
                procs::kill(pid, libc::SIGKILL);
            }
        }
        for p in procs::with_arg_containing("/run/ngx-pool/pkgtest") {
            procs::kill(p, libc::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.site);
        let _ = std::fs::remove_file(&self.main_conf);
        let _ = Command::new("apt-get")
            .args(["remove", "-y", "-qq", "libnginx-mod-http-pool"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
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
    let deb = built
        .lines()
        .find_map(|l| l.strip_prefix("package: "))
        .expect("the package's path")
        .to_string();
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
        .args(["install", "-y", "-qq", &deb])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let files: Vec<String> = run(Command::new("dpkg").args(["-L", "libnginx-mod-http-pool"]))
        .lines()
        .map(String::from)
        .collect();
    assert!(files
        .iter()
        .any(|f| f == "/etc/nginx/modules-enabled/50-mod-http-pool.conf"));

    // The site, as an operator writes it: the module is loaded by modules-enabled alone.
    std::fs::write(
        &guard.site,
        format!(
            "pool pkgtest_hello handler=builtin:hello workers=2;\n\
             pool pkgtest_web handler=wsgi:flaskapp:app venv={} chdir={} workers=2;\n\
             server {{\n    listen 127.0.0.1:{port};\n    location /hello {{ pool_pass pkgtest_hello; }}\n    \
             location / {{ pool_pass pkgtest_web; }}\n}}\n",
            python_env().display(),
            python_apps().display()
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
    wait("the workers to attach to both pools", || {
        log().matches("attached to /run/ngx-pool/pkgtest_").count() >= 4
    });
    assert_eq!(get(port, "/hello"), (200, "hello".into()));
    let (status, body) = get(port, "/json");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"path\":\"/json\""), "{body}");

    run(Command::new(nginx).args(["-c", &conf, "-s", "reload"]));
    wait("the reloaded workers", || {
        log().matches("attached to /run/ngx-pool/pkgtest_").count() >= 8
    });
    assert_eq!(get(port, "/hello").0, 200);
    assert_eq!(get(port, "/json").0, 200);

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
        .args(["remove", "-y", "-qq", "libnginx-mod-http-pool"])
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
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
