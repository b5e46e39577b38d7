//! Per-request parameters: `pool_param NAME VALUE;`, compiled as nginx complex values and
//! evaluated per request in the nginx worker (as `uwsgi_param`/`fastcgi_param` are; see the
//! development guide's "Complex values").
//!
//! Inheritance follows `uwsgi_param`: a level that has no `pool_param` inherits its parent's;
//! one that has any uses only its own. The default set (`SERVER_NAME`, `REMOTE_ADDR`, ...) is
//! not sent as parameters: the pool worker makes it from the request's fields (the message
//! carries the few it could not know), and a `pool_param` of the same name replaces one.

use nginx_sys::{
    ngx_conf_t, ngx_http_compile_complex_value_t, ngx_http_complex_value_t, ngx_str_t, NGX_OK,
};
use ngx::http::Request;

/// One `pool_param`: its name and its value compiled in the configuration pool, which lives as
/// long as the configuration that uses it.
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

/// Evaluates `params` for request `req`: (name, value) pairs, the values in the request pool.
/// A value that fails to evaluate (out of memory) is sent empty.
pub fn evaluate<'a>(req: &'a Request, params: &'a [Param]) -> Vec<(&'a [u8], &'a [u8])> {
    params
        .iter()
        .map(|p| {
            // SAFETY: compiled in this configuration, which outlives its requests.
            let cv = unsafe { &*p.value };
            let v = req.get_complex_value(cv).map_or(&[][..], |s| s.as_bytes());
            (p.name.as_slice(), v)
        })
        .collect()
}

/// Whether a client's header `name` is replaced by one of `params`: a `pool_param` named
/// `HTTP_` + the header's name in CGI form (upper case, `-` as `_`) stands for that header, and
/// the client's own is not passed, as nginx's `uwsgi_param` and `fastcgi_param` do. So
/// `pool_param HTTP_X_FORWARDED_PROTO $scheme;` cannot be joined with (or, for an app that
/// reads the last value, overridden by) what the client sent.
pub fn replaced_by(params: &[Param], name: &[u8]) -> bool {
    params.iter().any(|p| {
        p.name.len() == name.len() + 5
            && p.name.starts_with(b"HTTP_")
            && p.name[5..].iter().zip(name).all(|(a, b)| {
                let cgi = if *b == b'-' {
                    b'_'
                } else {
                    b.to_ascii_uppercase()
                };
                *a == cgi
            })
    })
}
