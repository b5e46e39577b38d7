//! The response and request buffering settings of `pool_pass` locations, with the meaning,
//! defaults and checks of their `proxy_*` counterparts
//! (<https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_buffering>).
//!
//! | directive | proxy counterpart | default |
//! |---|---|---|
//! | `pool_buffering on\|off` | `proxy_buffering` | on |
//! | `pool_request_buffering on\|off` | `proxy_request_buffering` | on |
//! | `pool_buffers N SIZE` | `proxy_buffers` | 8 16k |
//! | `pool_buffer_size SIZE` | `proxy_buffer_size` | 16k |
//! | `pool_busy_buffers_size SIZE` | `proxy_busy_buffers_size` | 2 × one of `pool_buffers` |
//! | `pool_temp_path PATH [L1 [L2 [L3]]]` | `proxy_temp_path` | `pool_temp` (prefix) |
//! | `pool_max_temp_file_size SIZE` | `proxy_max_temp_file_size` | 1024m |
//! | `pool_temp_file_write_size SIZE` | `proxy_temp_file_write_size` | 2 × one of `pool_buffers` |
//! | `pool_max_header_size SIZE` | (the header limit of `proxy_buffer_size`) | 64k |
//!
//! `pool_buffer_size` is the first buffer of a response: one whose whole body fits is copied
//! into it at once and its slot released, whatever the mode.

use super::{args, conf_error, LocConf, NGX_CONF_ERROR};
use nginx_sys::{ngx_command_t, ngx_conf_t, ngx_path_init_t, ngx_path_t, ngx_str_t};
use std::ffi::{c_char, c_void};
use std::ptr;

/// A location's `pool_temp_path`, or null until set or merged (nginx's "unset" for a path
/// slot, which `ngx_conf_set_path_slot` and `ngx_conf_merge_path_value` expect).
#[derive(Debug)]
#[repr(transparent)]
pub struct TempPath(pub *mut ngx_path_t);

impl Default for TempPath {
    fn default() -> Self {
        TempPath(ptr::null_mut())
    }
}

/// The settings as written at one level (`None`: inherited), then as merged.
#[derive(Debug, Default)]
pub struct Buffering {
    pub response: Option<bool>,
    pub request: Option<bool>,
    /// `pool_buffers`: how many, and each one's size.
    pub buffers: Option<(usize, usize)>,
    pub buffer_size: Option<usize>,
    pub busy_size: Option<usize>,
    pub max_temp_file_size: Option<u64>,
    pub temp_file_write_size: Option<usize>,
    pub max_header_size: Option<usize>,
    pub temp_path: TempPath,
}

/// The merged values a request uses.
#[derive(Debug, Clone, Copy)]
pub struct Effective {
    pub response: bool,
    pub request: bool,
    pub buffers: (usize, usize),
    pub buffer_size: usize,
    pub busy_size: usize,
    pub max_temp_file_size: u64,
    pub temp_file_write_size: usize,
    pub max_header_size: usize,
    pub temp_path: *mut ngx_path_t,
}

const DEFAULT_BUFFER: usize = 16 << 10;
const DEFAULT_BUFFERS: (usize, usize) = (8, 16 << 10);
const DEFAULT_MAX_TEMP_FILE: u64 = 1 << 30;
const DEFAULT_MAX_HEADER: usize = 64 << 10;
/// The most the memory buffers of one response may hold.
const MAX_BUFFERS: usize = 1 << 30;

impl Buffering {
    /// Takes what this level left unset from `prev`.
    pub fn inherit(&mut self, prev: &Buffering) {
        self.response = self.response.or(prev.response);
        self.request = self.request.or(prev.request);
        self.buffers = self.buffers.or(prev.buffers);
        self.buffer_size = self.buffer_size.or(prev.buffer_size);
        self.busy_size = self.busy_size.or(prev.busy_size);
        self.max_temp_file_size = self.max_temp_file_size.or(prev.max_temp_file_size);
        self.temp_file_write_size = self.temp_file_write_size.or(prev.temp_file_write_size);
        self.max_header_size = self.max_header_size.or(prev.max_header_size);
    }

