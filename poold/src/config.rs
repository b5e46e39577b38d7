//! poold's command line: what one pool is made of.

use ngx_pool_channel::Geometry;
use std::path::PathBuf;

pub const USAGE: &str = "\
poold - ngx-pool's pool manager: runs a handler in a supervised pool of worker processes and
serves nginx workers (the ngx-pool module) through shared memory.

USAGE:
    poold --socket PATH --handler SPEC [OPTIONS]

REQUIRED:
    --socket PATH       unix socket the nginx workers attach to (created; mode 0600)
    --handler SPEC      builtin:echo | builtin:hello | builtin:sleep | builtin:cpu | builtin:crash
                        | builtin:spawn | builtin:stream | dylib:PATH (a handler library,
                        see docs/abi.md) | wsgi:MODULE:CALLABLE (a Python WSGI app)
                        | asgi:MODULE:APP (a Python ASGI app)

OPTIONS:
    --handler-args STR  passed to the handler's init (before the workers are forked)
    --chdir DIR         working directory of the pool (before the handler loads)
    --env NAME=VALUE    environment of the pool (repeatable)
    --venv DIR          wsgi: the app's virtualenv: its bin/python runs the pool
    --python PATH       wsgi: the interpreter that runs the pool, when not a venv's
                        [default: /usr/bin/python3]. It needs the ngx-pool package;
                        the pool runs as PATH -m ngx_pool serve (this program execs it)
    --python-path DIRS  wsgi: directories put first on sys.path (':'-separated)
    --preload on|off    wsgi, asgi: import the app before forking (on) or in each
                        worker [on]
    --concurrency N     asgi: requests (and WebSockets) a worker runs at once on its event
                        loop; the pool runs workers x N at once, the rest wait in the
                        queue [default: 100; 1 for every other handler]
    --lifespan auto|on|off
                        asgi: the lifespan protocol, as uvicorn's [auto]
    --ws-ping TIME      asgi: ping a WebSocket silent this long, close it (1011) if no
                        answer comes within as long again; off: never      [default: 20s]
    --name NAME         pool name used in log lines                  [default: pool]
    --workers N         pool worker processes                        [default: number of CPUs]
                        or MIN-MAX: MIN at start, more while requests wait, up to MAX
    --idle-timeout TIME with --workers MIN-MAX: a worker idle this long stops [default: 10s]
    --queue N           requests that may wait for a worker, beyond
                        those running; more get 503 at once           [default: 1024]
    --arena SIZE        shared-memory arena for request and response
                        bodies (k, m, g suffixes)                     [default: 64m]
    --chunk SIZE        arena chunk size                              [default: 16k]
    --max-conns N       nginx worker processes that may attach        [default: 256]
    --max-requests N    a worker retires after about N requests (N plus up to 10% jitter, so
                        workers do not all retire at once) and a fresh one replaces it
    --max-rss SIZE      a worker retires after a request that left it above SIZE resident
    --spin TIME         the longest an idle pool worker polls the queue before it sleeps
                        (100us; 0 never polls). Adaptive: it polls about twice as long as
                        work took to come lately, and stops polling for a while after a
                        poll that found nothing or was preempted (cores busy) [default: 100us]
    --timeout TIME      a request running longer (30s, 500ms) gets its worker SIGTERM, then
                        SIGKILL 2 s later, and a fresh worker replaces it [default: none]
    --user USER         when started as root: owner of the socket, and the user (and its
                        group) poold becomes for good before it loads the handler, so
                        the pool's code never runs as root
    --group GROUP       group for the above                           [default: USER's group]
    --allow USER[:GROUP]
                        who may attach besides root, by the credentials of the connection
                        (SO_PEERCRED): that user (and group); repeatable or ','-separated.
                        With it the socket's mode is 0666: this is the check
                        [default: --user's user, else the user poold runs as]
    --error-log PATH    stdout and stderr are this file (the nginx module passes its error
                        log): once a rotation moved it (logrotate, then nginx -s reopen),
                        poold reopens it, looking once a second
    --log-rate N        lines a second the pool workers may write to stdout and stderr (a
                        pipe poold reads: their lines reach poold's stderr), all together;
                        the rest are dropped and counted, one line a second says how many;
                        0: no limit                                   [default: 200]
    --memory-max SIZE   memory of all the pool's processes together (its cgroup's
                        memory.max, as systemd's MemoryMax=)
    --pids-max N        processes and threads of the pool, poold and its workers included
                        (pids.max, as systemd's TasksMax=): a fork beyond fails
    --cpu-weight N      the pool's CPU share when the CPUs are busy, 1-10000 (cpu.weight,
                        as systemd's CPUWeight=; 100 is the default of every cgroup)
                        These three need the pool's cgroup (managed mode: the watchdog
                        makes one; see NGX_POOL_NO_CGROUP below) and its controller: where
                        either is missing, one warning line each and no limit
    --lifeline-fd FD    exit when this descriptor reaches end of file (set by the nginx
                        module in managed mode, where poold also runs under a watchdog
                        process that starts a new one if it dies)
    --ready-fd FD       write one byte to this descriptor once serving ('R') or once the
                        handler failed to load ('F'), then close it (the nginx module's
                        start-up wait)
    --secret-fd FD      (set by the nginx module) a descriptor holding the secret that the
                        nginx workers of the master that started poold present; a peer
                        without it is refused
    --successor         (set by the nginx module) another generation of the pool serves,
                        which this one replaces once it serves (a reload): if its handler
                        fails to load, nginx keeps the running one, and the log says so
    --listen-fd FD      (internal, with --control-fd FD) the pool's socket, bound by the
                        watchdog that started this poold in the app's interpreter
    --spare-of PID      (internal, with --spare-link FD) stand by as the spare of this
                        watchdog, which started it with the rest of its own command line,
                        and take its place if it dies
    -h, --help          this text
    -V, --version       version

Bodies of any size stream through the arena, up to 1 MiB in flight per request and direction.
Signals: TERM, INT or QUIT stop the workers and remove the socket. USR2 drains: the socket
goes, attached nginx workers are served until they detach, then poold stops.
No process outlives the pool: in managed mode the watchdog puts the pool's processes in a
cgroup v2 of their own (ngx-pool-NAME-PID under its own cgroup), killed whole when poold dies
and when the pool stops. Where no cgroup v2 is writable, or NGX_POOL_NO_CGROUP=1 is in the
environment, the watchdog and poold are child subreapers instead and end whatever the pool's
code orphaned (poold when it stops, the watchdog when poold dies or stops).
";

/// One pool's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// What the pool runs and how (shared with the `pool` directive, which passes them).
    pub pool: PoolSettings,
    pub socket: PathBuf,
    pub chunk: u64,
    pub max_conns: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    pub lifeline_fd: Option<i32>,
    pub ready_fd: Option<i32>,
    /// A memfd holding the attachment secret (managed mode; see `supervisor::peers`).
    pub secret_fd: Option<i32>,
    /// Set in a watchdog's spare (see `watchdog::stand_in`): the watchdog's pid, and the
    /// descriptor it tells the spare which poold it keeps on.
    pub spare_of: Option<i32>,
    pub spare_link: Option<i32>,
    /// Set in a poold started in the app's interpreter (`watchdog::interpreter`): the listening
    /// socket the watchdog (or the external poold that execed it) bound, and poold's end of
    /// the control link (managed pools only).
    pub listen_fd: Option<i32>,
    pub control_fd: Option<i32>,
    /// Another generation of the pool serves while this one starts (`--successor`).
    pub successor: bool,
    /// The file stdout and stderr are, followed through a log rotation.
    pub error_log: Option<PathBuf>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

// Sizes and times are written as in nginx.conf (`16k`, `64m`, `500ms`, `1m30s`), by the same
// parser the module uses.
use ngx_pool_conf::PoolSettings;
pub use ngx_pool_conf::{parse_size, parse_time_ms};

impl Config {
    /// The region geometry these settings make.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            slots: self.pool.workers * self.lanes() + self.pool.queue,
            chunk_size: self.chunk as u32,
            chunks: (self.pool.arena / self.chunk) as u32,
            max_conns: self.max_conns,
            // A region worker entry per lane of every process there may be.
            max_workers: self.processes_max() * self.lanes(),
        }
    }

    /// Worker processes there may be at once: room for a replacement per worker, as a
    /// retiring worker's successor is forked before it leaves.
    pub fn processes_max(&self) -> u32 {
        (self.pool.workers * 2).min(8192)
    }

    /// Requests a worker process runs at once (`--concurrency`): each holds one of the
    /// process's lanes, a region worker entry of its own (see `crate::lanes`).
    pub fn lanes(&self) -> u32 {
        self.pool.concurrency()
    }

    /// A request running longer has its worker killed (`--timeout`).
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.pool.timeout_ms.map(std::time::Duration::from_millis)
    }

    /// Longest poll of an idle worker before it sleeps (`--spin`).
    pub fn spin(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.pool.spin_us)
    }
}

