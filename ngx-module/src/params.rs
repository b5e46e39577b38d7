//! Per-request parameters: `pool_param NAME VALUE;` and the default set sent without
//! configuration, compiled as nginx complex values and evaluated per request in the nginx
//! worker (as `uwsgi_param`/`fastcgi_param` are; see the development guide's "Complex values").
//!
//! Inheritance follows `uwsgi_param`: a level that has no `pool_param` inherits its parent's;
//! one that has any uses only its own. The default set (below) is always sent; a `pool_param`
//! of the same name replaces the default's value.

use nginx_sys::{
    ngx_conf_t, ngx_http_compile_complex_value_t, ngx_http_complex_value_t, ngx_str_t, NGX_OK,
};
use ngx::http::Request;

/// Sent with every request unless a `pool_param` of the same name replaces it: what a WSGI
/// server needs to fill the CGI environ.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("SERVER_NAME", "$server_name"),
    ("SERVER_PORT", "$server_port"),
    ("SERVER_PROTOCOL", "$server_protocol"),
    ("REQUEST_SCHEME", "$scheme"),
    ("REMOTE_ADDR", "$remote_addr"),
    ("REMOTE_PORT", "$remote_port"),
    ("DOCUMENT_URI", "$document_uri"),
    ("SCRIPT_NAME", ""),
];

/// One parameter: its name and its compiled value (in the configuration pool, which lives as
/// long as the configuration that uses it).
#[derive(Clone, Debug)]
pub struct Param {
    pub name: Vec<u8>,
    value: *mut ngx_http_complex_value_t,
}

/// Compiles `value` (which may hold variables) in the configuration being parsed.
///
/// # Safety
/// `cf` is the `ngx_conf_t` of a directive or merge being handled; `value` lives at least as
/// long as the configuration (nginx keeps pointers into it for constant parts).
pub unsafe fn compile(cf: *mut ngx_conf_t, name: &[u8], value: ngx_str_t) -> Result<Param, String> {
    // SAFETY: allocations from the configuration pool; the compile call reads `cf` and `value`
    // and writes the complex value we allocated, per the development guide.
    unsafe {
        let pool = (*cf).pool;
        let cv = nginx_sys::ngx_pcalloc(pool, std::mem::size_of::<ngx_http_complex_value_t>())
            as *mut ngx_http_complex_value_t;
        let v = nginx_sys::ngx_palloc(pool, std::mem::size_of::<ngx_str_t>()) as *mut ngx_str_t;
        if cv.is_null() || v.is_null() {
            return Err("out of memory".into());
        }
        v.write(value);
        let mut ccv: ngx_http_compile_complex_value_t = std::mem::zeroed();
        ccv.cf = cf;
        ccv.value = v;
        ccv.complex_value = cv;
        if nginx_sys::ngx_http_compile_complex_value(&mut ccv) != NGX_OK as nginx_sys::ngx_int_t {
            return Err(format!(
                "invalid value for pool_param \"{}\"",
                String::from_utf8_lossy(name)
            ));
        }
        Ok(Param {
            name: name.to_vec(),
            value: cv,
        })
    }
}

/// The defaults, compiled once per configuration (kept in the main configuration).
///
/// # Safety
/// As for [`compile`].
pub unsafe fn compile_defaults(cf: *mut ngx_conf_t) -> Result<Vec<Param>, String> {
    DEFAULTS
        .iter()
        .map(|(name, value)| {
            let v = ngx_str_t {
                len: value.len(),
                data: value.as_ptr() as *mut u8,
            };
            // SAFETY: the caller's contract; the value is a static string.
            unsafe { compile(cf, name.as_bytes(), v) }
        })
        .collect()
}

/// What a `pool_pass` location sends: the defaults, each replaced by a configured parameter of
/// the same name, then the configured ones that replace none.
pub fn effective(defaults: &[Param], configured: &[Param]) -> Vec<Param> {
    let mut out: Vec<Param> = defaults
        .iter()
        .map(|d| {
            configured
                .iter()
                .find(|c| c.name == d.name)
                .unwrap_or(d)
                .clone()
        })
        .collect();
    out.extend(
        configured
            .iter()
            .filter(|c| !defaults.iter().any(|d| d.name == c.name))
            .cloned(),
    );
    out
}

/// Evaluates `params` for request `req`: (name, value) pairs, the values in the request pool.
/// A value that fails to evaluate (out of memory) is sent empty.
pub fn evaluate<'a>(req: &'a Request, params: &'a [Param]) -> Vec<(&'a [u8], &'a [u8])> {
    params
        .iter()
        .map(|p| {
            // SAFETY: `p.value` was compiled in this configuration, which outlives its requests.
            let cv = unsafe { &*p.value };
            let v = req.get_complex_value(cv).map_or(&[][..], |s| s.as_bytes());
            (p.name.as_slice(), v)
        })
        .collect()
}