    /// The values with defaults filled in, checked as proxy_* checks them.
    pub fn effective(&self) -> Result<Effective, String> {
        let buffers = self.buffers.unwrap_or(DEFAULT_BUFFERS);
        let buffer_size = self.buffer_size.unwrap_or(DEFAULT_BUFFER);
        if buffers
            .0
            .checked_mul(buffers.1)
            .is_none_or(|all| all > MAX_BUFFERS)
        {
            return Err("\"pool_buffers\" may hold at most 1g in all".into());
        }
        // The pipe's buffers are `pool_buffers` alone (`pool_buffer_size` is the whole-copy
        // threshold, not a pipe buffer as proxy's first buffer is), so the derived sizes and
        // their checks follow them.
        let one = buffers.1;
        let busy_size = self.busy_size.unwrap_or(2 * one);
        if busy_size < one {
            return Err("\"pool_busy_buffers_size\" must be equal to or greater than one of the \"pool_buffers\"".into());
        }
        if busy_size > (buffers.0 - 1) * one {
            return Err("\"pool_busy_buffers_size\" must be less than the size of all \"pool_buffers\" minus one buffer".into());
        }
        let temp_file_write_size = self.temp_file_write_size.unwrap_or(2 * one);
        if temp_file_write_size < one {
            return Err("\"pool_temp_file_write_size\" must be equal to or greater than one of the \"pool_buffers\"".into());
        }
        let max_temp_file_size = self.max_temp_file_size.unwrap_or(DEFAULT_MAX_TEMP_FILE);
        if max_temp_file_size != 0 && max_temp_file_size < temp_file_write_size as u64 {
            return Err("\"pool_max_temp_file_size\" must be equal to zero to disable temporary files usage or must be equal to or greater than \"pool_temp_file_write_size\"".into());
        }
        Ok(Effective {
            response: self.response.unwrap_or(true),
            request: self.request.unwrap_or(true),
            buffers,
            buffer_size,
            busy_size,
            max_temp_file_size,
            temp_file_write_size,
            max_header_size: self.max_header_size.unwrap_or(DEFAULT_MAX_HEADER),
            temp_path: self.temp_path.0,
        })
    }
}

/// Gives `conf` its temp path: its own, `prev`'s, or the default `pool_temp` under the prefix
/// (levels 1 2), registered with nginx so that the master creates it owned by the workers'
/// user, as `proxy_temp` is.
///
/// # Safety
/// `cf` is the configuration being merged.
pub unsafe fn merge_temp_path(
    cf: *mut ngx_conf_t,
    prev: &Buffering,
    conf: &mut Buffering,
) -> Result<(), ()> {
    static mut DEFAULT: ngx_path_init_t = ngx_path_init_t {
        name: ngx_str_t {
            len: 9,
            data: c"pool_temp".as_ptr() as *mut u8,
        },
        level: [1, 2, 0],
    };
    // SAFETY: nginx merges configurations in one thread; it copies the init's name and levels
    // into a new path and never writes through the pointer.
    let rc = unsafe {
        nginx_sys::ngx_conf_merge_path_value(
            cf,
            &mut conf.temp_path.0,
            prev.temp_path.0,
            ptr::addr_of_mut!(DEFAULT),
        )
    };
    if rc.is_null() {
        Ok(())
    } else {
        Err(())
    }
}

/// `on` or `off`, as nginx's flag slots read them.
fn flag(cf: *mut ngx_conf_t, name: &str, value: &str) -> Result<bool, *mut c_char> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(conf_error(
            cf,
            &format!(
                "invalid value \"{other}\" in \"{name}\" directive, it must be \"on\" or \"off\""
            ),
        )),
    }
}

/// A size as nginx writes one (`16k`, `1m`, a plain number of bytes).
fn size(cf: *mut ngx_conf_t, name: &str, value: &str) -> Result<u64, *mut c_char> {
    ngx_pool_conf::parse_size(value)
        .filter(|n| *n <= isize::MAX as u64)
        .ok_or_else(|| conf_error(cf, &format!("invalid size \"{value}\" in \"{name}\"")))
}

