//! Managed mode: the nginx master starts one poold per pool and stops it when nginx exits.
//!
//! `init_module` runs in the master at start and on every reload (never acted on in `nginx -t`
//! or the `-s` signaller). A pool whose settings are unchanged keeps its poold across a reload;
//! a changed one gets a new generation that takes over while the old one drains; a removed one
//! is stopped. The module's statics survive reloads
//! because the new cycle opens the module before the old one closes it.
//!
//! Every poold inherits the read end of a *lifeline* pipe whose write end only the master holds
//! (workers close theirs in `init_process`): if the master dies, even by SIGKILL, poold reads end
//! of file and stops its workers. poold gets neither nginx's listening sockets nor its blocked
//! signal mask.
//!
//! Each poold started gets an attachment secret of its own (256 random bits): in a sealed memfd
//! it inherits (`--secret-fd`; not argv or the environment, which /proc shows to every local
//! user), and in [`SECRETS`], which the workers inherit by fork and present in their Hello.
//! poold admits no one else (see poold's `supervisor/peers.rs`); one secret per poold, not one
//! per master, so that what a pool's code can find in its own poold's memory opens no other
//! pool.

use crate::directives::{MainConf, Module, PoolEntry};
use nginx_sys::{ngx_cycle_t, NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_PROCESS_SIGNALLER};
use ngx::core::CoreModuleMainConf;
use ngx::http::HttpModuleMainConf;
use ngx_pool_channel::handshake::{Secret, SECRET_LEN};
use ngx_pool_channel::socket_file::SocketFile;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const START_WAIT: Duration = Duration::from_secs(5);
const STOP_WAIT: Duration = Duration::from_secs(5);
/// The descriptor number the lifeline has in poold.
const LIFELINE_FD: i32 = 3;
/// The descriptor number of poold's start-up report pipe (`--ready-fd`).
const READY_FD: i32 = 4;
/// The descriptor number of the memfd holding poold's attachment secret (`--secret-fd`).
const SECRET_FD: i32 = 5;

struct Running {
    name: String,
    /// poold's binary and arguments (with the configured socket): what makes a pool "the
    /// same" across a reload.
    daemon: PathBuf,
    argv: Vec<String>,
    pid: Pid,
    /// This generation's socket.
    socket: PathBuf,
    /// The file its poold bound there: what `stop` may remove (never another master's).
    socket_file: Option<SocketFile>,
    gen: u32,
    /// What this poold's nginx workers present when they attach.
    secret: Secret,
}

/// The lifeline pipe (read end, write end), created on first use.
static LIFELINE: Mutex<Option<(OwnedFd, OwnedFd)>> = Mutex::new(None);
static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());
/// Superseded generations finishing the old nginx workers' requests.
static DRAINING: Mutex<Vec<Running>> = Mutex::new(Vec::new());
/// The attachment secret of every running poold, by socket (each generation has a socket of
/// its own): what a worker presents to attach ([`secret_for`]). Kept in the workers, which
/// inherit it by fork; set again at every reload, so a worker holds those of its own cycle's
/// pools.
static SECRETS: Mutex<Vec<(PathBuf, Secret)>> = Mutex::new(Vec::new());

/// The secret to present to the managed poold on `socket`; `None` for an external pool.
pub fn secret_for(socket: &Path) -> Option<Secret> {
    let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    secrets.iter().find(|(s, _)| s == socket).map(|(_, k)| *k)
}

/// 256 bits from the kernel's random source, for one poold's attachment secret.
fn new_secret() -> std::io::Result<Secret> {
    use std::io::Read;
    let mut secret = [0u8; SECRET_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    Ok(secret)
}

/// A sealed memfd holding `secret`, for poold to inherit: sealed so that no process it reaches
/// can change what poold reads (poold reads it again after a restart). Close-on-exec here: the
/// child clears the flag on its own copy only.
fn secret_memfd(secret: &Secret) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(
        c"ngx-pool-secret",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let written = nix::unistd::write(&fd, secret)?;
    if written != SECRET_LEN {
        return Err(std::io::Error::other("short write of the secret"));
    }
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    above_placed(fd.as_raw_fd())
}

/// A close-on-exec duplicate of `fd` above the numbers poold's descriptors take in the child
/// (3 to SECRET_FD).
fn above_placed(fd: i32) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg};
    let high = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(SECRET_FD + 1))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; we are its only owner.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) })
}

/// Closes the master's lifeline ends in a worker process (see module docs).
pub fn close_lifeline_in_worker() {
    if let Ok(mut l) = LIFELINE.lock() {
        *l = None;
    }
    if let Ok(mut r) = RUNNING.lock() {
        r.clear();
    }
    if let Ok(mut r) = DRAINING.lock() {
        r.clear();
    }
}

