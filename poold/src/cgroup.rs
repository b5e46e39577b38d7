//! A pool's cgroup v2: every process of the pool (poold, its workers, whatever they fork) lives
//! in it, so that all of them can be killed at once when poold dies or the pool stops, and so
//! that the pool's limits (`memory_max=`, `pids_max=`, `cpu_weight=`) hold for all of them.
//!
//! The watchdog owns it: it is root, never runs the pool's code, and outlives each poold. It
//! makes `ngx-pool-<name>-<watchdog pid>` under its own cgroup (the nginx master's: nginx's
//! unit under systemd), each poold it forks moves itself in before anything else, and when
//! poold dies the watchdog writes 1 to `cgroup.kill` (or, before Linux 5.14, kills every pid
//! in `cgroup.procs`) before it starts the next one; when the pool stops it does the same and
//! removes the directory. The watchdog itself stays outside (in nginx's cgroup): one leaf per
//! pool, so the kernel's "no internal processes" rule never applies to it, and a limit is the
//! leaf's own file, which needs the controller enabled only in the parent.
//!
//! Where no cgroup v2 is mounted or writable (nginx not root, a read-only /sys/fs/cgroup in a
//! container), or where `NGX_POOL_NO_CGROUP=1` is in the nginx master's environment, the pool
//! has none and `reaper.rs` alone keeps its promise (the limits are then not applied, with one
//! warning line each).

use crate::log;
use ngx_pool_conf::PoolSettings;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Set to `1` in the nginx master's environment (or poold's): pools get no cgroup, only the
/// subreapers (what tests use to check that fallback; also an operator's way out).
pub const NO_CGROUP_ENV: &str = "NGX_POOL_NO_CGROUP";

/// Every pool cgroup's name starts with this.
const PREFIX: &str = "ngx-pool-";

/// How long killing a cgroup waits for it to be empty.
const EMPTY_WAIT: Duration = Duration::from_secs(5);

pub struct PoolCgroup {
    dir: PathBuf,
}

