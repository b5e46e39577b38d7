//! The `pool` directive's parameters, parsed and checked in plain Rust.
//!
//! A crate of its own so its tests link without nginx (the module's own test binary cannot).
//!
//! `pool NAME handler=SPEC [handler_args=STR] [workers=N] [queue=N] [timeout=TIME]
//! [queue_timeout=TIME] [socket=PATH] [arena=SIZE] [external];`

use std::path::{Path, PathBuf};

/// Handlers poold has compiled in (`builtin:NAME`).
pub const BUILTIN_HANDLERS: &[&str] =
    &["echo", "hello", "sleep", "cpu", "crash", "spawn", "stream"];

mod settings;
pub use settings::*;

/// One declared pool: what poold runs it with, and what only the nginx side uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConf {
    pub settings: PoolSettings,
    /// Longest wait in the queue before 503 (`queue_timeout=`); none: only `timeout` applies.
    pub queue_timeout_ms: Option<u64>,
    /// As written; made absolute against the prefix by the caller.
    pub socket: Option<String>,
    pub external: bool,
    /// The user (and group) the pool's code runs as (`user=`, `group=`, as php-fpm's pool
    /// `user` and `group`); none: nginx's `user`. Only where nginx runs as root.
    pub user: Option<String>,
    pub group: Option<String>,
}

/// Parses nginx time syntax: `30s`, `500ms`, `1m`, `1h30m`, a bare number is seconds.
pub fn parse_time_ms(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return n.checked_mul(1000);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let mult = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(mult)?)?;
    }
    Some(total)
}

/// Parses nginx size syntax: `1024`, `16k`, `64m`, `1g`.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// What a pool runs: the one parser of handler specs, shared by the module's `nginx -t` and
/// poold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerSpec {
    /// `builtin:NAME`: compiled into poold.
    Builtin(String),
    /// `dylib:PATH`: a handler library exporting `ngx_pool_handler_v1`.
    Dylib(PathBuf),
    /// `wsgi:MODULE[:CALLABLE]` or `asgi:MODULE[:APP]`: a Python app, run in the app's own
    /// interpreter by the `ngx-pool` package's extension. The callable defaults to
    /// `application` for WSGI, as Gunicorn's does, and `app` for ASGI.
    Python {
        interface: Interface,
        module: String,
        callable: String,
    },
}

/// How a Python app is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// PEP 3333: one request at a time per worker.
    Wsgi,
    /// ASGI 3.0: an event loop per worker, `concurrency=` requests at once.
    Asgi,
}

impl Interface {
    pub fn name(self) -> &'static str {
        match self {
            Interface::Wsgi => "wsgi",
            Interface::Asgi => "asgi",
        }
    }
}

/// A dotted Python name (`pkg.mod`), as `import` takes it.
fn python_dotted(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(python_identifier)
}

fn python_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f == '_' || f.is_alphabetic())
        && c.all(|c| c == '_' || c.is_alphanumeric())
}

impl HandlerSpec {
    /// Parses `builtin:NAME` or `dylib:PATH`; the reason if it is neither.
    pub fn parse(spec: &str) -> Result<HandlerSpec, String> {
        match spec.split_once(':') {
            Some(("builtin", name)) if BUILTIN_HANDLERS.contains(&name) => {
                Ok(HandlerSpec::Builtin(name.to_string()))
            }
            Some(("builtin", name)) => Err(format!(
                "unknown handler \"builtin:{name}\" (built-in handlers: {})",
                BUILTIN_HANDLERS.join(", ")
            )),
            Some(("dylib", "")) => Err("handler \"dylib:\" needs a path".to_string()),
            Some(("dylib", path)) => Ok(HandlerSpec::Dylib(PathBuf::from(path))),
            Some((kind @ ("wsgi" | "asgi"), app)) => {
                let (interface, default, upper) = if kind == "wsgi" {
                    (Interface::Wsgi, "application", "WSGI")
                } else {
                    (Interface::Asgi, "app", "ASGI")
                };
                let (module, callable) = app.split_once(':').unwrap_or((app, default));
                if !python_dotted(module) || !python_dotted(callable) {
                    return Err(format!(
                        "invalid {upper} app \"{app}\" (expected {kind}:MODULE:CALLABLE, as in {kind}:myapp:app)"
                    ));
                }
                Ok(HandlerSpec::Python {
                    interface,
                    module: module.to_string(),
                    callable: callable.to_string(),
                })
            }
            _ => Err(format!(
                "unknown handler \"{spec}\" (expected builtin:NAME, dylib:PATH, wsgi:MODULE:CALLABLE or asgi:MODULE:APP)"
            )),
        }
    }

