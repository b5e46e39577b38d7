//! Process inspection through /proc: parentage, command lines, descriptors, CPU time.

pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(String::from).collect())
}

pub fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Whether the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
}

/// The scheduling policy of each thread of `pid` (`SCHED_OTHER` 0, `SCHED_BATCH` 3, ...), by
/// thread name.
pub fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid = e.ok()?.file_name();
        let s = std::fs::read_to_string(format!("/proc/{pid}/task/{}/stat", tid.to_str()?)).ok()?;
        let name = s[s.find('(')? + 1..s.rfind(')')?].to_string();
        // Field 41, the policy; fields after the command name start at 3.
        let policy = s[s.rfind(')')? + 2..]
            .split_whitespace()
            .nth(41 - 3)?
            .parse()
            .ok()?;
        Some((name, policy))
    })
    .collect()
}

/// utime + stime in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    stat_fields(pid)
        .map(|f| f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0))
        .unwrap_or(0)
}

pub fn children(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| ppid(*p) == Some(pid) && alive(*p))
        .collect()
}

pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Live processes (other than us) whose command line mentions `s`.
/// The real, effective, saved and file-system ids of `pid`: `which` is "Uid:" or "Gid:".
pub fn ids(pid: u32, which: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(which))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The real uid of `pid` (panics if it is gone).
pub fn uid(pid: u32) -> u32 {
    ids(pid, "Uid:")[0]
}

/// The process's name (`comm`): a watchdog's spare names itself "poold spare" while it stands
/// by (its command line is the watchdog's, and stays so once it takes over).
pub fn name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// Whether `pid` is a pool manager: the poold binary (not a spare), or the app's python running
/// `-m ngx_pool serve`.
pub fn is_poold(pid: u32) -> bool {
    let cmd = cmdline(pid);
    (cmd.contains("poold") || cmd.contains("-m ngx_pool serve")) && !is_spare(pid)
}

/// Whether `pid` is a watchdog's spare standing by.
pub fn is_spare(pid: u32) -> bool {
    name(pid) == "poold spare"
}

pub fn with_arg_containing(s: &str) -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|p| *p != me && alive(*p) && cmdline(*p).contains(s))
        .collect()
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Where the process sleeps in the kernel (`futex_wait_queue`, `hrtimer_nanosleep`, ...).
pub fn wchan(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

/// Resident memory of `pid` in KiB: (private anonymous, shared memory), from /proc/PID/status.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssShmem:"))
}

/// A process a test started (a peer server, an attacker, a helper), in a process group of its
/// own: the group is SIGKILLed and the process reaped when this is dropped, whatever the test
/// did. The one way tests hold what they start besides nginx.
pub struct Owned(std::process::Child);

impl Owned {
    /// Spawns `cmd` in a new process group.
    pub fn spawn(cmd: &mut std::process::Command) -> std::io::Result<Owned> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).spawn().map(Owned)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The child, for its pipes.
    pub fn child(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions; the group is our child's own.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Processes a test did not start but must not leave behind (nginx's workers after their
/// master was SIGKILLed, what a pool spawned): SIGKILLed when this is dropped, each only if it
/// still is what `is_theirs` says.
pub struct KillOnDrop {
    pub pids: Vec<u32>,
    pub is_theirs: fn(u32) -> bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in &self.pids {
            if (self.is_theirs)(p) {
                kill(p, libc::SIGKILL);
            }
        }
    }
}
