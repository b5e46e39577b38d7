//! Log lines in nginx's error_log format, written to stderr (the error log in managed mode).

use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static POOL: OnceLock<String> = OnceLock::new();

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
    // One write call per line, so lines from several processes sharing the file do not interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[macro_export]
macro_rules! log {
    ($level:literal, $($arg:tt)+) => {
        $crate::log::line($level, format_args!($($arg)+))
    };
}
