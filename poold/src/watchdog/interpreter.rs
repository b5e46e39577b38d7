//! A `wsgi:` pool in the app's own interpreter: the watchdog's child, once it is in the pool's
//! cgroup and has dropped root, becomes `PYTHON -m ngx_pool serve` with poold's arguments and
//! the descriptors a forked poold would have kept (the socket, the control link, the start-up
//! report), so that the pool manager and its workers are the executable Gunicorn would run, with
//! the interpreter's Python whatever its version; no binary of ours links libpython. An external
//! poold does the same once it has bound its socket. An interpreter without the `ngx-pool`
//! package, or one that cannot run as the pool's user, does not start: the error names it and
//! how to install the package.

use crate::config::Config;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Debian's interpreter: a `wsgi:` pool's when it names neither `python=` nor `venv=`.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The interpreter a `wsgi:` pool runs in: `python=`, or `venv=`'s `bin/python`, or else
/// Debian's `python3`.
fn of(cfg: &Config) -> PathBuf {
    match (&cfg.pool.python, &cfg.pool.venv) {
        (Some(python), _) => PathBuf::from(python),
        (None, Some(venv)) => PathBuf::from(venv).join("bin/python"),
        (None, None) => PathBuf::from(SYSTEM_PYTHON),
    }
}

/// The probe's exit status when the interpreter runs but has no `ngx_pool._native`.
const NO_PACKAGE: i32 = 3;

/// Whether the pool runs a Python app (`wsgi:`, `asgi:`), in its own interpreter.
pub(crate) fn is_python(cfg: &Config) -> bool {
    matches!(
        ngx_pool_conf::HandlerSpec::parse(&cfg.pool.handler),
        Ok(ngx_pool_conf::HandlerSpec::Python { .. })
    )
}

/// For a `wsgi:` or `asgi:` pool, its interpreter, once it is known to import `ngx_pool._native` as the
/// pool's user with its `env=` (nothing of the venv runs as root); `None` for other handlers
/// (this program runs them). An error, naming the interpreter, when it cannot run as the pool's
/// user or has no `ngx-pool` package (then with the command that installs it).
pub(crate) fn for_pool(cfg: &Config) -> io::Result<Option<PathBuf>> {
    if !is_python(cfg) {
        return Ok(None);
    }
    let python = of(cfg);
    let mut probe = Command::new(&python);
    probe
        .args([
            "-c",
            &format!("import sys\ntry:\n import ngx_pool._native\nexcept ImportError:\n sys.exit({NO_PACKAGE})"),
        ])
        .envs(env_of(cfg))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut user = String::from("this user");
    if nix::unistd::geteuid().is_root() {
        if let Some(name) = &cfg.user {
            let (uid, gid) = crate::sys::lookup_user(name, cfg.group.as_deref())?;
            // (std clears the supplementary groups when root sets a uid.)
            probe.uid(uid.as_raw()).gid(gid.as_raw());
            user = format!("user {name}");
        }
    }
    let cannot = |why: String| {
        io::Error::other(format!(
            "the pool's interpreter {} cannot run as {user}: {why}",
            python.display()
        ))
    };
    let status = probe.output().map_err(|e| cannot(e.to_string()))?;
    match status.status.code() {
        Some(0) => Ok(Some(python)),
        Some(NO_PACKAGE) => Err(io::Error::other(format!(
            "the pool's interpreter {py} has no ngx-pool package: install it into that Python (`{py} -m pip install ngx-pool`, or from ngx-pool's source tree `{py} -m pip install python/ngx-pool`; for Debian's python3, the python3-ngx-pool package)",
            py = python.display()
        ))),
        _ => {
            let said_why = String::from_utf8_lossy(&status.stderr);
            let why = said_why.lines().last().unwrap_or("").trim().to_string();
            Err(cannot(format!("{} ({why})", status.status)))
        }
    }
}

/// The pool's `env=`, as (name, value) pairs.
fn env_of(cfg: &Config) -> impl Iterator<Item = (&str, &str)> {
    cfg.pool.env.iter().filter_map(|pair| pair.split_once('='))
}

/// In the watchdog's child, in the pool's cgroup, root dropped: becomes `python -m ngx_pool
/// serve` with this process's own arguments and the descriptors given. Returns only if the exec
/// failed.
pub(crate) fn exec(
    cfg: &Config,
    python: &PathBuf,
    listener: &OwnedFd,
    control: Option<&OwnedFd>,
    ready: Option<&OwnedFd>,
) -> io::Error {
    let mut args = super::passed_on_args();
    let mut pass = |flag: &str, fd: &OwnedFd| -> io::Result<()> {
        // Kept across the exec: the one place these lose close-on-exec.
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
        args.push(flag.into());
        args.push(fd.as_raw_fd().to_string().into());
        Ok(())
    };
    let passed = pass("--listen-fd", listener)
        .and_then(|()| control.map_or(Ok(()), |c| pass("--control-fd", c)))
        .and_then(|()| ready.map_or(Ok(()), |r| pass("--ready-fd", r)));
    if let Err(e) = passed {
        return e;
    }
    let mut cmd = Command::new(python);
    cmd.args(["-m", "ngx_pool", "serve"]).args(args);
    // What a forked poold would have in its memory: the failed loads so far (a long
    // traceback is logged whole once), the pool's env= (the interpreter reads its environment
    // at start), and chdir= as the working directory from the start.
    cmd.env(
        crate::run::FAILED_LOADS_ENV,
        crate::host::failed_loads().to_string(),
    );
    cmd.envs(env_of(cfg));
    if let Some(dir) = &cfg.pool.chdir {
        cmd.current_dir(dir);
    }
    cmd.exec()
}