fn log(cycle: *mut ngx_cycle_t, level: u32, msg: &str) {
    // SAFETY: `cycle` is the live cycle nginx passed to a hook; its log is valid.
    let log = unsafe { (*cycle).log };
    ngx::ngx_log_error!(level, log, "{}", msg);
}

/// Where a distribution's package puts poold, fixed when the module is built for it
/// (`NGX_POOL_DAEMON_PATH=/usr/lib/ngx-pool/poold`, as scripts/package-deb does).
const PACKAGED_DAEMON: Option<&str> = option_env!("NGX_POOL_DAEMON_PATH");

/// `pool_daemon`, else the packaged path if the module was built with one, else `poold` beside
/// this module's shared object.
fn daemon_path(main: &MainConf) -> PathBuf {
    if let Some(p) = &main.daemon {
        return p.clone();
    }
    if let Some(p) = PACKAGED_DAEMON {
        return PathBuf::from(p);
    }
    let mut info: libc::Dl_info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only reads the address (a function of this object) and fills `info`;
    // dli_fname, when set, is a NUL-terminated path owned by the dynamic loader.
    let so = unsafe {
        if libc::dladdr(daemon_path as *const libc::c_void, &mut info) != 0
            && !info.dli_fname.is_null()
        {
            std::ffi::CStr::from_ptr(info.dli_fname)
                .to_str()
                .ok()
                .map(PathBuf::from)
        } else {
            None
        }
    };
    so.and_then(|p| p.parent().map(|d| d.join("poold")))
        .unwrap_or_else(|| PathBuf::from("poold"))
}

/// The cycle's error log: its descriptor (stderr's if it has none), and its path when it is a
/// file (not stderr, not syslog). poold's stdout and stderr are that descriptor, and it follows
/// the path through a rotation.
fn error_log(cycle: *mut ngx_cycle_t) -> (i32, Option<PathBuf>) {
    // SAFETY: the cycle's log and its open file live as long as the cycle; we read the
    // descriptor number and the name, a (pointer, length) pair nginx set when it opened the
    // file, and copy the name out.
    let (fd, name) = unsafe {
        let log = (*cycle).log;
        if log.is_null() || (*log).file.is_null() {
            return (2, None);
        }
        let file = &*(*log).file;
        let name = (!file.name.data.is_null() && file.name.len > 0)
            .then(|| std::slice::from_raw_parts(file.name.data, file.name.len).to_vec());
        (file.fd, name)
    };
    let path = name
        .map(|n| PathBuf::from(std::ffi::OsStr::from_bytes(&n)))
        .filter(|p| p.is_absolute());
    (fd, path)
}

fn argv_for(pool: &PoolEntry, cycle: *mut ngx_cycle_t) -> Vec<String> {
    // The shared settings as poold reads them back (ngx_pool_conf::PoolSettings), then what
    // only the module knows: where the socket is, and whom to run as.
    let mut argv = pool.conf.settings.to_args();
    argv.extend(["--socket".into(), pool.socket.display().to_string()]);
    if let Some(log) = error_log(cycle).1 {
        // poold's stdout and stderr are this file (see `spawn`): it follows a rotation.
        argv.extend(["--error-log".into(), log.display().to_string()]);
    }
    if nix::unistd::geteuid().is_root() {
        // SAFETY: the core module's configuration exists in every cycle.
        let ccf = ngx::core::NgxCoreModule::main_conf(unsafe { &*cycle });
        if let Some(user) = &pool.conf.user {
            // A user of the pool's own (php-fpm's per-pool users): its code cannot touch
            // nginx's workers nor other pools' processes whatever they allow. nginx's workers
            // still attach: the socket admits nginx's user (with the pool's secret).
            argv.extend(["--user".into(), user.clone()]);
            if let Some(group) = &pool.conf.group {
                argv.extend(["--group".into(), group.clone()]);
            }
            if let Some(ccf) = ccf.filter(|c| c.user != libc::uid_t::MAX) {
                if pool.conf.settings.allow.is_empty() {
                    argv.extend(["--allow".into(), ccf.user.to_string()]);
                }
            }
        } else if let Some(ccf) = ccf {
            if ccf.user != libc::uid_t::MAX {
                argv.extend([
                    "--user".into(),
                    ccf.user.to_string(),
                    "--group".into(),
                    ccf.group.to_string(),
                ]);
            }
        }
    }
    argv
}

