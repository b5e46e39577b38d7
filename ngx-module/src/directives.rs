//! Configuration directives (`pool`, `pool_pass`, `pool_param`, `pool_log_level`, `pool_timeout`,
//! `pool_daemon`, `pool_status`, and the buffering ones) at the FFI edge.
//!
//! Parsing proper is in [`ngx_pool_conf`]; this module turns nginx's argument arrays into `&str`s,
//! stores results in the module's configuration structs, and reports errors the nginx way: a
//! message string returned from the set handler, to which nginx adds "in FILE:LINE".
//! See <https://nginx.org/en/docs/dev/development_guide.html#config_directives>.

use crate::params::{self, Param};
use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_module_t, ngx_module_t, ngx_str_t, ngx_uint_t,
    NGX_CONF_1MORE, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE1234, NGX_CONF_TAKE2,
    NGX_HTTP_LIF_CONF, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF, NGX_LOG_EMERG,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf};
use ngx_pool_conf::{self as conf, PoolConf};
use std::ffi::{c_char, c_void, CString};
use std::path::PathBuf;
use std::ptr;

const NGX_CONF_ERROR: *mut c_char = ngx::core::NGX_CONF_ERROR as *mut c_char;

/// A pool as declared, with where it was declared.
#[derive(Debug, Clone)]
pub struct PoolEntry {
    pub conf: PoolConf,
    /// Absolute socket path.
    pub socket: PathBuf,
}

/// http-level configuration: every declared pool.
#[derive(Debug, Default)]
pub struct MainConf {
    pub pools: Vec<PoolEntry>,
    /// `pool_daemon PATH;` — the poold binary for managed pools.
    pub daemon: Option<PathBuf>,
    /// The nginx prefix, for relative paths.
    pub prefix: String,
}

/// location-level configuration: the pool this location passes to.
#[derive(Debug, Default)]
pub struct LocConf {
    pub pool_name: Option<String>,
    /// Index into `MainConf::pools`, resolved when locations merge.
    pub pool: Option<usize>,
    /// Where `pool_pass` was written, for the error if the pool does not exist.
    pub origin: String,
    /// `pool_timeout`: this location's deadline, in place of the pool's `timeout=`.
    pub timeout_ms: Option<u64>,
    /// `pool_log_level`: the level of this location's 503 lines (`None`: inherited; `error`).
    pub log_level: Option<u32>,
    /// `pool_param`s written at this level (`None`: inherited, as `uwsgi_param` is).
    pub params: Option<Vec<Param>>,
    /// `pool_buffering` and its companions, as written at this level, then merged.
    pub buffering: buffering::Buffering,
    /// The merged buffering values, for locations that pass to a pool.
    pub effective: Option<buffering::Effective>,
}

/// Zero-sized handle that ties the configuration types to the module.
pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is initialised at load time and nginx only fills in its
        // indices before any configuration is read; we only read it.
        unsafe { &*ptr::addr_of!(crate::ngx_pool_module) }
    }
}

// SAFETY: create_main_conf below allocates exactly a `MainConf` for this module.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}

// SAFETY: create_loc_conf below allocates exactly a `LocConf` for this module.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

pub static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(crate::wiring::PRECONFIGURATION),
    postconfiguration: None,
    create_main_conf: Some(<Module as HttpModule>::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(<Module as HttpModule>::create_loc_conf),
    merge_loc_conf: Some(merge_loc_conf),
};

const fn command(
    name: &'static [u8],
    type_: u32,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
    conf: usize,
) -> ngx_command_t {
    // nginx compares directive names with strcmp: the bytes must be NUL-terminated, the NUL
    // not counted in `len`.
    ngx_command_t {
        name: ngx_str_t {
            len: name.len() - 1,
            data: name.as_ptr() as *mut u8,
        },
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf: conf as ngx_uint_t,
        offset: 0,
        post: ptr::null_mut(),
    }
}

/// The directives every level (http, server, location) may hold.
const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

