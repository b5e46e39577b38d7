//! Test harness: runs a real nginx with the ngx-pool module in a temporary prefix on a free
//! loopback port, talks HTTP to it, and cleans up every process it started, even on failure.
//!
//! Hygiene after each test (`Nginx::finish`): no `[alert]`, `[emerg]` or `[crit]` in the error
//! log unless the test allowed it, no descriptor leaked by nginx workers, no process left.

pub mod cluster;
pub mod http;
pub mod load;
pub mod memory;
pub mod procs;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long readiness waits may take before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The directory holding the built module and poold (`target/<profile>`).
pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("NGX_POOL_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // The test executable is target/<profile>/deps/<name>.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

pub fn module_path() -> PathBuf {
    target_dir().join("libngx_pool_module.so")
}

pub fn poold_path() -> PathBuf {
    target_dir().join("poold")
}

/// The repository's root (for sources the tests build: C handlers, the header).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// The Rust example handler library (examples/handlers/rust, built with the workspace).
pub fn example_rust_handler() -> PathBuf {
    target_dir().join("libngx_pool_example_handler.so")
}

/// Compiles a C handler (`source`, relative to the repository) with the system's `cc` against
/// only `include/ngx_pool.h`, into a shared library in `dir` that pool workers can read.
pub fn build_c_handler(source: &str, dir: &Path) -> PathBuf {
    let src = repo_dir().join(source);
    let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
    let out = dir.join(format!("lib{stem}.so"));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I",
        ])
        .arg(repo_dir().join("include"))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed on {}", src.display());
    out
}

/// The nginx binary built by nginx-sys (or `NGX_POOL_NGINX`).
pub fn nginx_path() -> PathBuf {
    if let Ok(p) = std::env::var("NGX_POOL_NGINX") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("NGX_POOL_NGINX_BUILD_DIR")).join("nginx")
}

/// How many 503s the error log accounts for whose reason contains `reason`: lines of their own,
/// plus the counts of the summary lines ("N more requests got 503 in the last second (the
/// last: REASON)") that overload turns the rest into.
pub fn rejections_in_log(log: &str, reason: &str) -> u64 {
    const SUMMARY: &str = " more requests got 503";
    log.lines()
        .filter(|l| l.contains(reason))
        .map(|l| match l.find(SUMMARY) {
            Some(end) => l[..end]
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            None => 1,
        })
        .sum()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory for one nginx prefix, readable by the workers' user.
pub fn temp_prefix() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ngx-pool-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    for d in [&dir, &dir.join("logs")] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    dir
}

/// A poold started by the test itself (external mode), killed and reaped when dropped. Its log
/// (stderr) goes to `log` in the test's prefix.
pub struct ExternalPoold {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl ExternalPoold {
    /// Starts `poold --name NAME --handler HANDLER --socket DIR/NAME.sock` plus `args` (and
    /// `--user nobody` when root, so the workers can reach the socket) and waits for its socket.
    pub fn start(dir: &Path, name: &str, handler: &str, args: &[&str]) -> ExternalPoold {
        Self::spawn(Command::new(poold_path()), dir, name, handler, args)
    }

    /// As [`ExternalPoold::start`], in the app's own interpreter: the test virtualenv's `python
    /// -m ngx_pool serve` (the `ngx-pool` package, which scripts/python-env builds from this
    /// tree and installs there), the pool manager and its workers that very executable.
    pub fn start_in_python(dir: &Path, name: &str, handler: &str, args: &[&str]) -> ExternalPoold {
        let mut cmd = Command::new(python_env().join("bin/python"));
        cmd.args(["-m", "ngx_pool", "serve"]);
        Self::spawn(cmd, dir, name, handler, args)
    }