/// The socket of a pool's generation `gen`: the configured path for the first, then
/// `NAME.gN.sock` beside it, so that a new generation can start while the old one still serves.
fn generation_path(base: &Path, gen: u32) -> PathBuf {
    if gen <= 1 {
        return base.to_path_buf();
    }
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = match name.strip_suffix(".sock") {
        Some(stem) => format!("{stem}.g{gen}.sock"),
        None => format!("{name}.g{gen}"),
    };
    base.with_file_name(file)
}

/// `argv` with the value of `--socket` replaced by `socket`.
fn with_socket(argv: &[String], socket: &Path) -> Vec<String> {
    let mut out = argv.to_vec();
    if let Some(i) = out.iter().position(|a| a == "--socket") {
        if let Some(v) = out.get_mut(i + 1) {
            *v = socket.display().to_string();
        }
    }
    out
}

/// Starts, keeps or retires poolds to match the new configuration.
///
/// A changed pool gets a new *generation*: a new poold on a socket of its own, started before
/// anything else happens. Once every new generation is up, the old ones are told to drain
/// (SIGUSR2: they accept no new nginx workers and stop when the old nginx workers, which finish
/// their requests on them, have gone), and the new cycle's workers attach to the new sockets.
/// If a changed pool's new generation does not start, its current one keeps serving with the
/// previous settings (nginx cannot refuse a configuration from here: a failing `init_module`
/// makes the master exit).
pub fn on_init_module(cycle: *mut ngx_cycle_t) {
    // SAFETY: reading nginx's process-global flags in the master's single thread.
    let (testing, process) = unsafe { (nginx_sys::ngx_test_config, nginx_sys::ngx_process) };
    if testing != 0 || process == NGX_PROCESS_SIGNALLER as nginx_sys::ngx_uint_t {
        return;
    }
    // SAFETY: `cycle` is the cycle being initialised; its configuration is complete and only
    // this (single-threaded) master touches it until workers are forked.
    let Some(main) = Module::main_conf_mut(unsafe { &*cycle }) else {
        return;
    };
    let daemon = daemon_path(main);
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    let mut draining = DRAINING.lock().unwrap_or_else(|e| e.into_inner());
    draining.retain(|r| alive(r.pid));
    // Phase 1: start a generation for every pool that is new, changed or not running.
    let mut started: Vec<Running> = Vec::new();
    for pool in main.pools.iter().filter(|p| !p.conf.external) {
        let configured = argv_for(pool, cycle);
        // A pool running the operator's code (a library, a Python app) gets a new generation
        // on every reload, as Gunicorn's workers do on HUP: the code on disk may have changed.
        // The old generation drains, so no request is lost.
        let reloads_code = !matches!(
            ngx_pool_conf::HandlerSpec::parse(&pool.conf.settings.handler),
            Ok(ngx_pool_conf::HandlerSpec::Builtin(_))
        );
        let current = !reloads_code
            && running.iter().any(|r| {
                r.name == pool.conf.settings.name
                    && r.daemon == daemon
                    && r.argv == configured
                    && alive(r.pid)
            });
        if current {
            continue;
        }
        let gen = running
            .iter()
            .chain(draining.iter())
            .filter(|r| r.name == pool.conf.settings.name)
            .map(|r| r.gen)
            .max()
            .unwrap_or(0)
            + 1;
        let socket = generation_path(&pool.socket, gen);
        let mut argv = with_socket(&configured, &socket);
        let old = running
            .iter()
            .any(|r| r.name == pool.conf.settings.name && alive(r.pid));
        if old {
            // So that its own lines say what happens if it fails: the running one goes on.
            argv.push("--successor".into());
        }
        let mut secret = [0u8; SECRET_LEN];
        let spawned = new_secret().and_then(|s| {
            secret = s;
            spawn(&daemon, &argv, &socket, &secret, cycle)
        });
        let outcome = match spawned {
            // A new generation whose handler does not load must not replace one that serves.
            Ok((pid, Started::HandlerFailed)) if old => {
                stop(&Running {
                    name: pool.conf.settings.name.clone(),
                    daemon: daemon.clone(),
                    argv: configured.clone(),
                    pid,
                    socket_file: SocketFile::identify(&socket),
                    socket: socket.clone(),
                    gen,
                    secret,
                });
                Err(std::io::Error::other(
                    "its handler failed to load (the reason is in the error log above)",
                ))
            }
            other => other,
        };
        match outcome {
            Ok((pid, how)) => {
                let (level, how) = match how {
                    Started::Serving => (NGX_LOG_NOTICE, ""),
                    Started::HandlerFailed => (
                        NGX_LOG_WARN,
                        "; its handler failed to load (see above): the pool answers 503 while poold retries",
                    ),
                };
                log(
                    cycle,
                    level,
                    &format!(
                        "started poold {pid} for pool \"{}\" (generation {gen}) on {}{how}",
                        pool.conf.settings.name,
                        socket.display()
                    ),
                );
                started.push(Running {
                    name: pool.conf.settings.name.clone(),
                    daemon: daemon.clone(),
                    argv: configured,
                    pid,
                    socket_file: SocketFile::identify(&socket),
                    socket,
                    gen,
                    secret,
                });
            }
            // nginx goes on either way: an error (this pool answers 503) or, with the previous
            // generation still serving, a warning; never an [emerg] that does not stop nginx.
            Err(e) => {
                log(
                    cycle,
                    if old { NGX_LOG_WARN } else { NGX_LOG_ERR },
                    &format!(
                        "pool \"{}\": cannot start {}: {e}{}",
                        pool.conf.settings.name,
                        daemon.display(),
                        if old {
                            "; the pool keeps running with its previous settings"
                        } else {
                            "; its requests get 503"
                        }
                    ),
                );
            }
        }
    }
    // Phase 2: old generations of changed pools drain; pools no longer configured stop.
    let mut kept = Vec::new();
    for r in running.drain(..) {
        let superseded = started.iter().any(|s| s.name == r.name);
        let wanted = main
            .pools
            .iter()
            .any(|p| !p.conf.external && p.conf.settings.name == r.name);
        if superseded && alive(r.pid) {
            log(
                cycle,
                NGX_LOG_NOTICE,
                &format!(
                    "pool \"{}\": generation {} (poold {}) drains while the old nginx workers finish",
                    r.name, r.gen, r.pid
                ),
            );
            signal_pool(r.pid, Signal::SIGUSR2);
            draining.push(r);
        } else if superseded || !wanted || !alive(r.pid) {
            if alive(r.pid) {
                log(
                    cycle,
                    NGX_LOG_NOTICE,
                    &format!("stopping poold {} of pool \"{}\"", r.pid, r.name),
                );
            }
            stop(&r);
        } else {
            kept.push(r);
        }
    }
    kept.extend(started);
    // The new cycle's workers attach to their pool's current generation.
    for pool in main.pools.iter_mut().filter(|p| !p.conf.external) {
        if let Some(r) = kept.iter().find(|r| r.name == pool.conf.settings.name) {
            pool.socket = r.socket.clone();
        }
    }
    // What the new cycle's workers present: the secrets of the poolds they may attach to.
    *SECRETS.lock().unwrap_or_else(|e| e.into_inner()) = kept
        .iter()
        .chain(draining.iter())
        .map(|r| (r.socket.clone(), r.secret))
        .collect();
    *running = kept;
}

