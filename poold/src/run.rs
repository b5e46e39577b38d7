//! poold's run from its command line to its end: the `poold` binary's `main`, and the same run
//! in the app's own Python interpreter (`python -m ngx_pool serve`), whose extension module
//! brings the WSGI handler compiled in (the binary has no Python: it hands a `wsgi:` pool to
//! that interpreter).

use crate::config::{self, Command, Config};
use crate::handler::{LoadError, LoadedHandler};
use crate::log;
use crate::supervisor::Supervisor;
use ngx_pool_abi::ngx_pool_handler;
use std::os::fd::{FromRawFd, OwnedFd};

/// Exit status of a poold whose handler could not be loaded or initialised (EX_CONFIG); the
/// watchdog starts another after a growing delay, and the pool answers 503 meanwhile.
pub(crate) const EXIT_LOAD_FAILED: i32 = 78;

/// How a poold the watchdog started in the app's interpreter learns how many loads failed before
/// it (a forked one inherits the count).
pub(crate) const FAILED_LOADS_ENV: &str = "NGX_POOL_FAILED_LOADS";

/// Runs poold with `args` (its command line without the program name); returns only when
/// asked for its help or version, or once the pool has stopped. `python`: the Python
/// handlers' descriptors, when they are compiled into the running program (the Python
/// extension); without them, a `wsgi:` or `asgi:` pool is handed to its interpreter once the
/// socket is bound.
pub fn run(args: impl Iterator<Item = String>, python: Option<PythonHandlers>) {
    let cfg = match config::parse(args) {
        Ok(Command::Run(c)) => *c,
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            return;
        }
        Ok(Command::Version) => {
            println!("poold {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Err(e) => {
            eprintln!("poold: {e}");
            std::process::exit(2);
        }
    };
    log::set_pool_name(&cfg.pool.name);
    if let Some(n) = std::env::var(FAILED_LOADS_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
    {
        crate::host::set_failed_loads(n);
    }
    if let Some(path) = &cfg.error_log {
        log::follow(path.clone());
    }
    // A panic's message and place as one error_log line in nginx's format (the handler SDK
    // then says what it did about it).
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::log!("error", "worker {}: panic at {at}", std::process::id());
    }));
    let ready = cfg.ready_fd.map(|fd| {
        // SAFETY: the nginx module passes this descriptor to us by number and keeps no copy of
        // it in this process; we are its only owner.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    // Managed by nginx: this process stays as the watchdog, the pool runs in its child (which
    // returns here with the socket the watchdog bound, and the start-up report descriptor if it
    // is the first), and a new child replaces one that dies. An external poold binds its own.
    // Started by the watchdog in the app's interpreter: what a forked poold gets, by number.
    let handoff = match (cfg.lifeline_fd, cfg.spare_of, cfg.spare_link) {
        _ if cfg.listen_fd.is_some() => inherited(&cfg, ready),
        (Some(fd), Some(of), Some(link)) => {
            crate::watchdog::stand_in(&cfg, fd, link, nix::unistd::Pid::from_raw(of))
        }
        (Some(fd), _, _) => crate::watchdog::run(&cfg, fd, ready),
        _ => match Supervisor::bind(&cfg) {
            Ok((listener, socket_file)) => crate::watchdog::Handoff {
                ready,
                listener,
                socket_file,
                control: None,
            },
            Err(e) => {
                crate::log!("emerg", "{e}");
                std::process::exit(1);
            }
        },
    };
    // Root goes for good before any of the pool's code runs (a library's constructors, its
    // `init`, an app's imports): what needs root afterwards is the watchdog's.
    if let Err(e) = drop_root(&cfg) {
        crate::log!("emerg", "{e}");
        std::process::exit(1);
    }
    if python.is_none() && crate::watchdog::interpreter::is_python(&cfg) {
        // An external poold binary: the app's interpreter runs the pool, on the socket bound
        // here (a managed pool's watchdog does this itself).
        hand_to_interpreter(&cfg, &handoff);
    }
    let ready = handoff.ready;
    let handler = match load(&cfg, python) {
        Ok(h) => {
            crate::host::set_failed_loads(0);
            h
        }
        Err(e) => {
            if cfg.successor && !crate::watchdog::loaded_once() {
                // A reload's new generation: the running one goes on serving, and nginx stops
                // this one (the master says so too).
                crate::log!(
                    "error",
                    "{e}; this new generation does not start: the running one keeps serving with the previous settings"
                );
            } else {
                crate::log!(
                    "error",
                    "{e}; the pool answers 503 and poold tries again with a growing delay"
                );
            }
            report(ready, b'F');
            std::process::exit(EXIT_LOAD_FAILED);
        }
    };
    let lifeline = cfg.lifeline_fd.map(|fd| {
        // SAFETY: as for the ready descriptor above.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let socket = crate::supervisor::Socket {
        listener: handoff.listener,
        file: handoff.socket_file,
        control: handoff.control,
    };
    let supervisor = match Supervisor::new(cfg, handler, lifeline, socket) {
        Ok(s) => s,
        Err(e) => {
            // This pool cannot run; nginx and its other pools do: an error, not an emergency.
            crate::log!("error", "{e}; the pool answers 503");
            std::process::exit(1);
        }
    };
    report(ready, b'R');
    if let Err(e) = supervisor.run() {
        crate::log!("emerg", "{e}");
        std::process::exit(1);
    }
}

/// The socket and control link a watchdog passed by number (`--listen-fd`, `--control-fd`).
fn inherited(cfg: &Config, ready: Option<OwnedFd>) -> crate::watchdog::Handoff {
    let owned = |fd: Option<i32>| {
        fd.map(|fd| {
            // SAFETY: the watchdog passes these descriptors to us by number and keeps no copy
            // of them in this process; we are their only owner.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Not to be inherited by what this process starts (the watchdog cleared the flag
            // for the exec).
            let _ = nix::fcntl::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            fd
        })
    };
    let listener = owned(cfg.listen_fd);
    let control = owned(cfg.control_fd);
    let Some(listener) = listener else {
        // Only called with --listen-fd; a poold with no socket has nothing to do.
        std::process::exit(1);
    };
    crate::watchdog::Handoff {
        ready,
        listener,
        socket_file: ngx_pool_channel::socket_file::SocketFile::identify(&cfg.socket),
        control,
    }
}

/// Started as root with `--user`: becomes that user for good (real, effective and saved ids,
/// groups), so that nothing the pool runs can be root again.
pub(crate) fn drop_root(cfg: &Config) -> Result<(), String> {
    let (Some(user), true) = (&cfg.user, nix::unistd::geteuid().is_root()) else {
        return Ok(());
    };
    let (uid, gid) = crate::sys::lookup_user(user, cfg.group.as_deref())
        .map_err(|e| format!("--user {user}: {e}"))?;
    crate::sys::drop_root(uid, gid).map_err(|e| format!("cannot become user {user}: {e}"))
}

/// The handlers the Python extension has compiled in, one per interface.
#[derive(Clone, Copy)]
pub struct PythonHandlers {
    pub wsgi: &'static ngx_pool_handler,
    pub asgi: &'static ngx_pool_handler,
}

/// Loads the handler and runs its `init` (root is gone by now).
fn load(cfg: &Config, python: Option<PythonHandlers>) -> Result<LoadedHandler, LoadError> {
    use ngx_pool_conf::{HandlerSpec, Interface};
    let spec = HandlerSpec::parse(&cfg.pool.handler).map_err(LoadError)?;
    // chdir= and env= hold for the handler's whole life, in this process and every worker.
    if let Some(dir) = &cfg.pool.chdir {
        std::env::set_current_dir(dir).map_err(|e| LoadError(format!("chdir {dir}: {e}")))?;
    }
    for pair in &cfg.pool.env {
        if let Some((name, value)) = pair.split_once('=') {
            // Single-threaded here (nothing has started a thread yet): set_var is sound.
            std::env::set_var(name, value);
        }
    }
    let init_args = match spec {
        HandlerSpec::Python { .. } => crate::handler::python_init_config(&spec, &cfg.pool),
        _ => cfg.pool.handler_args.clone().unwrap_or_default(),
    };
    let handler = match (&spec, python) {
        (HandlerSpec::Python { interface, .. }, Some(handlers)) => {
            let desc = match interface {
                Interface::Wsgi => handlers.wsgi,
                Interface::Asgi => handlers.asgi,
            };
            LoadedHandler::compiled_in(desc, &spec)?
        }
        _ => LoadedHandler::load(&spec)?,
    };
    handler.init(&init_args)?;
    Ok(handler)
}

/// Becomes the pool's interpreter (`python -m ngx_pool serve`, this command line and the socket
/// by number); never returns: exits with the reason when the interpreter cannot run the pool.
fn hand_to_interpreter(cfg: &Config, handoff: &crate::watchdog::Handoff) -> ! {
    let python = match crate::watchdog::interpreter::for_pool(cfg) {
        Ok(Some(python)) => python,
        Ok(None) => std::process::exit(EXIT_LOAD_FAILED), // not a Python pool: never asked
        Err(e) => {
            crate::log!("error", "{e}; the pool answers 503");
            std::process::exit(EXIT_LOAD_FAILED);
        }
    };
    let e = crate::watchdog::interpreter::exec(
        cfg,
        &python,
        &handoff.listener,
        handoff.control.as_ref(),
        handoff.ready.as_ref(),
    );
    crate::log!("error", "cannot start {}: {e}", python.display());
    std::process::exit(EXIT_LOAD_FAILED);
}

/// Tells whoever started us how the start went (see `--ready-fd`).
fn report(ready: Option<OwnedFd>, what: u8) {
    if let Some(fd) = ready {
        let _ = nix::unistd::write(&fd, &[what]);
    }
}