    fn spawn(mut cmd: Command, dir: &Path, name: &str, handler: &str, args: &[&str]) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join("logs").join(format!("poold-{name}.log"));
        cmd.args(["--name", name, "--handler", handler, "--socket"])
            .arg(&socket)
            .args(args)
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["--user", "nobody"]);
        }
        let poold = ExternalPoold {
            child: cmd.spawn().unwrap(),
            socket,
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !poold.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "external poold did not create its socket: {}",
                poold.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        poold
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ExternalPoold {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a test's nginx.conf contains besides the fixed frame.
pub struct Conf {
    pub worker_processes: u32,
    /// Inside `http {}`: `pool` lines and anything else.
    pub http: String,
    /// Inside `server {}`: locations.
    pub server: String,
    /// Pools the workers must attach to before the test starts.
    pub pools: u32,
    /// The nginx binary and the module built for it (default: the vendored build).
    pub nginx: PathBuf,
    pub module: PathBuf,
    /// `master_process off`: one process is master and worker (nginx's debugging mode).
    pub single_process: bool,
    /// Extra environment for the nginx master (and so for the poolds it starts; nginx workers
    /// see only what an `env` line in `main` names).
    pub env: Vec<(String, String)>,
    /// Extra lines in nginx.conf's main context (`env NAME;`, ...).
    pub main: String,
    /// Lay the prefix out as a distribution does: no `logs/` in it (the error log and pid file
    /// go to a directory beside it, named by `-e` and absolute paths).
    pub prefix_without_logs: bool,
}

impl Conf {
    pub fn new(http: &str, server: &str) -> Conf {
        Conf {
            worker_processes: 2,
            http: http.into(),
            server: server.into(),
            pools: http
                .lines()
                .filter(|l| l.trim_start().starts_with("pool "))
                .count() as u32,
            nginx: nginx_path(),
            module: module_path(),
            single_process: false,
            env: Vec::new(),
            main: String::new(),
            prefix_without_logs: false,
        }
    }
    pub fn workers(mut self, n: u32) -> Conf {
        self.worker_processes = n;
        self
    }
}

/// Where the error log and pid file of an nginx with prefix `dir` go.
pub fn logs_dir(dir: &Path, conf: &Conf) -> PathBuf {
    if conf.prefix_without_logs {
        dir.with_extension("logs")
    } else {
        dir.join("logs")
    }
}

/// Writes the full nginx.conf for `conf` into `dir`.
pub fn write_conf(dir: &Path, port: u16, conf: &Conf) -> PathBuf {
    let logs = logs_dir(dir, conf);
    if conf.prefix_without_logs {
        let _ = std::fs::remove_dir(dir.join("logs"));
        std::fs::create_dir_all(&logs).unwrap();
    }
    let text = format!(
        "daemon off;\nmaster_process {mp};\nworker_processes {wp};\nerror_log {logs}/error.log info;\n{main}\n\
         pid {logs}/nginx.pid;\nload_module {module};\nworker_shutdown_timeout 10s;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {dir}/body;\n{http}\n\
         server {{\n    listen 127.0.0.1:{port};\n{server}\n    location = /plain {{ return 200 \"plain\\n\"; }}\n}}\n}}\n",
        mp = if conf.single_process { "off" } else { "on" },
        wp = conf.worker_processes,
        dir = dir.display(),
        module = conf.module.display(),
        logs = logs.display(),
        main = conf.main,
        http = conf.http,
        server = conf.server,
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `nginx -t` on `conf`; returns (success, output).
pub fn nginx_test_config(conf: &Conf) -> (bool, String) {
    let dir = temp_prefix();
    let out = nginx_test_config_in(&dir, conf);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Runs `nginx -t` on `conf` with prefix `dir` (left in place); returns (success, output).
pub fn nginx_test_config_in(dir: &Path, conf: &Conf) -> (bool, String) {
    let path = write_conf(dir, free_port(), conf);
    let out = Command::new(&conf.nginx)
        .envs(conf.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["-t", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run nginx -t");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

/// Says that (part of) a test did not run on this machine, and why: one `SKIPPED what: why`
/// line, also appended to the run's list of skips (`$TMPDIR/skipped`, when scripts/test runs the
/// tests: its summary counts and prints them), so that a skip is never mistaken for a pass.
pub fn skip(what: &str, why: &str) {
    let line = format!("SKIPPED {what}: {why}");
    eprintln!("{line}");
    if std::env::var_os("NGX_POOL_TEST_RUN").is_some() {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join("skipped"))
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The `[alert]`, `[emerg]` and `[crit]` lines of an error log that contain none of `allowed`.
pub fn unexpected_log_lines<'a>(log: &'a str, allowed: &[String]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("[alert]") || l.contains("[emerg]") || l.contains("[crit]"))
        .filter(|l| !allowed.iter().any(|a| l.contains(a.as_str())))
        .collect()
}

/// A running nginx.
pub struct Nginx {
    pub dir: PathBuf,
    pub port: u16,
    pub conf: Conf,
    master: Option<Child>,
    /// Log lines a test expects (substrings); any other alert/emerg/crit fails `finish`.
    allowed: Vec<String>,
    fd_baseline: Vec<(u32, usize)>,
    quit_sent: bool,
}

impl Nginx {
    /// Starts nginx and waits until it listens and every worker attached to every pool.
    pub fn start(conf: Conf) -> Nginx {
        let dir = temp_prefix();
        let port = free_port();
        let path = write_conf(&dir, port, &conf);
        let mut cmd = Command::new(&conf.nginx);
        if conf.prefix_without_logs {
            // nginx opens its compiled-in error log (prefix/logs/) before reading the
            // configuration: point it where a distribution's build would.
            cmd.arg("-e").arg(logs_dir(&dir, &conf).join("error.log"));
        }
        // The apps' Python as a user's would be, whatever the shell running the tests sets.
        cmd.env_remove("PYTHONUNBUFFERED");
        let master = cmd
            .envs(conf.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        let mut ng = Nginx {
            dir,
            port,
            conf,
            master: Some(master),
            allowed: Vec::new(),
            fd_baseline: Vec::new(),
            quit_sent: false,
        };
        let want = ng.conf.worker_processes * ng.conf.pools;
        ng.wait_for(&format!("{want} attachments"), |ng| {
            TcpStream::connect(("127.0.0.1", ng.port)).is_ok()
                && ng.log().matches("attached to").count() as u32 >= want
        });
        // And the spare of each watchdog that started a poold, standing by (named so once it
        // runs: until then, its command line is the watchdog's, as a poold's is).
        ng.wait_for("the watchdogs' spares", |ng| {
            ng.watchdogs().into_iter().all(|w| {
                let children = procs::children(w);
                children.is_empty() || children.into_iter().any(procs::is_spare)
            })
        });
        ng.fd_baseline = ng.worker_fds();
        ng
    }

    /// Takes the workers' descriptor counts that [`Nginx::finish`] checks for leaks from now
    /// (for a test whose workers attach only after [`Nginx::start`]).
    pub fn count_descriptors_from_here(&mut self) {
        self.fd_baseline = self.worker_fds();
    }

    /// Polls `cond` until true; panics with the error log after [`READY_TIMEOUT`].
    pub fn wait_for(&mut self, what: &str, mut cond: impl FnMut(&mut Nginx) -> bool) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !cond(self) {
            if let Some(m) = self.master.as_mut() {
                if let Ok(Some(status)) = m.try_wait() {
                    panic!(
                        "nginx exited ({status}) while waiting for {what}; log:\n{}",
                        self.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(logs_dir(&self.dir, &self.conf).join("error.log"))
            .unwrap_or_default()
    }

    /// The first error_log line containing every one of `needles`, once there is one (a line
    /// the pool's workers write reaches the log through poold, soon but not at once).
    pub fn log_line(&mut self, needles: &[&str]) -> String {
        let find = |log: &str| {
            log.lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
        };
        let mut found = None;
        self.wait_for(&format!("a log line with {needles:?}"), |ng| {
            found = find(&ng.log());
            found.is_some()
        });
        found.expect("waited for")
    }

    /// Allows log lines containing `s` at alert/emerg/crit level.
    pub fn allow(&mut self, s: &str) {
        self.allowed.push(s.to_string());
    }

    /// The pools' watchdogs: the processes the module started (children of the master).
    pub fn watchdogs(&self) -> Vec<u32> {
        procs::children(self.master_pid())
            .into_iter()
            .filter(|p| procs::cmdline(*p).contains("poold"))
            .collect()
    }

    /// The pools' poolds (each the child of its watchdog, the parent of its pool workers): the
    /// poold binary, or for a `wsgi:` pool the app's python running `-m ngx_pool serve`.
    pub fn poolds(&self) -> Vec<u32> {
        self.watchdogs()
            .into_iter()
            .flat_map(procs::children)
            .filter(|p| procs::is_poold(*p))
            .collect()
    }

    /// Every process under the pools' poolds (their workers and what those started), sorted:
    /// what a test compares before and after to see that nothing was created.
    pub fn pool_processes(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self
            .poolds()
            .into_iter()
            .flat_map(procs::descendants)
            .collect();
        all.sort();
        all
    }

    /// The watchdogs' spares (each the child of its watchdog: see the README's "Security model").
    pub fn spares(&self) -> Vec<u32> {
        self.watchdogs()
            .into_iter()
            .flat_map(procs::children)
            .filter(|p| procs::is_spare(*p))
            .collect()
    }

    /// The one pool's poold, for tests with a single pool.
    pub fn poold(&self) -> u32 {
        let p = self.poolds();
        assert_eq!(p.len(), 1, "one poold expected: {p:?}");
        p[0]
    }

    pub fn master_pid(&self) -> u32 {
        self.master.as_ref().map_or(0, |m| m.id())
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.join("nginx.conf")
    }

    /// Sends `nginx -s quit` (graceful shutdown) now; `finish` then only waits and checks.
    pub fn quit(&mut self) {
        self.signal("quit");
        self.quit_sent = true;
    }

    /// Sends `nginx -s stop` (fast shutdown) now; `finish` then only waits and checks.
    pub fn stop_now(&mut self) {
        self.signal("stop");
        self.quit_sent = true;
    }

    /// Sends `nginx -s SIGNAL`.
    pub fn signal(&self, sig: &str) {
        let mut cmd = Command::new(&self.conf.nginx);
        if self.conf.prefix_without_logs {
            cmd.arg("-e")
                .arg(logs_dir(&self.dir, &self.conf).join("error.log"));
        }
        let st = cmd
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.conf_path())
            .args(["-s", sig])
            .status()
            .unwrap();
        assert!(st.success(), "nginx -s {sig} failed");
    }

    /// Rewrites the configuration (same port) and reloads; waits until the new workers attached.
    pub fn reload(&mut self, conf: Option<Conf>) {
        if let Some(c) = conf {
            self.conf = c;
        }
        write_conf(&self.dir, self.port, &self.conf);
        let before = self.log().matches("attached to").count() as u32;
        let old_workers = self.worker_pids();
        self.signal("reload");
        let want = before + self.conf.worker_processes * self.conf.pools;
        self.wait_for("reloaded workers to attach", |ng| {
            ng.log().matches("attached to").count() as u32 >= want
        });
        self.wait_for("the old workers to exit", |_| {
            old_workers.iter().all(|p| !procs::alive(*p))
        });
    }

    /// Pool `name`'s entry in the JSON of `/status` (a `pool_status` location the test's
    /// configuration has).
    pub fn pool_status(&self, name: &str) -> serde_json::Value {
        let s = self.get("/status").json();
        s["pools"]
            .as_array()
            .and_then(|pools| pools.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no pool \"{name}\" in /status: {s}"))
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::request(self.port, "GET", path, &[], b"")
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// nginx worker pids (children of the master running "nginx: worker").
    pub fn worker_pids(&self) -> Vec<u32> {
        procs::children(self.master_pid())
            .into_iter()
            .filter(|p| procs::cmdline(*p).contains("nginx: worker"))
            .collect()
    }

    fn worker_fds(&self) -> Vec<(u32, usize)> {
        let mut v: Vec<(u32, usize)> = self
            .worker_pids()
            .into_iter()
            .map(|p| (p, procs::fd_count(p)))
            .collect();
        v.sort();
        v
    }

    /// Stops nginx with `nginx -s quit` and checks hygiene: no leaked descriptors in the workers,
    /// no unexpected alert/emerg/crit, no process or socket left behind.
    pub fn finish(mut self) {
        if !self.fd_baseline.is_empty() && self.worker_pids().len() == self.fd_baseline.len() {
            // Client connections close asynchronously: wait for the counts to settle.
            let baseline = self.fd_baseline.clone();
            let deadline = Instant::now() + Duration::from_secs(5);
            let leaked = |now: &[(u32, usize)]| now.iter().zip(&baseline).any(|(n, b)| n.1 > b.1);
            while leaked(&self.worker_fds()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let now = self.worker_fds();
            if now.iter().map(|p| p.0).collect::<Vec<_>>()
                == baseline.iter().map(|p| p.0).collect::<Vec<_>>()
            {
                // The baseline may include the readiness probe's connection: only growth is a leak.
                assert!(
                    !leaked(&now),
                    "nginx workers leaked descriptors (pid, count): now {now:?}, at start {baseline:?}"
                );
            }
        }
        let mut master = self.master.take().unwrap();
        // A test may have sent quit itself already (to watch the shutdown).
        if !self.quit_sent {
            self.signal("quit");
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if master.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not quit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The master waits for each pool's watchdog; what the watchdog ended last (a worker
        // killed by the cgroup, an orphan its subreaper ended) may still be on its way out when
        // the master is: give them a moment, then name what is left.
        let prefix = self.dir.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = procs::with_arg_containing(&prefix);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            left = procs::with_arg_containing(&prefix);
        }
        let described: Vec<String> = left
            .iter()
            .map(|p| format!("{p} ({})", procs::cmdline(*p)))
            .collect();
        assert!(left.is_empty(), "processes left after quit: {described:?}");
        let sockets: Vec<_> = std::fs::read_dir(logs_dir(&self.dir, &self.conf))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
            .collect();
        assert!(sockets.is_empty(), "socket files left: {sockets:?}");
        self.check_log();
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.conf.prefix_without_logs {
            let _ = std::fs::remove_dir_all(logs_dir(&self.dir, &self.conf));
        }
    }

    /// Fails on alert/emerg/crit lines the test did not allow.
    pub fn check_log(&self) {
        let log = self.log();
        let bad = unexpected_log_lines(&log, &self.allowed);
        // The lines around them say why (which process stopped first, and what it said).
        let tail: Vec<&str> = log.lines().filter(|l| !l.contains("[debug]")).collect();
        let tail = &tail[tail.len().saturating_sub(60)..];
        assert!(
            bad.is_empty(),
            "unexpected lines in error log:\n{}\nthe log's last lines:\n{}",
            bad.join("\n"),
            tail.join("\n")
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut master) = self.master.take() else {
            return;
        };
        // Failure path: kill the whole tree, whatever state it is in.
        let mut pids = procs::descendants(master.id());
        pids.extend(procs::with_arg_containing(&self.dir.display().to_string()));
        let _ = master.kill();
        let _ = master.wait();
        for p in pids {
            procs::kill(p, libc::SIGKILL);
        }
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "--- error log of {} ---\n{}",
                self.dir.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f(i)` for `i` in `0..n` on `threads` threads at once; returns results in order.
pub fn parallel<T: Send + 'static>(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = std::sync::Arc::new(f);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (f, next) = (f.clone(), next.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return out;
                    }
                    out.push((i, f(i)));
                }
            })
        })
        .collect();
    let mut all: Vec<(usize, T)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// The virtualenv of the WSGI tests (Flask, Django, Gunicorn: tests/python/requirements.txt),
/// made by `scripts/python-env`, which `scripts/test` runs.
pub fn python_env() -> PathBuf {
    let venv = std::env::var("NGX_POOL_PYTHON_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_dir().join("target/python-env"));
    assert!(
        venv.join("bin/python").exists(),
        "no test virtualenv at {}: run scripts/python-env (scripts/test does)",
        venv.display()
    );
    venv
}

/// The test apps (tests/python/apps): the `chdir=` of the WSGI pools.
pub fn python_apps() -> PathBuf {
    repo_dir().join("tests/python/apps")
}

/// A Gunicorn serving a test app on a loopback port: the peer of the differential test and the
/// benchmarks. Killed (its whole process group) when dropped, whatever the test did.
pub struct Gunicorn {
    pub port: u16,
    child: procs::Owned,
}

/// Runs a WebSocket client scenario of `tests/python/wsclient.py` (the `websockets` library in
/// the test virtualenv) against `url`; what it printed (JSON).
pub fn ws_client(scenario: &str, url: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python_env().join("bin/python"))
        .arg(python_apps().join("../wsclient.py"))
        .arg(scenario)
        .arg(url)
        .args(args)
        .output()
        .expect("run wsclient.py");
    assert!(
        out.status.success(),
        "wsclient {scenario} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "wsclient {scenario}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A uvicorn from the test virtualenv serving one of the test apps: the ASGI tests' peer.
pub struct Uvicorn {
    pub port: u16,
    child: procs::Owned,
}

impl Uvicorn {
    /// Starts `uvicorn APP` in the test apps' directory with `args` (`--workers 2`, ...), and
    /// waits until it accepts connections.
    pub fn start(app: &str, args: &[&str]) -> Uvicorn {
        let port = free_port();
        let child = procs::Owned::spawn(
            Command::new(python_env().join("bin/python"))
                .args(["-m", "uvicorn", "--app-dir"])
                .arg(python_apps())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--log-level", "warning"])
                .args(args)
                .arg(app)
                .stdout(Stdio::null()),
        )
        .expect("start uvicorn");
        let u = Uvicorn { port, child };
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "uvicorn did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        u
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Gunicorn {
    /// Starts `gunicorn APP` from the test virtualenv in the test apps' directory, with `args`
    /// (`-w 2`, `-k gthread`, ...), and waits until it accepts connections.
    pub fn start(app: &str, args: &[&str]) -> Gunicorn {
        let port = free_port();
        let child = procs::Owned::spawn(
            Command::new(python_env().join("bin/gunicorn"))
                .args(["--chdir"])
                .arg(python_apps())
                .args(["-b", &format!("127.0.0.1:{port}"), "--log-level", "warning"])
                .args(args)
                .arg(app)
                .stdout(Stdio::null()),
        )
        .expect("start gunicorn");
        let g = Gunicorn { port, child };
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "gunicorn did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        g
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