impl PoolCgroup {
    /// The cgroup for pool `name`, made under this process's own cgroup; why not, where cgroup
    /// v2 is not there, not writable, or turned off (`NGX_POOL_NO_CGROUP=1`).
    pub fn create(name: &str) -> Result<PoolCgroup, String> {
        if std::env::var_os(NO_CGROUP_ENV).is_some_and(|v| v == "1") {
            return Err(format!("{NO_CGROUP_ENV}=1"));
        }
        let own = own_cgroup_dir()?;
        sweep(&own);
        let dir = own.join(format!("{PREFIX}{name}-{}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            // A watchdog with our pid before us (it is dead: pids are unique among the
            // living) left it: what is in it is the remains of a pool.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
        let cg = PoolCgroup { dir };
        cg.kill();
        Ok(cg)
    }

    /// The cgroup of pool `name` whose watchdog was `watchdog` (a spare takes the pool over from
    /// it; the spare itself stays outside, as every watchdog does); `None` if it has none.
    pub fn take_over(name: &str, watchdog: u32) -> Option<PoolCgroup> {
        let dir = own_cgroup_dir()
            .ok()?
            .join(format!("{PREFIX}{name}-{watchdog}"));
        dir.is_dir().then_some(PoolCgroup { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves the calling process in (in a poold just forked, before it forks anything).
    pub fn enter(&self) -> io::Result<()> {
        write(&self.dir.join("cgroup.procs"), "0")
    }

    /// Sets the pool's limits; for each one whose controller is not available to the cgroup
    /// (and cannot be enabled in the parent), one warning line, and the pool runs without it.
    pub fn apply_limits(&self, pool: &PoolSettings) {
        for (key, controller, file, value) in limits(pool) {
            let why = match self.enable(controller) {
                Ok(()) => match write(&self.dir.join(file), &value) {
                    Ok(()) => {
                        log!("info", "{key}={value}: {file} of {}", self.dir.display());
                        continue;
                    }
                    Err(e) => format!("cannot write {file}: {e}"),
                },
                Err(why) => why,
            };
            log!(
                "warn",
                "{key}= is not applied: {why}; the pool runs without it"
            );
        }
    }

    /// Makes `controller` available in the cgroup: it is, or the parent's
    /// `cgroup.subtree_control` gets it (only for a limit the operator set; the kernel refuses
    /// where the parent holds processes of its own and is not the root cgroup).
    fn enable(&self, controller: &str) -> Result<(), String> {
        let has = |dir: &Path| {
            std::fs::read_to_string(dir.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == controller))
        };
        if has(&self.dir) {
            return Ok(());
        }
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        if !has(parent) {
            return Err(format!(
                "the {controller} controller is not in cgroup v2 at {} (cgroup.controllers)",
                parent.display()
            ));
        }
        write(
            &parent.join("cgroup.subtree_control"),
            &format!("+{controller}"),
        )
        .map_err(|e| {
            format!(
                "cannot enable the {controller} controller in {}: {e}",
                parent.display()
            )
        })?;
        if has(&self.dir) {
            Ok(())
        } else {
            Err(format!("the {controller} controller did not appear"))
        }
    }

    /// Kills every process in the cgroup (but this one) and waits until they are gone.
    pub fn kill(&self) {
        let me = std::process::id();
        let deadline = Instant::now() + EMPTY_WAIT;
        // cgroup.kill (Linux 5.14) kills at once and includes what forks meanwhile.
        let killed_at_once = write(&self.dir.join("cgroup.kill"), "1").is_ok();
        loop {
            let left: Vec<u32> = self.procs().into_iter().filter(|p| *p != me).collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                log!(
                    "alert",
                    "processes {left:?} are still in {} after {EMPTY_WAIT:?} of SIGKILL",
                    self.dir.display()
                );
                return;
            }
            if !killed_at_once {
                for p in &left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*p as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            // Some of them may be our children (re-parented orphans): reap them, or they stay
            // listed (as zombies) until we do.
            crate::reaper::reap_all(None);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The pids in the cgroup.
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills what is left and removes the cgroup (the pool has stopped).
    pub fn remove(self) {
        self.kill();
        // The last process leaves the cgroup a moment after it is reaped.
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Err(e) = std::fs::remove_dir(&self.dir) {
            if Instant::now() >= deadline {
                log!("warn", "cannot remove {}: {e}", self.dir.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Removes the empty pool cgroups in `parent` whose watchdog is gone (SIGKILLed: nothing
/// removed them), so that they do not pile up. One that holds processes is left alone: a
/// spare that took its pool over may be running it (see `take_over`).
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let owner_alive = std::fs::read(format!("/proc/{owner}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("poold"));
        let empty = std::fs::read_to_string(e.path().join("cgroup.procs"))
            .is_ok_and(|p| p.trim().is_empty());
        if !owner_alive && empty {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// The limits `pool` sets: (parameter, controller, file, value as the file takes it).
fn limits(pool: &PoolSettings) -> Vec<(&'static str, &'static str, &'static str, String)> {
    let mut v = Vec::new();
    if let Some(n) = pool.memory_max {
        v.push(("memory_max", "memory", "memory.max", n.to_string()));
    }
    if let Some(n) = pool.pids_max {
        v.push(("pids_max", "pids", "pids.max", n.to_string()));
    }
    if let Some(n) = pool.cpu_weight {
        v.push(("cpu_weight", "cpu", "cpu.weight", n.to_string()));
    }
    v
}

/// Logs one warning per limit `pool` sets: there is no cgroup to apply them in (`why`).
pub fn warn_limits_unapplied(pool: &PoolSettings, why: &str) {
    for (key, ..) in limits(pool) {
        log!(
            "warn",
            "{key}= is not applied: the pool has no cgroup ({why}); the pool runs without it"
        );
    }
}

/// Writes `what` to a cgroup file in one write(2), as the kernel wants it.
fn write(path: &Path, what: &str) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(what.as_bytes())
}

/// This process's cgroup v2 directory: its path in `/proc/self/cgroup` (`0::/PATH`) under the
/// cgroup2 mount of `/proc/self/mountinfo` (whose root, in a container, may be a subtree).
fn own_cgroup_dir() -> Result<PathBuf, String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 in /proc/self/cgroup")?
        .trim()
        .to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = left.split(' ').collect();
        let (Some(root), Some(mount)) = (f.get(3), f.get(4)) else {
            continue;
        };
        let rel = if *root == "/" {
            path.as_str()
        } else {
            match path.strip_prefix(root) {
                Some(r) if r.is_empty() || r.starts_with('/') => r,
                _ => continue,
            }
        };
        let dir = Path::new(mount).join(rel.trim_start_matches('/'));
        if dir.join("cgroup.procs").exists() {
            return Ok(dir);
        }
    }
    Err("no cgroup2 mount holds this process's cgroup".into())
}