pub static mut COMMANDS: [ngx_command_t; 17] = [
    command(
        b"pool\0",
        NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE,
        set_pool,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        b"pool_pass\0",
        NGX_HTTP_LOC_CONF | NGX_HTTP_LIF_CONF | NGX_CONF_TAKE1,
        set_pool_pass,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_param\0",
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE2,
        set_pool_param,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_log_level\0",
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        set_pool_log_level,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_timeout\0",
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        set_pool_timeout,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_daemon\0",
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_pool_daemon,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        b"pool_status\0",
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        set_pool_status,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_buffering\0",
        ANY_LEVEL | NGX_CONF_TAKE1,
        buffering::set_buffering,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_request_buffering\0",
        ANY_LEVEL | NGX_CONF_TAKE1,
        buffering::set_request_buffering,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_buffers\0",
        ANY_LEVEL | NGX_CONF_TAKE2,
        buffering::set_buffers,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_buffer_size\0",
        ANY_LEVEL | NGX_CONF_TAKE1,
        buffering::set_buffer_size,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_busy_buffers_size\0",
        ANY_LEVEL | NGX_CONF_TAKE1,
        buffering::set_busy_size,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_temp_path\0",
        ANY_LEVEL | NGX_CONF_TAKE1234,
        buffering::set_temp_path,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_max_temp_file_size\0",
        ANY_LEVEL | NGX_CONF_TAKE1,
        buffering::set_max_temp_file_size,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_temp_file_write_size\0",
        ANY_LEVEL | NGX_CONF_TAKE1,
        buffering::set_temp_file_write_size,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        b"pool_max_header_size\0",
        ANY_LEVEL | NGX_CONF_TAKE1,
        buffering::set_max_header_size,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    ngx_command_t::empty(),
];

/// The directive's arguments after its name, as UTF-8 strings.
///
/// # Safety
/// `cf` must be the `ngx_conf_t` nginx passed to a set handler.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> Result<Vec<&'a str>, String> {
    // SAFETY: during a set handler `cf->args` is an array of `ngx_str_t` whose data lives in the
    // configuration pool for the whole configuration cycle.
    let elts = unsafe { (*(*cf).args).as_slice::<ngx_str_t>() };
    elts.iter()
        .skip(1)
        .map(|s| {
            s.to_str()
                .map_err(|_| "arguments must be UTF-8".to_string())
        })
        .collect()
}

/// Logs `msg` as an `[emerg]` for the directive being parsed (nginx appends " in FILE:LINE")
/// and fails it.
fn conf_error(cf: *mut ngx_conf_t, msg: &str) -> *mut c_char {
    ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
    NGX_CONF_ERROR
}

/// `file:line` of the directive being parsed.
fn origin(cf: *mut ngx_conf_t) -> String {
    // SAFETY: during parsing `cf->conf_file` points at the current file, whose name is an
    // ngx_str_t in the cycle pool.
    unsafe {
        let file = (*cf).conf_file;
        if file.is_null() {
            return String::from("?");
        }
        format!(
            "{}:{}",
            (*file).file.name.to_str().unwrap_or("?"),
            (*file).line
        )
    }
}

fn prefix(cf: *mut ngx_conf_t) -> String {
    // SAFETY: `cf->cycle` is the cycle being configured; its prefix is set before parsing.
    unsafe { (*(*cf).cycle).prefix.to_str().unwrap_or("").to_string() }
}

unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    crate::edge::guard(
        "directive",
        || NGX_CONF_ERROR,
        // SAFETY: nginx passes the two LocConfs this module created, during merging.
        || unsafe { merge_loc(cf, &*(prev as *const LocConf), &mut *(conf as *mut LocConf)) },
    )
}

