//! The watchdog and poold as child subreapers: whatever a pool's code forks and orphans (a
//! setsid'd daemon, a worker's child once the worker is gone) is re-parented to one of them
//! instead of to init, so that it can be ended with the pool.
//!
//! This is what holds where the pool has no cgroup of its own (see `cgroup.rs`), and a second
//! line where it has one: the watchdog and poold are subreapers in both cases, so a pool
//! behaves the same way whichever is in force. While poold runs, what is re-parented to it
//! lives on (as it would in the pool's cgroup) and is reaped when it exits; when the pool stops,
//! poold ends its children; when poold dies, what it left is re-parented to the watchdog, which
//! ends all its children before it starts the next poold.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): its descendants' orphans
/// become its children. Not inherited by a fork, so the watchdog and each poold call it.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        crate::log!(
            "warn",
            "cannot become a child subreaper: {e}; what the pool's code orphans may outlive it"
        );
    }
}

/// The live children of this process (from /proc: there is no system call that lists them,
/// and `/proc/PID/task/TID/children` needs a kernel option). Zombies are left out: they are
/// reaped, not killed.
pub fn children() -> Vec<Pid> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may hold anything: fields after the last ')'.
        let mut rest = stat[stat.rfind(')')? + 2..].split(' ');
        let state = rest.next()?;
        let ppid = rest.next()?;
        (ppid == me && state != "Z").then(|| Pid::from_raw(pid))
    })
    .collect()
}

/// Reaps every child that has exited, without waiting; returns the status of `of` if it was one
/// of them (the others are orphans of the pool, of no interest once dead).
pub fn reap_all(of: Option<Pid>) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(s) => {
                if of.is_some() && s.pid() == of {
                    found = Some(s);
                }
            }
        }
    }
}

/// Ends every child of this process but `except`: SIGTERM, SIGKILL to those still there after
/// `grace`, again for whatever killing them re-parented to us, until none is left (or
/// `give_up` has passed: a fork bomb the kernel's pid limit did not stop). Reaps them all;
/// returns how many were ended. `except` is reaped only if it has exited.
pub fn end_children(except: Option<Pid>, grace: Duration, give_up: Duration) -> usize {
    let start = Instant::now();
    let others = || -> Vec<Pid> {
        children()
            .into_iter()
            .filter(|p| Some(*p) != except)
            .collect()
    };
    let first = others();
    if first.is_empty() {
        reap_all(None);
        return 0;
    }
    let mut seen: std::collections::HashSet<Pid> = first.iter().copied().collect();
    for &p in &first {
        let _ = kill(p, Signal::SIGTERM);
    }
    // What SIGTERM ended is reaped here, so `children` no longer lists it.
    while start.elapsed() < grace && !others().is_empty() {
        reap_all(None);
        std::thread::sleep(Duration::from_millis(5));
    }
    loop {
        reap_all(None);
        let left = others();
        if left.is_empty() {
            break;
        }
        if start.elapsed() >= give_up {
            crate::log!(
                "alert",
                "{} processes of the pool are still there after {give_up:?} of SIGKILL: {left:?}",
                left.len()
            );
            break;
        }
        for &p in &left {
            seen.insert(p);
            let _ = kill(p, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    seen.len()
}
