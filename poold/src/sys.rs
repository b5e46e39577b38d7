//! Process plumbing for poold: forking workers, descriptor hygiene, privileges, signals.

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Pid, Uid};
use std::collections::HashSet;
use std::io;
use std::os::fd::{OwnedFd, RawFd};

/// Forks. The child runs `child` and never returns.
// `child` returns an uninhabited type; matching on it is how we say so, which rustc flags.
#[allow(unreachable_code)]
pub fn fork_child(child: impl FnOnce() -> std::convert::Infallible) -> io::Result<Pid> {
    // SAFETY: poold is single-threaded (it never spawns threads), so the child inherits no lock
    // held by another thread and may run arbitrary Rust code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child: pid } => Ok(pid),
        nix::unistd::ForkResult::Child => match child() {},
    }
}

/// In a freshly forked child, after any change of credentials (which clears it): dies with its
/// parent, and takes back the default signal state.
pub fn child_defaults(parent: Pid) {
    let _ = nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL));
    // The parent may have died before prctl took effect.
    if nix::unistd::getppid() != parent {
        std::process::exit(1);
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// A worker with lanes, before it starts any thread (they inherit it): the `SCHED_BATCH`
/// policy.
///
/// Same share of the CPU as before (the nice value is unchanged); what changes is wake-up
/// preemption: a worker's thread that is woken (a request queued, an answer to write) no longer
/// preempts the thread running on its core, nginx's event loop or the worker's own event loop,
/// but takes a free core or waits for the scheduler's next tick. nginx never waits behind pool
/// code, and the work of a busy pool gets done in batches (fewer context switches per request).
/// A thread woken on a machine with an idle core still runs there at once.
pub fn batch_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is this thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the free pages of this process's heap back to the kernel: a pool worker does it when it
/// has had no work for a while ([`ngx_pool_channel::slot::QUIET`]), so that what a burst of
/// large requests made it allocate does not stay resident in an idle worker.
pub fn trim_heap() {
    // SAFETY: malloc_trim has no preconditions; glibc takes its own arena locks.
    unsafe { libc::malloc_trim(0) };
}

/// Closes every descriptor of this process except `keep` (and stdin, stdout, stderr).
pub fn close_all_except(keep: &[RawFd]) {
    let keep: HashSet<RawFd> = keep.iter().copied().chain([0, 1, 2]).collect();
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in open {
        if !keep.contains(&fd) {
            // The read_dir handle itself is closed already (dropped); EBADF is harmless.
            let _ = nix::unistd::close(fd);
        }
    }
}

/// The uid and gid for `--user`/`--group`: names, or numbers (as the nginx module passes them).
pub fn lookup_user(user: &str, group: Option<&str>) -> io::Result<(Uid, Gid)> {
    let not_found = |what: &str| io::Error::new(io::ErrorKind::NotFound, what.to_string());
    let (uid, user_gid) = match user.parse::<u32>() {
        Ok(n) => (
            Uid::from_raw(n),
            nix::unistd::User::from_uid(Uid::from_raw(n))?.map(|u| u.gid),
        ),
        Err(_) => {
            let u = nix::unistd::User::from_name(user)?
                .ok_or_else(|| not_found(&format!("no user \"{user}\"")))?;
            (u.uid, Some(u.gid))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                nix::unistd::Group::from_name(g)?
                    .ok_or_else(|| not_found(&format!("no group \"{g}\"")))?
                    .gid
            }
        },
        None => {
            user_gid.ok_or_else(|| not_found(&format!("user {user} has no group; give --group")))?
        }
    };
    Ok((uid, gid))
}

/// Drops root for good, before any of the pool's code runs: supplementary groups, then real,
/// effective and saved gid, then uid (so nothing it loads can take root back with `setuid(0)`
/// or `setresuid(0, 0, 0)`), and checks that root cannot be had again. Changing ids also makes
/// the process not dumpable and clears its parent-death signal (set again by the caller).
pub fn drop_root(uid: Uid, gid: Gid) -> io::Result<()> {
    nix::unistd::setgroups(&[gid])?;
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)?;
    if !uid.is_root()
        && nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok()
    {
        return Err(io::Error::other(
            "root could be taken back after dropping it",
        ));
    }
    Ok(())
}

