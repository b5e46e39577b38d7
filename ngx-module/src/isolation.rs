//! The nginx worker's part of the security model: it cannot be inspected by a pool's code.
//!
//! Pool workers run the operator's code, by default as nginx's `user`, the same uid as the
//! nginx workers. Linux lets a process ptrace, or read the memory and descriptors (through
//! `/proc/PID/mem`, `/proc/PID/fd`) of, another process of its uid only while that one is
//! "dumpable"; nginx makes its workers dumpable after switching users, so that they can leave
//! a core file. A worker here turns that off, so a compromised handler can neither attach to it
//! nor open its regions or client sockets through `/proc` — unless the operator asked for core
//! dumps (`worker_rlimit_core` or `working_directory`), which need it: then it stays dumpable
//! and says so once in the error log.

use nginx_sys::{ngx_cycle_t, NGX_LOG_NOTICE, NGX_LOG_WARN};
use ngx::core::CoreModuleMainConf;

/// In each nginx worker, at start.
pub fn on_init_process(cycle: *mut ngx_cycle_t) {
    // SAFETY: the core module's configuration exists in every cycle and is only read here.
    let ccf = ngx::core::NgxCoreModule::main_conf(unsafe { &*cycle });
    let cores_wanted = ccf.is_some_and(|c| c.rlimit_core != -1 || c.working_directory.len > 0);
    let log = crate::log::cycle_log();
    if cores_wanted {
        ngx::ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "ngx-pool: worker_rlimit_core or working_directory is set, so this worker stays dumpable for core files: processes of its user (a pool's code, by default) can inspect it"
        );
        return;
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        ngx::ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "ngx-pool: could not make the worker non-dumpable: {e}"
        );
    }
}
