//! What poold runs a pool with: the settings that the `pool` directive and poold's command line
//! have in common, defined and checked once.
//!
//! The module parses `key=value` parameters into [`PoolSettings`], passes them to the poold it
//! starts as `--key value` arguments ([`PoolSettings::to_args`]), and poold reads them back with
//! the same [`PoolSettings::set`]: a setting cannot mean one thing in nginx.conf and another on
//! poold's command line, nor be accepted by `nginx -t` and refused by poold.

use crate::{parse_size, parse_time_ms, HandlerSpec};

/// Default pool workers: one per CPU.
pub fn default_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

pub const DEFAULT_QUEUE: u32 = 1024;
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_ARENA: u64 = 64 << 20;
pub const DEFAULT_SPIN_US: u64 = 100;
/// As php-fpm's `pm.process_idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 10_000;
/// Lines a second a pool's workers may write to the error log: plenty for tracebacks and
/// request logging, while a handler printing in a loop adds well under 1 MB a minute.
pub const DEFAULT_LOG_RATE: u32 = 200;
/// The highest `log_rate=` short of unlimited (`0`).
pub const MAX_LOG_RATE: u32 = 1_000_000;

/// Requests an ASGI worker runs at once when `concurrency=` is not given (uvicorn and Granian
/// set no bound by default; a pool states one, as its processes are bounded).
pub const DEFAULT_ASGI_CONCURRENCY: u32 = 100;
/// The most requests a pool may run at once over all its workers (`workers` × `concurrency`,
/// counting the room for replacements twice): each is a worker entry in the shared region.
pub const MAX_LANES: u64 = 65_536;

/// ASGI's lifespan protocol, as uvicorn's `--lifespan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifespan {
    /// Run it if the app supports it; an app that raises on the `lifespan` scope before its
    /// startup message is taken not to (a warning line), and serves.
    Auto,
    /// Run it: an app that fails or refuses it does not serve.
    On,
    /// Never send the `lifespan` scope.
    Off,
}

impl Lifespan {
    pub fn name(self) -> &'static str {
        match self {
            Lifespan::Auto => "auto",
            Lifespan::On => "on",
            Lifespan::Off => "off",
        }
    }
}

