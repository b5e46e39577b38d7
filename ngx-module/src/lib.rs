//! ngx-pool's nginx module: `pool` and `pool_pass` directives, and the glue that hands requests
//! to a poold worker pool through shared memory.
//!
//! The module follows the nginx development guide
//! (<https://nginx.org/en/docs/dev/development_guide.html>): directives are parsed at
//! configuration time ([`directives`]); the master starts one poold per managed pool from
//! `init_module` ([`managed`]); each worker attaches to every pool in `init_process` and keeps
//! the pool's eventfd in its event loop ([`runtime`]); a `pool_pass` location's content handler
//! writes the request into the region and suspends it ([`request`]); events then stream the
//! body in ([`upload`]) and the response out ([`download`]). `unsafe` code lives in those
//! FFI-edge modules; the directive parameters are parsed in plain Rust by the `ngx-pool-conf`
//! crate. Every entry point nginx calls runs under [`edge::guard`]: no panic unwinds into nginx.
//! Attaching to a pool never waits on poold ([`runtime::attach`]).

// A cdylib whose interface is nginx's module table: these docs are for the people working on
// it (`cargo doc --document-private-items`), and link its private modules.
#![allow(rustdoc::private_intra_doc_links)]

mod buffered;
mod directives;
mod download;
mod edge;
mod isolation;
mod log;
mod managed;
mod params;
mod rejections;
mod request;
mod runtime;
mod status;
mod upload;
mod variables;

use nginx_sys::{ngx_cycle_t, ngx_int_t, ngx_module_t, NGX_HTTP_MODULE, NGX_OK};

/// Where the layers meet: what the configuration hands nginx (the content handlers of
/// `pool_pass` and `pool_status`, the variables' preconfiguration) named here, at the crate's
/// root, so that [`directives`] (the configuration, which every layer reads) depends on none of
/// the layers that serve requests.
mod wiring {
    use nginx_sys::{ngx_conf_t, ngx_http_request_t, ngx_int_t};

    pub type ContentHandler = unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t;

    pub const POOL_PASS_HANDLER: ContentHandler = crate::request::pool_pass_handler;
    pub const POOL_STATUS_HANDLER: ContentHandler = crate::status::pool_status_handler;
    pub const PRECONFIGURATION: unsafe extern "C" fn(*mut ngx_conf_t) -> ngx_int_t =
        crate::variables::preconfiguration;
}

/// The module table entry nginx loads (`ngx_pool_module`).
#[used]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_pool_module: ngx_module_t = ngx_module_t {
    ctx: std::ptr::addr_of!(directives::MODULE_CTX) as _,
    // SAFETY: nginx reads the command table through this pointer; it is a static that lives
    // for the whole process and is only read after initialisation.
    commands: unsafe { std::ptr::addr_of_mut!(directives::COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(init_module),
    init_process: Some(init_process),
    exit_process: Some(exit_process),
    exit_master: Some(exit_master),
    ..ngx_module_t::default()
};

ngx::ngx_modules!(ngx_pool_module);

extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // Never NGX_ERROR: nginx exits when a module's init_module fails, even on a reload.
    edge::guard("init_module", || (), || managed::on_init_module(cycle));
    NGX_OK as ngx_int_t
}

extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // A worker whose pools could not be set up still serves every other location.
    edge::guard("init_process", || (), || runtime::on_init_process(cycle));
    NGX_OK as ngx_int_t
}

extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    edge::guard("exit_process", || (), runtime::on_exit_process);
}

extern "C" fn exit_master(_cycle: *mut ngx_cycle_t) {
    edge::guard("exit_master", || (), managed::on_exit_master);
}