    /// The spec with a relative library path made absolute against `prefix` (nginx's prefix:
    /// paths in nginx.conf are relative to it, as `load_module`'s are).
    pub fn absolute(self, prefix: &str) -> HandlerSpec {
        match self {
            HandlerSpec::Dylib(p) if p.is_relative() => {
                HandlerSpec::Dylib(PathBuf::from(prefix).join(p))
            }
            other => other,
        }
    }

    /// Checks what can be checked before running it: a library must be a readable file.
    pub fn check_files(&self) -> Result<(), String> {
        let HandlerSpec::Dylib(path) = self else {
            return Ok(());
        };
        match std::fs::File::open(path).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(format!(
                "handler library \"{}\" is not a file",
                path.display()
            )),
            Err(e) => Err(format!("handler library \"{}\": {e}", path.display())),
        }
    }
}

impl std::fmt::Display for HandlerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerSpec::Builtin(n) => write!(f, "builtin:{n}"),
            HandlerSpec::Dylib(p) => write!(f, "dylib:{}", p.display()),
            HandlerSpec::Python {
                interface,
                module,
                callable,
            } => write!(f, "{}:{module}:{callable}", interface.name()),
        }
    }
}

/// Parses the arguments after `pool`. Errors are the reason only; nginx adds file and line.
pub fn parse_pool(args: &[&str]) -> Result<PoolConf, String> {
    let (name, params) = args.split_first().ok_or("pool needs a name")?;
    let mut settings = PoolSettings::new("pool");
    settings.set("name", name)?;
    // A request nginx waits for has a deadline by default (proxy_read_timeout's 60 s).
    settings.timeout_ms = Some(DEFAULT_TIMEOUT_MS);
    let mut p = PoolConf {
        settings,
        queue_timeout_ms: None,
        socket: None,
        external: false,
        user: None,
        group: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for param in params {
        if *param == "external" {
            p.external = true;
            continue;
        }
        let Some((key, value)) = param.split_once('=') else {
            return Err(format!("invalid parameter \"{param}\""));
        };
        // Every parameter but env= is given once: a second handler= or workers= is a mistake
        // to name, not a value to take silently.
        if key != "env" {
            if seen.contains(&key) {
                return Err(format!("duplicate parameter \"{key}=\""));
            }
            seen.push(key);
        }
        match key {
            "name" => return Err(format!("invalid parameter \"{param}\"")),
            k if PoolSettings::knows(k) => p.settings.set(k, value)?,
            "queue_timeout" => {
                p.queue_timeout_ms = match parse_time_ms(value) {
                    Some(ms) if ms > 0 => Some(ms),
                    _ => {
                        return Err(format!(
                            "invalid queue_timeout \"{value}\" (a time such as 1s or 200ms)"
                        ))
                    }
                }
            }
            "socket" if !value.is_empty() => p.socket = Some(value.to_string()),
            "user" | "group" => {
                let valid = !value.is_empty()
                    && value.len() <= 32
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !valid {
                    return Err(format!("invalid {key} \"{value}\" (a name or number)"));
                }
                if value == "root" || value == "0" {
                    return Err(format!(
                        "invalid {key} \"{value}\": a pool's code must not run as root"
                    ));
                }
                if key == "user" {
                    p.user = Some(value.to_string());
                } else {
                    p.group = Some(value.to_string());
                }
            }
            _ => return Err(format!("invalid parameter \"{param}\"")),
        }
    }
    if p.settings.arena > MAX_ARENA {
        return Err(format!(
            "invalid arena \"{}\" (at most 64g: the region is one shared mapping)",
            params
                .iter()
                .find_map(|a| a.strip_prefix("arena="))
                .unwrap_or_default()
        ));
    }
    if p.settings.handler.is_empty() && !p.external {
        return Err(format!("pool \"{}\" needs handler=", p.settings.name));
    }
    p.settings.check_combination()?;
    if p.external && p.socket.is_none() {
        return Err(format!(
            "external pool \"{}\" needs socket=PATH",
            p.settings.name
        ));
    }
    Ok(p)
}

/// Where a managed pool's socket goes when `socket=` is not given and the prefix has no `logs/`
/// (a distribution's layout: Debian's prefix is `/usr/share/nginx`): a runtime directory the
/// nginx master creates (mode 0755) when it starts the pools.
pub const RUNTIME_DIR: &str = "/run/ngx-pool";

/// The socket path of a pool: `socket=` (relative to `prefix`), else `logs/pool-NAME.sock` in
/// the prefix if it has a `logs/` directory, else `RUNTIME_DIR/NAME.sock`.
pub fn socket_path(p: &PoolConf, prefix: &str) -> PathBuf {
    match &p.socket {
        Some(s) if Path::new(s).is_absolute() => PathBuf::from(s),
        Some(s) => Path::new(prefix).join(s),
        None => {
            let logs = Path::new(prefix).join("logs");
            if logs.is_dir() {
                logs.join(format!("pool-{}.sock", p.settings.name))
            } else {
                Path::new(RUNTIME_DIR).join(format!("{}.sock", p.settings.name))
            }
        }
    }
}

/// The largest `arena=`: one shared mapping per pool, in every nginx worker.
pub const MAX_ARENA: u64 = 64 << 30;

/// The longest path a unix socket may have (`sun_path` holds 108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Checks that a pool's socket can be made where it is to go: its path fits a unix socket
/// address, and its directory exists (or is the runtime directory, made at start, under a
/// writable parent). The reason, with what to do.
pub fn check_socket_dir(socket: &Path, external: bool) -> Result<(), String> {
    // A managed pool's later generations bind `NAME.gN.sock` beside it: room for `.g` and
    // the largest generation number.
    let room = if external { 0 } else { 12 };
    let len = socket.as_os_str().len() + room;
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "the socket path \"{}\" is too long: a unix socket's path has at most {MAX_SOCKET_PATH} bytes{} (choose a shorter socket=)",
            socket.display(),
            if external { "" } else { ", and a reload's generation adds up to 12" }
        ));
    }
    let dir = socket.parent().unwrap_or(Path::new("/"));
    if dir.is_dir() || external {
        // An external poold makes its own socket, perhaps later (systemd's RuntimeDirectory).
        return Ok(());
    }
    if dir == Path::new(RUNTIME_DIR) {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let writable = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())
            // SAFETY: access only reads the NUL-terminated path.
            .map(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
            .unwrap_or(false);
        if writable {
            return Ok(());
        }
        return Err(format!(
            "no place for the socket of pool \"{}\": the prefix has no logs/ directory and {} cannot be created (run nginx as root, create {} writable by nginx, or set socket=PATH)",
            socket.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default(),
            RUNTIME_DIR,
            RUNTIME_DIR
        ));
    }
    Err(format!(
        "the directory of socket \"{}\" does not exist (create it, or choose another socket=)",
        socket.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_twice_an_arena_too_large_and_a_socket_path_too_long_are_refused() {
        let twice = parse_pool(&["p", "handler=builtin:echo", "handler=builtin:hello"]);
        assert!(twice
            .unwrap_err()
            .contains("duplicate parameter \"handler=\""));
        let twice = parse_pool(&["p", "handler=builtin:echo", "workers=2", "workers=3"]);
        assert!(twice
            .unwrap_err()
            .contains("duplicate parameter \"workers=\""));
        assert!(parse_pool(&["p", "handler=builtin:echo", "env=A=1", "env=B=2"]).is_ok());
        let big = parse_pool(&["p", "handler=builtin:echo", "arena=99999999g"]);
        assert!(big.unwrap_err().contains("invalid arena \"99999999g\""));
        assert!(parse_pool(&["p", "handler=builtin:echo", "arena=64g"]).is_ok());
        let long = format!("/tmp/{}.sock", "s".repeat(120));
        let e = check_socket_dir(Path::new(&long), true).unwrap_err();
        assert!(
            e.contains("a unix socket's path has at most 107 bytes"),
            "{e}"
        );
        // A managed pool's reload adds `.gN` to its socket's name: that must fit too.
        let edge = format!("/tmp/{}.sock", "s".repeat(97));
        assert!(check_socket_dir(Path::new(&edge), true).is_ok());
        assert!(check_socket_dir(Path::new(&edge), false).is_err());
        let root = parse_pool(&["p", "handler=builtin:echo", "user=root"]);
        assert!(root.unwrap_err().contains("must not run as root"));
        assert!(check_socket_dir(Path::new("/tmp/short.sock"), true).is_ok());
    }

    #[test]
    fn full_pool_line() {
        let p = parse_pool(&[
            "app",
            "handler=builtin:cpu",
            "workers=4",
            "queue=10",
            "timeout=1m30s",
            "socket=/x.sock",
            "spin=50us",
        ])
        .unwrap();
        assert_eq!(
            (p.settings.workers, p.settings.queue, p.settings.timeout_ms),
            (4, 10, Some(90_000))
        );
        assert_eq!(p.settings.spin_us, 50);
        let q = parse_pool(&["b", "handler=builtin:echo", "spin=0"]).unwrap();
        assert_eq!(q.settings.spin_us, 0);
        assert_eq!(socket_path(&p, "/p/"), PathBuf::from("/x.sock"));
        let d = parse_pool(&["web", "handler=builtin:echo"]).unwrap();
        assert_eq!(
            socket_path(&d, "/nonexistent/"),
            PathBuf::from("/run/ngx-pool/web.sock")
        );
        let tmp = std::env::temp_dir().join(format!("conf-test-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("logs")).unwrap();
        let prefix = tmp.to_str().unwrap();
        assert_eq!(socket_path(&d, prefix), tmp.join("logs/pool-web.sock"));
        assert!(check_socket_dir(&tmp.join("logs/pool-web.sock"), false).is_ok());
        let e = check_socket_dir(&tmp.join("nope/x.sock"), false).unwrap_err();
        assert!(e.contains("does not exist (create it"), "{e}");
        assert!(check_socket_dir(&tmp.join("nope/x.sock"), true).is_ok());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = |a: &[&str]| parse_pool(a).unwrap_err();
        assert!(e(&["a", "handler=builtin:nope"]).contains("unknown handler"));
        assert!(e(&["a", "handler=python:x"]).contains("expected builtin:NAME, dylib:PATH, wsgi"));
        assert!(e(&["a", "handler=asgi:x-y"]).contains("invalid ASGI app"));
        assert!(e(&["a", "handler=wsgi:w", "concurrency=4"]).contains("only for asgi: pools"));
        assert!(e(&["a", "handler=builtin:echo", "lifespan=on"]).contains("only for asgi: pools"));
        assert!(e(&["a", "handler=asgi:w", "lifespan=yes"]).contains("invalid lifespan"));
        assert!(e(&["a", "handler=wsgi:w", "ws_ping=5s"]).contains("only for asgi: pools"));
        assert!(e(&["a", "handler=asgi:w", "ws_ping=soon"]).contains("invalid ws_ping"));
        assert!(e(&["a", "handler=asgi:w", "concurrency=0"]).contains("invalid concurrency"));
        assert!(
            e(&["a", "handler=asgi:w", "workers=4096", "concurrency=1000"])
                .contains("too many requests at once")
        );
        assert!(e(&["a", "handler=wsgi:my-app:app"]).contains("invalid WSGI app"));
        assert!(e(&["a", "handler=wsgi:"]).contains("invalid WSGI app"));
        assert!(e(&["a", "handler=dylib:"]).contains("needs a path"));
        assert!(e(&["a", "handler=builtin:echo", "workers=x"]).contains("invalid workers"));
        assert!(e(&["a", "handler=builtin:echo", "timeout=5q"]).contains("invalid timeout"));
        assert!(e(&["a", "handler=builtin:echo", "spin=1s"]).contains("invalid spin"));
        assert!(e(&["a", "handler=builtin:echo", "spin=fast"]).contains("invalid spin"));
        assert!(e(&["a", "handler=builtin:echo", "colour=red"]).contains("invalid parameter"));
        assert!(e(&["a"]).contains("needs handler"));
        assert!(e(&["a", "external"]).contains("socket"));
        assert!(e(&["a b"]).contains("invalid pool name"));
    }

    #[test]
    fn handler_specs() {
        assert_eq!(
            HandlerSpec::parse("builtin:echo"),
            Ok(HandlerSpec::Builtin("echo".into()))
        );
        let lib = HandlerSpec::parse("dylib:lib/h.so").unwrap();
        assert_eq!(lib.to_string(), "dylib:lib/h.so");
        assert_eq!(
            lib.clone().absolute("/p/"),
            HandlerSpec::Dylib(PathBuf::from("/p/lib/h.so"))
        );
        let e = lib.absolute("/nonexistent/").check_files().unwrap_err();
        assert!(
            e.contains("/nonexistent/lib/h.so") && e.contains("No such file"),
            "{e}"
        );
        assert!(HandlerSpec::Dylib("/".into())
            .check_files()
            .unwrap_err()
            .contains("not a file"));
        assert_eq!(
            HandlerSpec::parse("wsgi:pkg.web:app").unwrap().to_string(),
            "wsgi:pkg.web:app"
        );
        assert_eq!(
            HandlerSpec::parse("wsgi:hello").unwrap().to_string(),
            "wsgi:hello:application"
        );
        assert_eq!(
            HandlerSpec::parse("asgi:main").unwrap().to_string(),
            "asgi:main:app"
        );
        let a = parse_pool(&["a", "handler=asgi:main:api"]).unwrap();
        assert_eq!(a.settings.concurrency(), DEFAULT_ASGI_CONCURRENCY);
        let a = parse_pool(&["a", "handler=asgi:main:api", "concurrency=7"]).unwrap();
        assert_eq!(
            (a.settings.concurrency(), a.settings.lifespan),
            (7, Lifespan::Auto)
        );
        let w = parse_pool(&["a", "handler=wsgi:main"]).unwrap();
        assert_eq!(w.settings.concurrency(), 1);
        let p = parse_pool(&["a", "handler=dylib:/x.so", "handler_args=--k v"]).unwrap();
        assert_eq!(p.settings.handler_args.as_deref(), Some("--k v"));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time_ms("500ms"), Some(500));
        assert_eq!(parse_time_ms("2"), Some(2000));
        assert_eq!(parse_time_ms("1h"), Some(3_600_000));
        assert_eq!(parse_time_ms("s"), None);
    }
}