/// A pool's settings as poold runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// The pool's name (`pool NAME`, `--name`), in log lines and status.
    pub name: String,
    /// What it runs (`handler=`): checked by [`HandlerSpec::parse`].
    pub handler: String,
    /// Passed to the handler's `init` (`handler_args=`; quote the whole parameter if it has
    /// spaces: `"handler_args=a b"`).
    pub handler_args: Option<String>,
    /// Pool worker processes (`workers=N`), or the most of them (`workers=MIN-MAX`).
    pub workers: u32,
    /// With `workers=MIN-MAX`: the fewest; more are forked while requests wait, and those idle
    /// for `idle_timeout` stop again (php-fpm's `pm = dynamic`). None: a fixed size.
    pub min_workers: Option<u32>,
    /// How long a worker above `min_workers` may stay idle before it stops (`idle_timeout=`).
    pub idle_timeout_ms: u64,
    /// Requests that may wait for a worker beyond those running (`queue=`).
    pub queue: u32,
    /// A request running longer has its worker killed (`timeout=`); none: no limit.
    pub timeout_ms: Option<u64>,
    /// A pool worker retires after about this many requests (`max_requests=`).
    pub max_requests: Option<u32>,
    /// A pool worker retires above this resident size in bytes (`max_rss=`).
    pub max_rss: Option<u64>,
    /// Longest poll of an idle pool worker before it sleeps, in µs (`spin=`).
    pub spin_us: u64,
    /// Shared-memory arena for bodies, in bytes (`arena=`).
    pub arena: u64,
    /// The pool manager's working directory, set before the handler loads (`chdir=`, as
    /// Gunicorn's `--chdir`).
    pub chdir: Option<String>,
    /// Environment variables set in the pool manager before the handler loads, inherited by
    /// every worker (`env=NAME=VALUE`, repeatable, as Gunicorn's `--env`).
    pub env: Vec<String>,
    /// Who may attach besides root, by the credentials the kernel gives for a connection
    /// (`allow=USER[:GROUP]`, repeatable or `,`-separated; poold's `--allow`): its uid, and its
    /// gid where GROUP is given. Meant for an external pool, which has no secret from the nginx
    /// master to check; without it, poold admits its own user (`--user`'s, else the one it runs
    /// as: the socket's owner, which nginx's workers must be to connect) and root.
    pub allow: Vec<String>,
    /// WSGI: the virtualenv the app runs in (`venv=`, as uWSGI's `virtualenv`): its
    /// `bin/python` is the pool's interpreter.
    pub venv: Option<String>,
    /// WSGI: the interpreter the pool runs in (`python=PATH`), when not a venv's; without
    /// either, Debian's `/usr/bin/python3`.
    pub python: Option<String>,
    /// WSGI: directories put first on `sys.path`, `:`-separated (`python_path=`, as Gunicorn's
    /// `--pythonpath`).
    pub python_path: Option<String>,
    /// WSGI: import the app once in the pool manager before forking (`preload=on`, the
    /// default, as Gunicorn's `preload_app`), or in each worker after the fork (`off`).
    pub preload: bool,
    /// Lines a second that the pool's workers (and whatever they fork) may write to stdout and
    /// stderr, together; poold drops the rest and says how many (`log_rate=`). 0: no limit.
    pub log_rate: u32,
    /// Memory of all the pool's processes together, in bytes: the `memory.max` of its cgroup
    /// (`memory_max=`, as systemd's `MemoryMax=`); the kernel reclaims, then OOM-kills in it.
    pub memory_max: Option<u64>,
    /// Processes (and threads) of the pool, poold and its workers included: the `pids.max` of
    /// its cgroup (`pids_max=`, as systemd's `TasksMax=`); a fork beyond it fails (EAGAIN).
    pub pids_max: Option<u32>,
    /// The pool's share of CPU time against its siblings when the CPUs are busy, 1 to 10000
    /// (100 is everyone's default): the `cpu.weight` of its cgroup (`cpu_weight=`, as
    /// systemd's `CPUWeight=`).
    pub cpu_weight: Option<u32>,
    /// ASGI: requests (and WebSockets) a worker runs at once on its event loop
    /// (`concurrency=`); none: [`DEFAULT_ASGI_CONCURRENCY`] for ASGI, 1 for everything else.
    pub concurrency: Option<u32>,
    /// ASGI: the lifespan protocol (`lifespan=auto|on|off`).
    pub lifespan: Lifespan,
    /// ASGI: how often an open WebSocket that has heard nothing from its client pings it, and
    /// how long it then waits for an answer before it closes with 1011 (`ws_ping=`, uvicorn's
    /// `--ws-ping-interval` and `--ws-ping-timeout`); none: [`DEFAULT_WS_PING_MS`]; 0: never.
    pub ws_ping_ms: Option<u64>,
}

/// The default of `ws_ping=`: uvicorn's 20 s.
pub const DEFAULT_WS_PING_MS: u64 = 20_000;

/// The highest `pids_max=`: the kernel's highest pid (`PID_MAX_LIMIT`).
pub const MAX_PIDS_MAX: u32 = 4 << 20;
/// The range of cgroup v2's `cpu.weight`.
pub const MAX_CPU_WEIGHT: u32 = 10_000;

/// The settings' names, as in nginx.conf; on poold's command line `_` becomes `-`.
pub const SETTING_NAMES: &[&str] = &[
    "name",
    "handler",
    "handler_args",
    "workers",
    "queue",
    "timeout",
    "max_requests",
    "max_rss",
    "spin",
    "arena",
    "chdir",
    "env",
    "allow",
    "venv",
    "python",
    "python_path",
    "preload",
    "idle_timeout",
    "log_rate",
    "memory_max",
    "pids_max",
    "cpu_weight",
    "concurrency",
    "lifespan",
    "ws_ping",
];

impl PoolSettings {
    /// A pool named `name` with every default; `handler` still to be set.
    pub fn new(name: &str) -> PoolSettings {
        PoolSettings {
            name: name.to_string(),
            handler: String::new(),
            handler_args: None,
            workers: default_workers(),
            min_workers: None,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            queue: DEFAULT_QUEUE,
            timeout_ms: None,
            max_requests: None,
            max_rss: None,
            spin_us: DEFAULT_SPIN_US,
            arena: DEFAULT_ARENA,
            chdir: None,
            env: Vec::new(),
            allow: Vec::new(),
            venv: None,
            python: None,
            python_path: None,
            preload: true,
            log_rate: DEFAULT_LOG_RATE,
            memory_max: None,
            pids_max: None,
            cpu_weight: None,
            concurrency: None,
            lifespan: Lifespan::Auto,
            ws_ping_ms: None,
        }
    }