/// Parses poold's arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut it = args.into_iter();
    let mut cfg = Config {
        pool: PoolSettings::new("pool"),
        socket: PathBuf::new(),
        chunk: 16 << 10,
        max_conns: 256,
        user: None,
        group: None,
        lifeline_fd: None,
        ready_fd: None,
        secret_fd: None,
        spare_of: None,
        spare_link: None,
        listen_fd: None,
        control_fd: None,
        successor: false,
        error_log: None,
    };
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{key} needs {what}"))
        };
        let number = |v: String, key: &str| -> Result<u32, String> {
            v.parse::<u32>()
                .map_err(|_| format!("{key}: \"{v}\" is not a number"))
        };
        match key.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--successor" => cfg.successor = true,
            "--socket" => cfg.socket = PathBuf::from(value("a path")?),
            "--max-conns" => cfg.max_conns = number(value("a number")?, &key)?,
            "--chunk" => {
                let v = value("a size")?;
                cfg.chunk =
                    parse_size(&v).ok_or_else(|| format!("{key}: \"{v}\" is not a size"))?;
            }
            option => match PoolSettings::key_of_option(option) {
                Some(setting) => {
                    let v = value("a value")?;
                    cfg.pool
                        .set(&setting, &v)
                        .map_err(|e| format!("{key}: {e}"))?
                }
                None if option == "--error-log" => {
                    cfg.error_log = Some(PathBuf::from(value("a path")?))
                }
                None if option == "--user" => cfg.user = Some(value("a user")?),
                None if option == "--group" => cfg.group = Some(value("a group")?),
                None if option == "--lifeline-fd" => {
                    cfg.lifeline_fd = Some(number(value("a descriptor")?, &key)? as i32)
                }
                None if option == "--ready-fd" => {
                    cfg.ready_fd = Some(number(value("a descriptor")?, &key)? as i32)
                }
                None if option == "--secret-fd" => {
                    cfg.secret_fd = Some(number(value("a descriptor")?, &key)? as i32)
                }
                None if option == "--spare-of" => {
                    cfg.spare_of = Some(number(value("a pid")?, &key)? as i32)
                }
                None if option == "--listen-fd" => {
                    cfg.listen_fd = Some(number(value("a descriptor")?, &key)? as i32)
                }
                None if option == "--control-fd" => {
                    cfg.control_fd = Some(number(value("a descriptor")?, &key)? as i32)
                }
                None if option == "--spare-link" => {
                    cfg.spare_link = Some(number(value("a descriptor")?, &key)? as i32)
                }
                None => return Err(format!("unknown option \"{option}\" (see --help)")),
            },
        }
    }
    if cfg.socket.as_os_str().is_empty() {
        return Err("--socket is required (see --help)".into());
    }
    if cfg.pool.handler.is_empty() {
        return Err("--handler is required (see --help)".into());
    }
    cfg.pool.check_combination()?;
    if cfg.chunk > u32::MAX as u64 {
        return Err("--chunk too large".into());
    }
    cfg.geometry()
        .validate()
        .map_err(|e| format!("bad --arena/--chunk/--queue: {e}"))?;
    Ok(Command::Run(Box::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_and_defaults() {
        let Command::Run(c) = parse(args(
            "--socket /t/s --handler builtin:echo --workers=3 --arena 8m",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.pool.workers, c.pool.arena, c.pool.queue),
            (3, 8 << 20, 1024)
        );
        assert_eq!(c.geometry().chunks, 512);
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(parse(args("--handler builtin:echo"))
            .unwrap_err()
            .contains("--socket"));
        assert!(parse(args("--socket s --handler builtin:echo --workers x"))
            .unwrap_err()
            .contains("invalid workers"));
        assert!(parse(args("--socket s --handler builtin:echo --bogus"))
            .unwrap_err()
            .contains("unknown option"));
        let e = parse(args("--socket s --handler nope:x")).unwrap_err();
        assert!(e.starts_with("--handler: unknown handler"), "{e}");
        assert_eq!(parse_size("16k"), Some(16384));
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_time_ms("1m30s"), Some(90_000));
        assert_eq!(parse_time_ms("250ms"), Some(250));
        assert_eq!(parse_time_ms("x"), None);
    }
}