/// Sets `slot` once, or says the directive is a duplicate.
fn once<T>(slot: &mut Option<T>, value: Result<T, *mut c_char>) -> *mut c_char {
    if slot.is_some() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    match value {
        Ok(v) => {
            *slot = Some(v);
            ptr::null_mut()
        }
        Err(e) => e,
    }
}

setter!(set_buffering, LocConf, |cf, loc, args| {
    once(
        &mut loc.buffering.response,
        flag(cf, "pool_buffering", args[0]),
    )
});

setter!(set_request_buffering, LocConf, |cf, loc, args| {
    once(
        &mut loc.buffering.request,
        flag(cf, "pool_request_buffering", args[0]),
    )
});

setter!(set_buffers, LocConf, |cf, loc, args| {
    let n = args[0]
        .parse::<usize>()
        .ok()
        .filter(|n| (2..=1024).contains(n));
    let parsed = match (n, size(cf, "pool_buffers", args[1])) {
        (None, _) => Err(conf_error(
            cf,
            &format!(
                "invalid number of buffers \"{}\" in \"pool_buffers\" (2 to 1024)",
                args[0]
            ),
        )),
        (_, Err(e)) => Err(e),
        (Some(_), Ok(0)) => Err(conf_error(cf, "\"pool_buffers\" size must not be 0")),
        (Some(n), Ok(s)) => Ok((n, s as usize)),
    };
    once(&mut loc.buffering.buffers, parsed)
});

fn at_least(n: u64, min: u64) -> bool {
    n >= min
}

/// The setters of the plain size directives, each into its field.
macro_rules! size_setter {
    ($name:ident, $directive:literal, $field:ident, $ty:ty, $min:expr) => {
        setter!($name, LocConf, |cf, loc, args| {
            let parsed = size(cf, $directive, args[0]).and_then(|n| {
                if !at_least(n, $min) {
                    Err(conf_error(
                        cf,
                        &format!("\"{}\" must be at least {}", $directive, $min),
                    ))
                } else {
                    Ok(n as $ty)
                }
            });
            once(&mut loc.buffering.$field, parsed)
        });
    };
}

size_setter!(set_buffer_size, "pool_buffer_size", buffer_size, usize, 1);
size_setter!(set_busy_size, "pool_busy_buffers_size", busy_size, usize, 1);
size_setter!(
    set_max_temp_file_size,
    "pool_max_temp_file_size",
    max_temp_file_size,
    u64,
    0
);
size_setter!(
    set_temp_file_write_size,
    "pool_temp_file_write_size",
    temp_file_write_size,
    usize,
    1
);
size_setter!(
    set_max_header_size,
    "pool_max_header_size",
    max_header_size,
    usize,
    64
);

/// `pool_temp_path PATH [L1 [L2 [L3]]]`: nginx's own path slot does the parsing, the prefix and
/// the registration (so the master makes the directory, as for `proxy_temp_path`).
pub unsafe extern "C" fn set_temp_path(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    crate::edge::guard(
        "directive",
        || NGX_CONF_ERROR,
        || {
            // SAFETY: nginx passes this command and the LocConf this module created for the
            // block being parsed; the path slot writes an `ngx_path_t *` at the offset of the
            // `TempPath` field (a transparent pointer, null while unset), which the command's
            // offset names.
            unsafe {
                let _ = cmd;
                nginx_sys::ngx_conf_set_path_slot(cf, ptr::addr_of_mut!(TEMP_PATH_COMMAND), conf)
            }
        },
    )
}

/// The command that `set_temp_path` hands to nginx's path slot: only its offset is read.
static mut TEMP_PATH_COMMAND: ngx_command_t = ngx_command_t {
    name: ngx_str_t {
        len: 14,
        data: c"pool_temp_path".as_ptr() as *mut u8,
    },
    type_: 0,
    set: None,
    conf: 0,
    offset: std::mem::offset_of!(LocConf, buffering) + std::mem::offset_of!(Buffering, temp_path),
    post: ptr::null_mut(),
};