    /// Whether the pool runs an ASGI app.
    pub fn is_asgi(&self) -> bool {
        self.handler.starts_with("asgi:")
    }

    /// Requests a worker runs at once.
    pub fn concurrency(&self) -> u32 {
        match self.concurrency {
            Some(n) => n,
            None if self.is_asgi() => DEFAULT_ASGI_CONCURRENCY,
            None => 1,
        }
    }

    /// Checks the settings against each other: what is ASGI's only, and the bound of requests
    /// at once.
    pub fn check_combination(&self) -> Result<(), String> {
        if !self.is_asgi() && !self.handler.is_empty() {
            if self.concurrency.is_some_and(|n| n > 1) {
                return Err(format!(
                    "concurrency= is only for asgi: pools (a {} worker runs one request at a time)",
                    self.handler.split(':').next().unwrap_or_default()
                ));
            }
            if self.lifespan != Lifespan::Auto {
                return Err("lifespan= is only for asgi: pools".to_string());
            }
            if self.ws_ping_ms.is_some() {
                return Err("ws_ping= is only for asgi: pools (WebSockets)".to_string());
            }
        }
        let lanes = u64::from(self.workers) * 2 * u64::from(self.concurrency());
        if lanes > MAX_LANES {
            return Err(format!(
                "too many requests at once: workers={} x concurrency={} (with room for each worker's replacement) is over {}",
                self.workers,
                self.concurrency(),
                MAX_LANES / 2
            ));
        }
        Ok(())
    }

    /// Whether `key` (nginx.conf spelling) is one of these settings.
    pub fn knows(key: &str) -> bool {
        SETTING_NAMES.contains(&key)
    }

