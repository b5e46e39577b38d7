//! The `extern "C"` edge: every function nginx calls into the module runs its body through
//! [`guard`], so a panic (a bug of ours) is caught, logged at `alert` with the entry point and
//! the panic's place, and answered the way that entry point can answer (a 500, a failed
//! directive, nothing), never unwound into nginx, which would abort the worker and every
//! connection on it.
//!
//! Fault injection for the tests: `NGX_POOL_TEST_PANIC=ENTRY[,ENTRY...]` in nginx's environment
//! makes the named entry points panic (`content`, `body`, `eventfd`, `status`, `timer`,
//! `init_process`, `directive`). It is read once per process and costs one branch otherwise.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

thread_local! {
    /// Where the last panic on this thread happened (set by our panic hook).
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Chains a panic hook that records the panic's place for [`guard`]'s log line (and then runs
/// the previous hook, which prints to stderr as usual).
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(l) = info.location() {
                let at = format!("{}:{}", l.file(), l.line());
                PANIC_AT.with(|p| *p.borrow_mut() = Some(at));
            }
            previous(info);
        }));
    });
}

/// Whether the test-only fault `entry` is switched on (`NGX_POOL_TEST_PANIC`).
pub fn injected(entry: &str) -> bool {
    static WANTED: OnceLock<Vec<String>> = OnceLock::new();
    WANTED
        .get_or_init(|| {
            std::env::var("NGX_POOL_TEST_PANIC")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|w| w == entry)
}

/// Runs `body` for entry point `entry`; if it panics, logs the panic and returns `on_panic()`.
pub fn guard<T>(entry: &'static str, on_panic: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    install_hook();
    let result = catch_unwind(AssertUnwindSafe(|| {
        if injected(entry) {
            panic!("injected by NGX_POOL_TEST_PANIC={entry}");
        }
        body()
    }));
    match result {
        Ok(v) => v,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .map(str::to_string)
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let at = PANIC_AT
                .with(|p| p.borrow_mut().take())
                .map(|at| format!(" at {at}"))
                .unwrap_or_default();
            // Logging must not panic again here: the message is plain text.
            crate::log::log(
                nginx_sys::NGX_LOG_ALERT,
                &format!("ngx-pool: panic in the {entry} entry point{at}: {msg}; recovered"),
            );
            on_panic()
        }
    }
}