/// Merges a location's configuration with its parent's; resolves its pool.
///
/// # Safety
/// `cf` is the configuration being merged.
unsafe fn merge_loc(cf: *mut ngx_conf_t, prev: &LocConf, conf: &mut LocConf) -> *mut c_char {
    if conf.pool_name.is_none() {
        conf.pool_name = prev.pool_name.clone();
        conf.origin = prev.origin.clone();
    }
    if conf.timeout_ms.is_none() {
        conf.timeout_ms = prev.timeout_ms;
    }
    if conf.params.is_none() {
        conf.params = prev.params.clone();
    }
    if conf.log_level.is_none() {
        conf.log_level = prev.log_level;
    }
    conf.buffering.inherit(&prev.buffering);
    let Some(name) = conf.pool_name.clone() else {
        // No pool here: the settings only pass down; a temp path is made where one is used.
        if conf.buffering.temp_path.0.is_null() {
            conf.buffering.temp_path.0 = prev.buffering.temp_path.0;
        }
        return ptr::null_mut();
    };
    // SAFETY: cf is the configuration being merged.
    if unsafe { buffering::merge_temp_path(cf, &prev.buffering, &mut conf.buffering) }.is_err() {
        return NGX_CONF_ERROR;
    }
    match conf.buffering.effective() {
        Ok(e) => conf.effective = Some(e),
        Err(e) => return conf_error(cf, &format!("{e} (for pool_pass in {})", conf.origin)),
    }
    // SAFETY: cf is valid during merging.
    let Some(main) = Module::main_conf(unsafe { &*cf }) else {
        return NGX_CONF_ERROR;
    };
    match main.pools.iter().position(|p| p.conf.settings.name == name) {
        Some(i) => {
            conf.pool = Some(i);
            ptr::null_mut()
        }
        None => {
            // Reported with our own location: nginx's would name the end of the http block.
            let msg = CString::new(format!(
                "unknown pool \"{name}\" in pool_pass in {}",
                conf.origin
            ))
            .unwrap_or_default();
            // SAFETY: cf->log is valid during configuration; the format is a C string literal.
            unsafe {
                nginx_sys::ngx_log_error_core(
                    NGX_LOG_EMERG as _,
                    (*cf).log,
                    0,
                    c"%s".as_ptr(),
                    msg.as_ptr(),
                )
            };
            NGX_CONF_ERROR
        }
    }
}

/// Defines nginx set handler `$name` for a directive stored in configuration type `$conf`: the
/// one prologue every directive shares (its configuration struct, its arguments as `&str`s, the
/// edge guard against panics), then `$body`, which returns NULL or an error as nginx expects.
macro_rules! setter {
    ($name:ident, $conf:ty, |$cf:ident, $c:ident, $args:ident| $body:block) => {
        pub(crate) unsafe extern "C" fn $name(
            cf: *mut ngx_conf_t,
            _cmd: *mut ngx_command_t,
            conf: *mut c_void,
        ) -> *mut c_char {
            crate::edge::guard(
                "directive",
                || NGX_CONF_ERROR,
                || {
                    // SAFETY: nginx passes the configuration struct of the command's offset, which
                    // this module's create function allocated as a `$conf`.
                    let $c = unsafe { &mut *(conf as *mut $conf) };
                    let $cf = cf;
                    // SAFETY: `cf` is the ngx_conf_t of the running set handler.
                    let $args = match unsafe { args(cf) } {
                        Ok(a) => a,
                        Err(e) => return conf_error(cf, &e),
                    };
                    $body
                },
            )
        }
    };
}

pub mod buffering;

setter!(set_pool, MainConf, |cf, main, args| {
    let mut pool = match conf::parse_pool(&args) {
        Ok(p) => p,
        Err(e) => return conf_error(cf, &e),
    };
    if main
        .pools
        .iter()
        .any(|p| p.conf.settings.name == pool.settings.name)
    {
        return conf_error(cf, &format!("duplicate pool \"{}\"", pool.settings.name));
    }
    main.prefix = prefix(cf);
    if let Err(e) = check_pool_user(&pool) {
        return conf_error(cf, &e);
    }
    if !pool.settings.handler.is_empty() {
        // A library path is relative to the prefix, and must be there now (nginx -t says so).
        let spec = match conf::HandlerSpec::parse(&pool.settings.handler) {
            Ok(s) => s.absolute(&main.prefix),
            Err(e) => return conf_error(cf, &e),
        };
        if let Err(e) = spec.check_files() {
            return conf_error(cf, &e);
        }
        pool.settings.handler = spec.to_string();
    }
    pool.settings = pool.settings.absolute(&main.prefix);
    if let Err(e) = pool.settings.check_paths() {
        return conf_error(cf, &e);
    }
    let socket = conf::socket_path(&pool, &main.prefix);
    if let Err(e) = conf::check_socket_dir(&socket, pool.external) {
        return conf_error(cf, &e);
    }
    if let Some(other) = main.pools.iter().find(|p| p.socket == socket) {
        return conf_error(
            cf,
            &format!(
                "pool \"{}\" uses the socket of pool \"{}\"",
                pool.settings.name, other.conf.settings.name
            ),
        );
    }
    main.pools.push(PoolEntry { conf: pool, socket });
    ptr::null_mut()
});