    /// Sets `key` (nginx.conf spelling) to `value`; the reason if the value is not valid for
    /// it. Call only for a key [`PoolSettings::knows`].
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let number = |max: u32| -> Result<u32, String> {
            match value.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "invalid {key} \"{value}\" (a number from 1 to {max})"
                )),
            }
        };
        let size_from_1m = || match parse_size(value) {
            Some(n) if n >= 1 << 20 => Ok(n),
            _ => Err(format!("invalid {key} \"{value}\" (a size of at least 1m)")),
        };
        match key {
            "name" if valid_name(value) => self.name = value.to_string(),
            "name" => {
                return Err(format!(
                    "invalid pool name \"{value}\" (letters, digits, '_' and '-', up to 64)"
                ))
            }
            "handler" => {
                HandlerSpec::parse(value)?;
                self.handler = value.to_string();
            }
            "handler_args" => self.handler_args = Some(value.to_string()),
            "workers" => match value.split_once('-') {
                Some((lo, hi)) => {
                    let range = |v: &str| v.parse::<u32>().ok().filter(|n| (1..=4096).contains(n));
                    match (range(lo), range(hi)) {
                        (Some(lo), Some(hi)) if lo < hi => {
                            self.min_workers = Some(lo);
                            self.workers = hi;
                        }
                        _ => {
                            return Err(format!(
                                "invalid workers \"{value}\" (a number from 1 to 4096, or MIN-MAX with MIN < MAX)"
                            ))
                        }
                    }
                }
                None => {
                    self.workers = number(4096)?;
                    self.min_workers = None;
                }
            },
            "idle_timeout" => {
                self.idle_timeout_ms = match parse_time_ms(value) {
                    Some(ms) if ms > 0 => ms,
                    _ => {
                        return Err(format!(
                            "invalid idle_timeout \"{value}\" (a time such as 10s)"
                        ))
                    }
                }
            }
            "queue" => {
                self.queue = match value.parse::<u32>() {
                    Ok(n) if n <= 1 << 20 => n,
                    _ => {
                        return Err(format!(
                            "invalid queue \"{value}\" (a number from 0 to 1048576)"
                        ))
                    }
                }
            }
            "timeout" => {
                self.timeout_ms = match parse_time_ms(value) {
                    Some(ms) if ms > 0 => Some(ms),
                    _ => {
                        return Err(format!(
                            "invalid timeout \"{value}\" (a time such as 30s or 500ms)"
                        ))
                    }
                }
            }
            "max_requests" => self.max_requests = Some(number(u32::MAX)?),
            "max_rss" => self.max_rss = Some(size_from_1m()?),
            "spin" => {
                let us = match value.strip_suffix("us") {
                    Some(n) => n.parse::<u64>().ok(),
                    None => parse_time_ms(value).map(|ms| ms * 1000),
                };
                self.spin_us = match us {
                    Some(us) if us <= 10_000 => us,
                    _ => {
                        return Err(format!(
                            "invalid spin \"{value}\" (a time up to 10ms, such as 100us or 0)"
                        ))
                    }
                }
            }
            "arena" => self.arena = size_from_1m()?,
            "memory_max" => self.memory_max = Some(size_from_1m()?),
            "pids_max" => self.pids_max = Some(number(MAX_PIDS_MAX)?),
            "cpu_weight" => self.cpu_weight = Some(number(MAX_CPU_WEIGHT)?),
            "concurrency" => self.concurrency = Some(number(10_000)?),
            "ws_ping" => {
                self.ws_ping_ms = match value {
                    "off" => Some(0),
                    v => match parse_time_ms(v) {
                        Some(ms) => Some(ms),
                        None => {
                            return Err(format!(
                                "invalid ws_ping \"{value}\" (a time such as 20s, or off)"
                            ))
                        }
                    },
                }
            }
            "lifespan" => {
                self.lifespan = match value {
                    "auto" => Lifespan::Auto,
                    "on" => Lifespan::On,
                    "off" => Lifespan::Off,
                    _ => return Err(format!("invalid lifespan \"{value}\" (auto, on or off)")),
                }
            }
            "chdir" | "venv" | "python" | "python_path" if value.is_empty() => {
                return Err(format!("{key}= needs a path"))
            }
            "chdir" => self.chdir = Some(value.to_string()),
            "venv" => self.venv = Some(value.to_string()),
            "python" => self.python = Some(value.to_string()),
            "python_path" => self.python_path = Some(value.to_string()),
            "preload" => {
                self.preload = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("invalid preload \"{value}\" (on or off)")),
                }
            }
            "log_rate" => {
                self.log_rate = match value.parse::<u32>() {
                    Ok(n) if n <= MAX_LOG_RATE => n,
                    _ => {
                        return Err(format!(
                            "invalid log_rate \"{value}\" (lines a second from 1 to {MAX_LOG_RATE}, or 0 for no limit)"
                        ))
                    }
                }
            }
            "allow" => {
                for spec in value.split(',') {
                    if !valid_allow(spec) {
                        return Err(format!(
                            "invalid allow \"{value}\" (USER or USER:GROUP, names or numbers, separated by ',')"
                        ));
                    }
                    self.allow.push(spec.to_string());
                }
            }
            "env" => match value.split_once('=') {
                Some((name, _))
                    if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && !name.as_bytes()[0].is_ascii_digit() =>
                {
                    self.env.push(value.to_string())
                }
                _ => {
                    return Err(format!(
                        "invalid env \"{value}\" (NAME=VALUE, NAME of letters, digits and '_')"
                    ))
                }
            },
            _ => return Err(format!("invalid parameter \"{key}={value}\"")),
        }
        Ok(())
    }

    /// The command line that makes poold read back exactly these settings: `--key value` for
    /// each that is set.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut put = |key: &str, value: String| {
            args.push(format!("--{}", key.replace('_', "-")));
            args.push(value);
        };
        put("name", self.name.clone());
        put("handler", self.handler.clone());
        if let Some(a) = &self.handler_args {
            put("handler_args", a.clone());
        }
        put(
            "workers",
            match self.min_workers {
                Some(min) => format!("{min}-{}", self.workers),
                None => self.workers.to_string(),
            },
        );
        put("idle_timeout", format!("{}ms", self.idle_timeout_ms));
        put("queue", self.queue.to_string());
        if let Some(ms) = self.timeout_ms {
            put("timeout", format!("{ms}ms"));
        }
        if let Some(n) = self.max_requests {
            put("max_requests", n.to_string());
        }
        if let Some(n) = self.max_rss {
            put("max_rss", n.to_string());
        }
        put("spin", format!("{}us", self.spin_us));
        put("arena", self.arena.to_string());
        for (key, value) in [
            ("chdir", &self.chdir),
            ("venv", &self.venv),
            ("python", &self.python),
            ("python_path", &self.python_path),
        ] {
            if let Some(v) = value {
                put(key, v.clone());
            }
        }
        for e in &self.env {
            put("env", e.clone());
        }
        for a in &self.allow {
            put("allow", a.clone());
        }
        put("preload", if self.preload { "on" } else { "off" }.into());
        put("log_rate", self.log_rate.to_string());
        if let Some(n) = self.memory_max {
            put("memory_max", n.to_string());
        }
        if let Some(n) = self.pids_max {
            put("pids_max", n.to_string());
        }
        if let Some(n) = self.cpu_weight {
            put("cpu_weight", n.to_string());
        }
        if let Some(n) = self.concurrency {
            put("concurrency", n.to_string());
        }
        if let Some(ms) = self.ws_ping_ms {
            put("ws_ping", format!("{ms}ms"));
        }
        if self.lifespan != Lifespan::Auto {
            put("lifespan", self.lifespan.name().to_string());
        }
        args
    }

    /// The settings with relative paths (`chdir=`, `venv=`, `python_path=`) made absolute
    /// against nginx's prefix, as nginx.conf's paths are.
    pub fn absolute(mut self, prefix: &str) -> PoolSettings {
        let abs = |p: &str| {
            let path = std::path::Path::new(p);
            if path.is_relative() {
                std::path::Path::new(prefix)
                    .join(path)
                    .display()
                    .to_string()
            } else {
                p.to_string()
            }
        };
        self.chdir = self.chdir.as_deref().map(abs);
        self.venv = self.venv.as_deref().map(abs);
        self.python = self.python.as_deref().map(abs);
        self.python_path = self
            .python_path
            .as_deref()
            .map(|pp| pp.split(':').map(abs).collect::<Vec<_>>().join(":"));
        self
    }

    /// Checks what can be checked before the pool starts: the directories named exist, a
    /// `venv=` is a virtualenv with its interpreter, a `python=` is an executable file, and
    /// only one of them names the interpreter. The reason, naming the setting and the path.
    pub fn check_paths(&self) -> Result<(), String> {
        let is_dir = |key: &str, p: &str| {
            if std::path::Path::new(p).is_dir() {
                Ok(())
            } else {
                Err(format!("{key} \"{p}\" is not a directory"))
            }
        };
        if let Some(d) = &self.chdir {
            is_dir("chdir", d)?;
        }
        if let Some(v) = &self.venv {
            is_dir("venv", v)?;
            let cfg = std::path::Path::new(v).join("pyvenv.cfg");
            if !cfg.is_file() {
                return Err(format!(
                    "venv \"{v}\" is not a virtualenv (no pyvenv.cfg; make one with python3 -m venv)"
                ));
            }
            let python = std::path::Path::new(v).join("bin/python");
            if !is_executable(&python) {
                return Err(format!(
                    "venv \"{v}\" has no interpreter: {} is not an executable file (a venv moved or copied without the Python it was made with? make it again with python3 -m venv)",
                    python.display()
                ));
            }
        }
        if let Some(p) = &self.python {
            if self.venv.is_some() {
                return Err(format!(
                    "python=\"{p}\" and venv= both name the pool's interpreter: give one (a venv's interpreter is its bin/python)"
                ));
            }
            if !is_executable(std::path::Path::new(p)) {
                return Err(format!("python \"{p}\" is not an executable file"));
            }
        }
        for d in self.python_path.iter().flat_map(|pp| pp.split(':')) {
            is_dir("python_path", d)?;
        }
        Ok(())
    }

    /// The nginx.conf spelling of a poold option (`--max-requests` → `max_requests`), if it is
    /// one of these settings.
    pub fn key_of_option(option: &str) -> Option<String> {
        let key = option.strip_prefix("--")?.replace('-', "_");
        Self::knows(&key).then_some(key)
    }
}