/// A pool worker, before any of the pool's code runs in it: no setuid binary or file
/// capability can raise what it (or anything it starts) may do (`no_new_privs`), and no
/// process of its user, such as another pool's worker, may ptrace it or read its memory or
/// descriptors (not dumpable; changing uids already cleared that, this holds when poold runs
/// as the workers' user too). Failures are logged: the worker still serves.
pub fn confine_worker() {
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        crate::log!("warn", "worker {}: no_new_privs: {e}", std::process::id());
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        crate::log!("warn", "worker {}: not dumpable: {e}", std::process::id());
    }
    if let Err(e) = scope_signals() {
        // Once per worker start; an old kernel is not an error, but the operator should know
        // that a pool's code of nginx's user can then signal nginx's workers (user= prevents it).
        crate::log!(
            "info",
            "worker {}: signals not scoped: {e}",
            std::process::id()
        );
    }
}

/// Landlock's signal scope (Linux 6.12, Landlock ABI 6): the worker, and everything it
/// starts, may send signals only within its own domain (itself and its descendants). A
/// pool's code running as nginx's `user` could otherwise stop or kill nginx's workers, or
/// another pool's, with `kill()`, which being not dumpable does not prevent. Restricts nothing
/// else (no file or network rule); poold and the watchdog, outside the domain, still signal it.
fn scope_signals() -> Result<(), String> {
    /// `struct landlock_ruleset_attr` (include/uapi/linux/landlock.h).
    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
        scoped: u64,
    }
    const CREATE_RULESET_VERSION: u32 = 1;
    const SCOPE_SIGNAL: u64 = 1 << 1;
    // SAFETY: the version query reads no attribute (null, size 0).
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if abi < 6 {
        return Err(format!(
            "Landlock ABI {abi} here, 6 (Linux 6.12) scopes signals"
        ));
    }
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: 0,
        scoped: SCOPE_SIGNAL,
    };
    // SAFETY: `attr` is a valid ruleset attribute of the size passed, alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(format!(
            "landlock_create_ruleset: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel just returned this descriptor to us; we are its only owner.
    let ruleset = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) };
    // SAFETY: a ruleset descriptor and no flags; no_new_privs is set (which this requires).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            std::os::fd::AsRawFd::as_raw_fd(&ruleset),
            0u32,
        )
    };
    if rc != 0 {
        return Err(format!(
            "landlock_restrict_self: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The signals poold handles through its signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Creates a listening unix seqpacket socket at `path` (replacing a stale one), non-blocking,
/// with file mode `mode` and, if given, owned by `owner`. The mode comes from the umask at
/// `bind` and the owner is set without following a symbolic link: in a directory the pool's
/// user may write, a link put in the socket's place between the two steps must not turn root's
/// chmod or chown onto another file.
pub fn listen_seqpacket(
    path: &std::path::Path,
    mode: u32,
    owner: Option<(Uid, Gid)>,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    use nix::sys::stat::{umask, Mode};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Single-threaded (the watchdog, or poold before its first fork): the umask is ours alone.
    let old = umask(Mode::from_bits_truncate(!mode & 0o777));
    let bound = UnixAddr::new(path).and_then(|a| bind(sock.as_raw_fd(), &a));
    umask(old);
    bound?;
    if let Some((uid, gid)) = owner {
        nix::unistd::fchownat(
            None,
            path,
            Some(uid),
            Some(gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    listen(&sock, Backlog::new(512)?)?;
    Ok(sock)
}

/// Accepts one connection (close-on-exec, blocking), or `None` if none is pending.
pub fn accept(listener: &std::os::fd::OwnedFd) -> io::Result<Option<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{accept4, SockFlag};
    use std::os::fd::{AsRawFd, FromRawFd};
    match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
        // SAFETY: accept4 just returned this new descriptor; nothing else owns it.
        Ok(fd) => Ok(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::ECONNABORTED) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