/// `user=` and `group=` name a user and group this machine has (names or numbers).
fn check_pool_user(pool: &PoolConf) -> Result<(), String> {
    if let Some(user) = &pool.user {
        let known = user.parse::<u32>().is_ok()
            || nix::unistd::User::from_name(user).ok().flatten().is_some();
        if !known {
            return Err(format!("unknown user \"{user}\" in user="));
        }
    }
    if let Some(group) = &pool.group {
        let known = group.parse::<u32>().is_ok()
            || nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .is_some();
        if !known {
            return Err(format!("unknown group \"{group}\" in group="));
        }
    }
    Ok(())
}

setter!(set_pool_daemon, MainConf, |cf, main, args| {
    if main.daemon.is_some() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    main.daemon = Some(PathBuf::from(prefix(cf)).join(args[0]));
    ptr::null_mut()
});

setter!(set_pool_status, LocConf, |cf, _loc, _args| {
    set_content_handler(cf, crate::wiring::POOL_STATUS_HANDLER)
});

setter!(set_pool_param, LocConf, |cf, loc, args| {
    let name = args[0];
    let valid = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'=');
    if !valid {
        return conf_error(
            cf,
            &format!("invalid pool_param name \"{name}\" (visible ASCII without '=', up to 255)"),
        );
    }
    // SAFETY: during a set handler `cf->args` holds the directive's words (TAKE2: three) in the
    // configuration pool, which outlives the compiled value that points into it.
    let value = unsafe { (*(*cf).args).as_slice::<ngx_str_t>()[2] };
    // SAFETY: cf is the configuration being parsed.
    match unsafe { params::compile(cf, name.as_bytes(), value) } {
        Ok(p) => {
            loc.params.get_or_insert_with(Vec::new).push(p);
            ptr::null_mut()
        }
        Err(e) => conf_error(cf, &e),
    }
});

setter!(set_pool_log_level, LocConf, |cf, loc, args| {
    if loc.log_level.is_some() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    let level = match args[0] {
        "info" => nginx_sys::NGX_LOG_INFO,
        "notice" => nginx_sys::NGX_LOG_NOTICE,
        "warn" => nginx_sys::NGX_LOG_WARN,
        "error" => nginx_sys::NGX_LOG_ERR,
        other => {
            return conf_error(
                cf,
                &format!("invalid pool_log_level \"{other}\" (info, notice, warn or error)"),
            )
        }
    };
    loc.log_level = Some(level);
    ptr::null_mut()
});

setter!(set_pool_timeout, LocConf, |cf, loc, args| {
    if loc.timeout_ms.is_some() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    match conf::parse_time_ms(args[0]) {
        Some(ms) if ms > 0 => {
            loc.timeout_ms = Some(ms);
            ptr::null_mut()
        }
        _ => conf_error(
            cf,
            &format!(
                "invalid pool_timeout \"{}\" (a time such as 30s, 500ms, 1m30s)",
                args[0]
            ),
        ),
    }
});

setter!(set_pool_pass, LocConf, |cf, loc, args| {
    if loc.pool_name.is_some() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    loc.pool_name = Some(args[0].to_string());
    loc.origin = origin(cf);
    set_content_handler(cf, crate::wiring::POOL_PASS_HANDLER)
});

/// Makes `handler` the content handler of the location being parsed: how `proxy_pass` and
/// `fastcgi_pass` take over a location.
fn set_content_handler(
    cf: *mut ngx_conf_t,
    handler: unsafe extern "C" fn(*mut nginx_sys::ngx_http_request_t) -> nginx_sys::ngx_int_t,
) -> *mut c_char {
    // SAFETY: `cf` is the running set handler's; the core module's location configuration of
    // the block being parsed is live and ours to change during it.
    match unsafe { ngx::http::NgxHttpCoreModule::location_conf_mut(&*cf) } {
        Some(clcf) => {
            clcf.handler = Some(handler);
            ptr::null_mut()
        }
        None => NGX_CONF_ERROR,
    }
}