/// Whether anything of the pool started as `pid` still runs. A pool is the process group its
/// watchdog leads (`pid`): the watchdog, poold, and the watchdog's spare, which takes its place
/// if it dies (pool workers have groups of their own and die with poold), so a pool whose
/// watchdog was killed and replaced is still this group.
fn alive(pid: Pid) -> bool {
    // Our own child while nginx runs in the foreground: reap it if it is gone (a zombie would
    // keep the group alive).
    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    killpg(pid, None).is_ok()
}

/// Sends `sig` to every process of the pool started as `pid`.
fn signal_pool(pid: Pid, sig: Signal) {
    let _ = killpg(pid, sig);
}

fn lifeline_read_fd() -> std::io::Result<i32> {
    let mut l = LIFELINE.lock().unwrap_or_else(|e| e.into_inner());
    if l.is_none() {
        *l = Some(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?);
    }
    Ok(l.as_ref().expect("just set").0.as_raw_fd())
}

/// How a poold's start went.
enum Started {
    Serving,
    /// Its handler failed to load (poold logged why): the pool answers 503 while its watchdog
    /// tries again.
    HandlerFailed,
}

/// Forks and execs poold, then waits for its start-up report (or its death).
fn spawn(
    daemon: &Path,
    args: &[String],
    socket: &Path,
    secret: &Secret,
    cycle: *mut ngx_cycle_t,
) -> std::io::Result<(Pid, Started)> {
    make_runtime_dir(socket)?;
    // Every descriptor the child places at 3 to SECRET_FD comes from above that range, so that
    // placing one never overwrites another still to be placed.
    let lifeline = above_placed(lifeline_read_fd()?)?;
    let (ready_read, ready_low) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let ready_write = above_placed(ready_low.as_raw_fd())?;
    // Only the copy the child places may hold the pipe open: its end of file says it died.
    drop(ready_low);
    let ready = ready_write.as_raw_fd();
    let lifeline_fd = lifeline.as_raw_fd();
    let secret_fd = secret_memfd(secret)?;
    let secret_raw = secret_fd.as_raw_fd();
    let _ = std::fs::remove_file(socket);
    let mut argv: Vec<CString> = vec![CString::new(daemon.as_os_str().as_encoded_bytes())?];
    for a in args
        .iter()
        .cloned()
        .chain(["--lifeline-fd".into(), LIFELINE_FD.to_string()])
        .chain(["--ready-fd".into(), READY_FD.to_string()])
        .chain(["--secret-fd".into(), SECRET_FD.to_string()])
    {
        argv.push(CString::new(a)?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let (log_fd, _) = error_log(cycle);
    let dev_null = std::fs::File::open("/dev/null").ok();
    // SAFETY: the nginx master is single-threaded, so the child may run anything; still, between
    // fork and exec it only makes async-signal-safe calls on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only; every pointer was built before fork.
        unsafe {
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for sig in [
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGHUP,
                libc::SIGCHLD,
                libc::SIGPIPE,
            ] {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::setpgid(0, 0);
            // stdout and stderr to the error log (an app's print() lands there, as the docs
            // say), stdin from /dev/null: never the descriptors nginx was started with, which a
            // daemonizing nginx drops but poold, forked before that, would keep open (a shell's
            // `$(nginx)` would wait on them forever).
            if log_fd >= 0 {
                for to in [1, 2] {
                    if log_fd != to {
                        libc::dup2(log_fd, to);
                    }
                }
            }
            if let Some(null) = &dev_null {
                libc::dup2(null.as_raw_fd(), 0);
            }
            // dup2 onto itself keeps FD_CLOEXEC: clear it on both explicitly.
            for (from, to) in [
                (lifeline_fd, LIFELINE_FD),
                (ready, READY_FD),
                (secret_raw, SECRET_FD),
            ] {
                if from != to {
                    libc::dup2(from, to);
                }
                libc::fcntl(to, libc::F_SETFD, 0);
            }
            if libc::syscall(libc::SYS_close_range, SECRET_FD + 1, u32::MAX, 0) != 0 {
                for fd in SECRET_FD + 1..65536 {
                    libc::close(fd);
                }
            }
            libc::execv(argv_ptrs[0], argv_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let pid = Pid::from_raw(pid);
    drop(ready_write);
    // poold has its copy; the master keeps the secret in memory only (SECRETS).
    drop(secret_fd);
    // One byte from poold: 'R' serving, 'F' its handler failed; end of file: it died first.
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&ready_read),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = START_WAIT.as_millis() as u16;
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
    let mut byte = [0u8; 1];
    match nix::unistd::read(ready_read.as_raw_fd(), &mut byte) {
        Ok(1) if byte[0] == b'R' && socket.exists() => Ok((pid, Started::Serving)),
        Ok(1) if byte[0] == b'F' => Ok((pid, Started::HandlerFailed)),
        Ok(_) if !alive(pid) => Err(std::io::Error::other(
            "poold exited at start (its reason is in the error log above)",
        )),
        Ok(_) => Err(std::io::Error::other(
            "poold stopped before serving (its reason is in the error log above)",
        )),
        Err(_) => Err(std::io::Error::other(format!(
            "no socket at {} after {:?}",
            socket.display(),
            START_WAIT
        ))),
    }
}

/// Creates the runtime directory (`/run/ngx-pool`, mode 0755: the nginx workers' user must
/// reach the sockets in it, which poold makes theirs) when a pool's socket goes there.
fn make_runtime_dir(socket: &Path) -> std::io::Result<()> {
    let dir = Path::new(ngx_pool_conf::RUNTIME_DIR);
    if socket.parent() != Some(dir) || dir.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
}

fn stop(r: &Running) {
    signal_pool(r.pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_WAIT;
    while alive(r.pid) {
        if Instant::now() >= deadline {
            signal_pool(r.pid, Signal::SIGKILL);
            // Ours to reap if nginx runs in the foreground; ECHILD at once otherwise.
            let _ = waitpid(r.pid, None);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Its poold removes the file as it stops; this is for one that was killed. Only the file
    // it bound: during a binary upgrade the path is the new master's poold's by now.
    if let Some(f) = &r.socket_file {
        f.remove_if_still_there();
    }
}

/// nginx is exiting: stop every poold.
pub fn on_exit_master() {
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    let mut draining = DRAINING.lock().unwrap_or_else(|e| e.into_inner());
    running.append(&mut draining);
    for r in running.iter() {
        signal_pool(r.pid, Signal::SIGTERM);
    }
    for r in running.drain(..) {
        stop(&r);
    }
    *LIFELINE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}
