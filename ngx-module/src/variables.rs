//! The module's nginx variables, for `log_format` as `$upstream_response_time` is used with
//! `proxy_pass`: `$pool_name`, `$pool_worker`, `$pool_queue_time`, `$pool_exec_time`,
//! `$pool_status`.
//!
//! Added in the module's preconfiguration (the nginx development guide, "Variables"); each is
//! evaluated from what the request's context recorded of its way through the pool
//! ([`crate::request::Outcome`]), read in the log phase. Times are seconds with millisecond resolution, as
//! nginx's `$request_time`; a variable with nothing to say is not found (logged as `-`).

use crate::directives::Module;
use ngx::ffi::{ngx_conf_t, ngx_http_request_t, ngx_int_t, ngx_str_t, ngx_variable_value_t};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, Request};

#[derive(Clone, Copy)]
enum Var {
    Name,
    Worker,
    QueueTime,
    ExecTime,
    Status,
}

const VARIABLES: [(&str, Var); 5] = [
    ("pool_name", Var::Name),
    ("pool_worker", Var::Worker),
    ("pool_queue_time", Var::QueueTime),
    ("pool_exec_time", Var::ExecTime),
    ("pool_status", Var::Status),
];

/// The module's preconfiguration: adds the variables.
///
/// # Safety
/// Called by nginx with the configuration being parsed.
pub unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    for (i, (name, _)) in VARIABLES.iter().enumerate() {
        let mut s = ngx_str_t {
            len: name.len(),
            data: name.as_ptr() as *mut u8,
        };
        // SAFETY: `cf` is the live configuration; nginx copies the name into its own memory
        // (ngx_http_add_variable allocates and copies it) and returns a variable it owns.
        let v = unsafe {
            ngx::ffi::ngx_http_add_variable(cf, &mut s, ngx::ffi::NGX_HTTP_VAR_NOCACHEABLE as _)
        };
        if v.is_null() {
            return ngx::ffi::NGX_ERROR as ngx_int_t;
        }
        // SAFETY: a variable nginx just made for us; we fill in its handler and data.
        unsafe {
            (*v).get_handler = Some(get);
            (*v).data = i;
        }
    }
    ngx::ffi::NGX_OK as ngx_int_t
}

/// Formats `ms` as nginx's times are: `0.012`.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The text of variable `which` for request `r`, if it has one.
fn value(r: *mut ngx_http_request_t, which: Var) -> Option<String> {
    // SAFETY: `r` is the live request nginx evaluates the variable for.
    let req = unsafe { Request::from_ngx_http_request(r) };
    let pool = Module::location_conf(req).and_then(|c| c.pool)?;
    let outcome = crate::request::outcome_of(r);
    match which {
        Var::Name => Module::main_conf(req)
            .and_then(|m| m.pools.get(pool))
            .map(|p| p.conf.settings.name.clone()),
        Var::Worker => outcome?.worker_pid.map(|p| p.to_string()),
        Var::QueueTime => {
            let o = outcome?;
            let to = o.started_us.or(o.finished_us)?;
            Some(seconds(to.saturating_sub(o.queued_us?) / 1000))
        }
        Var::ExecTime => {
            let o = outcome?;
            Some(seconds(o.finished_us?.saturating_sub(o.started_us?) / 1000))
        }
        Var::Status => match outcome.and_then(|o| o.status) {
            Some(s) => Some(s.to_string()),
            // SAFETY: reading the status nginx finalized the request with.
            None => match unsafe { (*r).headers_out.status } {
                // The client closed the connection (nginx's 499) before the answer.
                499 => Some("cancelled".into()),
                // Refused before a context existed: no poold attached.
                503 => Some("unavailable".into()),
                _ => None,
            },
        },
    }
}

unsafe extern "C" fn get(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    data: usize,
) -> ngx_int_t {
    let which = VARIABLES.get(data).map(|(_, w)| *w);
    let text = crate::edge::guard("variable", || None, || which.and_then(|w| value(r, w)));
    // SAFETY: `v` is the value nginx asks us to fill in; the text is copied into the request's
    // pool, which outlives every use of the value.
    unsafe {
        match text {
            Some(t) => {
                let p = ngx::ffi::ngx_pnalloc((*r).pool, t.len()) as *mut u8;
                if p.is_null() {
                    return ngx::ffi::NGX_ERROR as ngx_int_t;
                }
                std::ptr::copy_nonoverlapping(t.as_ptr(), p, t.len());
                (*v).set_len(t.len() as u32);
                (*v).data = p;
                (*v).set_valid(1);
                (*v).set_no_cacheable(0);
                (*v).set_not_found(0);
            }
            None => (*v).set_not_found(1),
        }
    }
    ngx::ffi::NGX_OK as ngx_int_t
}
