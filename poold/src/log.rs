//! Log lines in nginx's error_log format, written to stderr (the error log in managed mode; in
//! a pool worker, the pipe poold reads), and the error log followed through a rotation
//! (`--error-log`).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static POOL: OnceLock<String> = OnceLock::new();

/// The error log's path, when stdout and stderr are that file (`--error-log`).
static FOLLOWED: OnceLock<PathBuf> = OnceLock::new();
/// When (CLOCK_MONOTONIC ms) the path is next looked at: at most once a second.
static NEXT_LOOK_MS: AtomicU64 = AtomicU64::new(0);
const LOOK_EVERY_MS: u64 = 1000;

/// Set in a pool worker, whose stdout and stderr are the pipe poold reads: it must never
/// reopen them on the file, which would bypass poold's `log_rate=`.
static PIPED: AtomicBool = AtomicBool::new(false);

/// Follows the error log at `path` through rotation: once the file at that path is another one
/// than stdout and stderr (logrotate renamed it and `nginx -s reopen` made a new one), this
/// process's stdout and stderr are reopened on it.
pub fn follow(path: PathBuf) {
    let _ = FOLLOWED.set(path);
}

/// In a pool worker just forked, once its stdout and stderr are poold's pipe: stop following
/// the error log (poold, which writes the worker's lines, follows it).
pub fn stdio_is_piped() {
    PIPED.store(true, Ordering::Relaxed);
}

/// Reopens stdout and stderr on the followed error log if it was rotated; at most one look a
/// second. A file this process may not open yet (nginx's master makes it, then hands it to its
/// workers' user) is looked at again a second later, meanwhile lines go to the old file.
pub fn reopen_if_rotated() {
    let Some(path) = FOLLOWED.get() else {
        return;
    };
    if PIPED.load(Ordering::Relaxed) {
        return;
    }
    let now = ngx_pool_channel::sys::monotonic_ms();
    // Relaxed: a rate limit; two threads looking at once both do a harmless reopen at worst.
    if now < NEXT_LOOK_MS.load(Ordering::Relaxed) {
        return;
    }
    NEXT_LOOK_MS.store(now + LOOK_EVERY_MS, Ordering::Relaxed);
    let (Ok(on_disk), Ok(ours)) = (
        std::fs::metadata(path),
        std::fs::metadata("/proc/self/fd/2"),
    ) else {
        return;
    };
    if (on_disk.dev(), on_disk.ino()) == (ours.dev(), ours.ino()) {
        return;
    }
    let Some(file) = open_log(path) else {
        return;
    };
    for fd in [1, 2] {
        let _ = nix::unistd::dup2(file.as_raw_fd(), fd);
    }
}

/// Opens the error log at `path` to append to it, if it is a plain file of its own: not a
/// symbolic link, a FIFO or a device, and no other name of a file (a hard link). The watchdog
/// does this as root and passes the file to poold: where the log's directory is writable by a
/// pool's user, a link put in the log's place must not make root open another file for it, nor
/// a FIFO stall the watchdog.
fn open_log(path: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    (meta.file_type().is_file() && meta.nlink() == 1).then_some(file)
}

/// Names the pool in every later line.
pub fn set_pool_name(name: &str) {
    let _ = POOL.set(name.to_string());
}

/// `YYYY/MM/DD HH:MM:SS` in local time, as nginx writes its error_log (so poold's lines sort
/// with nginx's in the same file).
fn timestamp() -> String {
    let now: libc::time_t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as libc::time_t);
    // SAFETY: an all-zero `tm` is a valid value to be overwritten; localtime_r only writes into
    // the `tm` we pass, and is thread-safe (unlike localtime).
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return String::from("1970/01/01 00:00:00");
        }
        tm
    };
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Writes one line at `level` (`notice`, `warn`, `error`, `crit`, `alert`).
pub fn line(level: &str, msg: std::fmt::Arguments<'_>) {
    let pool = POOL.get().map_or("?", String::as_str);
    let text = format!(
        "{} [{level}] {}#0: poold \"{pool}\": {msg}\n",
        timestamp(),
        std::process::id()
    );
    reopen_if_rotated();
    // One write call per line, so lines from several processes sharing the file do not interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[macro_export]
macro_rules! log {
    ($level:literal, $($arg:tt)+) => {
        $crate::log::line($level, format_args!($($arg)+))
    };
}