/// Whether `path` (symbolic links followed) is a file someone may execute.
fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `USER` or `USER:GROUP`, each a user or group name as `useradd` takes it, or a number.
fn valid_allow(spec: &str) -> bool {
    let word = |w: &str| {
        !w.is_empty()
            && w.len() <= 32
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && !w.starts_with('-')
    };
    match spec.split_once(':') {
        Some((user, group)) => word(user) && word(group),
        None => word(spec),
    }
}

pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_read_back_to_the_same_settings() {
        let mut s = PoolSettings::new("app");
        for (k, v) in [
            ("handler", "dylib:/x y.so"),
            ("handler_args", "--k v"),
            ("workers", "2-5"),
            ("idle_timeout", "3s"),
            ("queue", "0"),
            ("timeout", "1m30s"),
            ("max_requests", "500"),
            ("max_rss", "200m"),
            ("spin", "0"),
            ("arena", "8m"),
            ("chdir", "/srv/app"),
            ("env", "A=1"),
            ("env", "B=x=y"),
            ("allow", "www-data,nginx:adm"),
            ("allow", "1000:1000"),
            ("venv", "/srv/venv"),
            ("python", "/usr/bin/python3.12"),
            ("python_path", "/a:/b"),
            ("preload", "off"),
            ("log_rate", "0"),
            ("memory_max", "512m"),
            ("pids_max", "64"),
            ("cpu_weight", "50"),
            ("concurrency", "8"),
            ("lifespan", "off"),
        ] {
            s.set(k, v).unwrap();
        }
        let args = s.to_args();
        let mut back = PoolSettings::new("other");
        for pair in args.chunks(2) {
            let key = PoolSettings::key_of_option(&pair[0]).expect("a setting");
            back.set(&key, &pair[1]).unwrap();
        }
        assert_eq!(back, s);
        assert_eq!(PoolSettings::key_of_option("--user"), None);
        assert!(s.clone().set("env", "1A=x").is_err());
        assert_eq!(s.allow, ["www-data", "nginx:adm", "1000:1000"]);
        for bad in ["", "a:", ":g", "a,,b", "-x", "a b", "a:b:c"] {
            let e = s.clone().set("allow", bad).unwrap_err();
            assert!(e.starts_with("invalid allow"), "{bad}: {e}");
        }
        assert!(s.clone().set("preload", "yes").is_err());
        assert!(s.clone().set("workers", "5-2").is_err());
        for bad in ["", "-1", "x", "1.5", "2000000", "200/s"] {
            let e = s.clone().set("log_rate", bad).unwrap_err();
            assert!(e.starts_with("invalid log_rate"), "{bad}: {e}");
        }
        for (key, bad) in [
            ("memory_max", "100k"),
            ("memory_max", "lots"),
            ("pids_max", "0"),
            ("pids_max", "5000000"),
            ("cpu_weight", "0"),
            ("cpu_weight", "10001"),
        ] {
            let e = s.clone().set(key, bad).unwrap_err();
            assert!(e.starts_with(&format!("invalid {key}")), "{key}={bad}: {e}");
        }
        assert_eq!((s.memory_max, s.pids_max), (Some(512 << 20), Some(64)));
        assert_eq!((s.min_workers, s.workers), (Some(2), 5));
        let rel = PoolSettings {
            python_path: Some("lib:/abs".into()),
            venv: Some("venv".into()),
            ..s
        }
        .absolute("/p/");
        assert_eq!(rel.python_path.as_deref(), Some("/p/lib:/abs"));
        assert_eq!(rel.venv.as_deref(), Some("/p/venv"));
        let e = rel.check_paths().unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
    }

    #[test]
    fn the_interpreter_is_named_once_and_must_be_there() {
        let dir = std::env::temp_dir().join(format!("ngx-pool-conf-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        let venv = dir.display().to_string();
        let with = |pairs: &[(&str, &str)]| {
            let mut s = PoolSettings::new("a");
            for (k, v) in pairs {
                s.set(k, v).unwrap();
            }
            s.check_paths()
        };
        let e = with(&[("venv", &venv)]).unwrap_err();
        assert!(
            e.contains("has no interpreter") && e.contains("bin/python"),
            "{e}"
        );
        std::os::unix::fs::symlink("/bin/sh", dir.join("bin/python")).unwrap();
        assert_eq!(with(&[("venv", &venv)]), Ok(()));
        let e = with(&[("venv", &venv), ("python", "/bin/sh")]).unwrap_err();
        assert!(e.contains("both name the pool's interpreter"), "{e}");
        assert_eq!(with(&[("python", "/bin/sh")]), Ok(()));
        let e = with(&[("python", "/nonexistent/python3")]).unwrap_err();
        assert!(e.contains("is not an executable file"), "{e}");
        let e = with(&[("python", &dir.join("pyvenv.cfg").display().to_string())]).unwrap_err();
        assert!(e.contains("is not an executable file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_name_is_settable() {
        for key in SETTING_NAMES {
            if let Err(e) = PoolSettings::new("a").set(key, "\u{1}") {
                assert!(!e.contains("invalid parameter"), "{key}: {e}");
            }
        }
    }
}
