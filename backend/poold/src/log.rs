//! Log lines in nginx's error_log format, written to stderr (the error log in managed mode).

use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static POOL: OnceLock<String> = OnceLock::new();

/// Names the pool in every later line.
pub fn set_pool_name(name: &str) {
    let _ = POOL.set(name.to_string());
}

/// `YYYY/MM/DD HH:MM:SS` in UTC.
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}/{month:02}/{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
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
