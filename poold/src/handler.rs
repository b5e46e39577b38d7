//! Loading a handler: a built-in descriptor or a library's (`dlopen`, RTLD_NOW | RTLD_GLOBAL),
//! checked against the ABI before anything in it runs, and the calls poold makes through it.
//!
//! Everything read from a library is untrusted: the descriptor's version and size are checked
//! before any other field is read, and no field past the size the library declares is read.

use crate::builtin;
use crate::host;
use ngx_pool_abi::{self as abi, ngx_pool_handler, ngx_pool_request, ngx_pool_str};
use ngx_pool_conf::HandlerSpec;
use std::ffi::c_char;

/// The descriptor's functions, copied out once they passed the checks.
#[derive(Clone, Copy)]
struct Functions {
    init: Option<unsafe extern "C" fn(*const abi::ngx_pool_host, ngx_pool_str) -> i32>,
    worker_init: Option<unsafe extern "C" fn(*const abi::ngx_pool_host) -> i32>,
    handle: unsafe extern "C" fn(*const abi::ngx_pool_host, *mut ngx_pool_request) -> i32,
    worker_exit: Option<unsafe extern "C" fn(*const abi::ngx_pool_host)>,
    before_fork: Option<unsafe extern "C" fn(*const abi::ngx_pool_host)>,
    after_fork: Option<unsafe extern "C" fn(*const abi::ngx_pool_host)>,
    run_task: Option<unsafe extern "C" fn(*const abi::ngx_pool_host, *mut ngx_pool_request) -> i32>,
}

/// A handler ready to run: its functions, its name, and the library that holds them.
pub struct LoadedHandler {
    functions: Functions,
    name: String,
    /// What the pool was configured with, for log lines.
    spec: String,
    /// Kept loaded for poold's whole life: the functions point into it.
    _library: Option<libloading::os::unix::Library>,
}

/// Why a handler could not be loaded: one line naming the library and the reason.
#[derive(Debug)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest handler name read from a library (a missing NUL must not make us read on).
const NAME_MAX: usize = 128;

impl LoadedHandler {
    /// Loads what `spec` names; nothing in it has run yet but the descriptor function. A WSGI
    /// app is not loaded here: the app's interpreter runs it, with the handler compiled into
    /// the `ngx-pool` package's extension ([`LoadedHandler::compiled_in`]).
    pub fn load(spec: &HandlerSpec) -> Result<LoadedHandler, LoadError> {
        match spec {
            HandlerSpec::Python { .. } => Err(LoadError(format!(
                "handler={spec} runs in the app's own interpreter (`python -m ngx_pool serve`, from the ngx-pool package), not in the poold binary"
            ))),
            HandlerSpec::Builtin(name) => {
                let desc = builtin::descriptor(name)
                    .ok_or_else(|| LoadError(format!("no built-in handler \"{name}\"")))?;
                // SAFETY: a descriptor of ours, made by the SDK's macro: a static.
                unsafe { Self::from_descriptor(desc, spec, None) }
            }
            HandlerSpec::Dylib(path) => {
                let fail =
                    |why: String| LoadError(format!("handler library {}: {why}", path.display()));
                // SAFETY: loading a library runs its initialisers; that the operator's library
                // may do so is what `handler=dylib:` asks for. RTLD_GLOBAL lets a handler that
                // embeds an interpreter load C extensions against the symbols it brought.
                let lib = unsafe {
                    libloading::os::unix::Library::open(
                        Some(path),
                        libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                    )
                }
                .map_err(|e| fail(format!("cannot be loaded: {e}")))?;
                type DescriptorFn = unsafe extern "C" fn() -> *const ngx_pool_handler;
                // SAFETY: the symbol is looked up with the type the ABI gives it.
                let get = unsafe { lib.get::<DescriptorFn>(b"ngx_pool_handler_v1\0") }
                    .map_err(|_| fail("does not export ngx_pool_handler_v1 (is it built with NGX_POOL_HANDLER or export_handler!?)".into()))?;
                // SAFETY: calling the library's descriptor function, as the ABI says.
                let desc = unsafe { get() };
                if desc.is_null() {
                    return Err(fail("ngx_pool_handler_v1 returned NULL".into()));
                }
                // SAFETY: a non-NULL descriptor from the library, which stays loaded (it moves
                // into the LoadedHandler); `from_descriptor` checks it before reading past the
                // version.
                unsafe { Self::from_descriptor(&*desc, spec, Some(lib)) }
                    .map_err(|LoadError(e)| fail(e))
            }
        }
    }

    /// A handler compiled into the running program (the WSGI handler in the Python extension
    /// module): its descriptor is a static made by the SDK's `export_handler!`.
    pub fn compiled_in(
        desc: &'static ngx_pool_handler,
        spec: &HandlerSpec,
    ) -> Result<LoadedHandler, LoadError> {
        // SAFETY: a static descriptor: readable whole, and what it points at lives as long as
        // the program.
        unsafe { Self::from_descriptor(desc, spec, None) }
    }

    /// # Safety
    /// `desc` is readable for at least its first field, and for the `size` bytes it declares;
    /// it and what it points at stay valid while `library` (if any) is loaded.
    unsafe fn from_descriptor(
        desc: &ngx_pool_handler,
        spec: &HandlerSpec,
        library: Option<libloading::os::unix::Library>,
    ) -> Result<LoadedHandler, LoadError> {
        if desc.abi_major != abi::NGX_POOL_ABI_MAJOR {
            return Err(LoadError(format!(
                "built for handler ABI version {}.{}; this poold speaks {}.{} (rebuild it against this include/ngx_pool.h)",
                desc.abi_major,
                desc.abi_minor,
                abi::NGX_POOL_ABI_MAJOR,
                abi::NGX_POOL_ABI_MINOR
            )));
        }
        if desc.size < abi::NGX_POOL_HANDLER_V1_SIZE {
            return Err(LoadError(format!(
                "its handler descriptor is {} bytes, at least {} expected for ABI {}",
                desc.size,
                abi::NGX_POOL_HANDLER_V1_SIZE,
                abi::NGX_POOL_ABI_MAJOR
            )));
        }
        let Some(handle) = desc.handle else {
            return Err(LoadError("its descriptor has no handle function".into()));
        };
        // SAFETY: `name` is NULL or a NUL-terminated string in the library (the ABI); at most
        // NAME_MAX bytes are read.
        let name = unsafe { bounded_name(desc.name) }.unwrap_or_else(|| spec.to_string());
        // Fields of a later minor version are read only if the library's descriptor has them.
        let has = |end: usize| desc.size as usize >= end;
        let fork_hooks = has(std::mem::offset_of!(ngx_pool_handler, after_fork)
            + std::mem::size_of::<Option<unsafe extern "C" fn(*const abi::ngx_pool_host)>>());
        let tasks = has(std::mem::offset_of!(ngx_pool_handler, run_task)
            + std::mem::size_of::<
                Option<
                    unsafe extern "C" fn(*const abi::ngx_pool_host, *mut ngx_pool_request) -> i32,
                >,
            >());
        Ok(LoadedHandler {
            functions: Functions {
                init: desc.init,
                worker_init: desc.worker_init,
                handle,
                worker_exit: desc.worker_exit,
                // Not even read unless declared: a 1.0 library's descriptor ends before them.
                before_fork: if fork_hooks { desc.before_fork } else { None },
                after_fork: if fork_hooks { desc.after_fork } else { None },
                run_task: if tasks { desc.run_task } else { None },
            },
            name,
            spec: spec.to_string(),
            _library: library,
        })
    }

    /// The handler's own name (its descriptor's), for log lines.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Runs `init` with the pool's `handler_args`, once, before forking.
    pub fn init(&self, args: &str) -> Result<(), LoadError> {
        let Some(init) = self.functions.init else {
            return Ok(());
        };
        let config = ngx_pool_str {
            data: args.as_ptr(),
            len: args.len(),
        };
        // SAFETY: the ABI's call: our host table (a static) and a string valid during the call.
        let rc = unsafe { init(&host::HOST, config) };
        if rc == abi::NGX_POOL_OK {
            Ok(())
        } else {
            Err(LoadError(format!(
                "{}: init failed with status {rc}",
                self.spec
            )))
        }
    }

    /// Runs `worker_init` in a freshly forked pool worker: its status if not OK.
    pub fn worker_init(&self) -> Result<(), i32> {
        let Some(f) = self.functions.worker_init else {
            return Ok(());
        };
        // SAFETY: the ABI's call with our host table.
        match unsafe { f(&host::HOST) } {
            abi::NGX_POOL_OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// Runs `handle` on request `r` (made by [`host::run_with`]): its status.
    pub fn handle(&self, r: host::RequestHandle) -> i32 {
        // SAFETY: the ABI's call: our host table and the handle of the request being run.
        unsafe { (self.functions.handle)(&host::HOST, r.as_ptr()) }
    }

    /// Runs `run_task` on task `t` (made by [`host::run_with`]): its status, or `None` if the
    /// handler runs no tasks.
    pub fn run_task(&self, t: host::RequestHandle) -> Option<i32> {
        let f = self.functions.run_task?;
        // SAFETY: the ABI's call: our host table and the handle of the task being run.
        Some(unsafe { f(&host::HOST, t.as_ptr()) })
    }

    /// Runs `before_fork`, in poold just before it forks a pool worker.
    pub fn before_fork(&self) {
        if let Some(f) = self.functions.before_fork {
            // SAFETY: the ABI's call with our host table.
            unsafe { f(&host::HOST) }
        }
    }

    /// Runs `after_fork`, in poold just after it forked a pool worker (or failed to).
    pub fn after_fork(&self) {
        if let Some(f) = self.functions.after_fork {
            // SAFETY: the ABI's call with our host table.
            unsafe { f(&host::HOST) }
        }
    }

    /// Runs `worker_exit` in a pool worker that is leaving in an orderly way.
    pub fn worker_exit(&self) {
        if let Some(f) = self.functions.worker_exit {
            // SAFETY: the ABI's call with our host table.
            unsafe { f(&host::HOST) }
        }
    }
}

/// What the Python handlers' `init` is given for `spec` (see python/pyext/src/settings.rs):
/// one `key=value` per line.
pub fn python_init_config(spec: &HandlerSpec, pool: &ngx_pool_conf::PoolSettings) -> String {
    let HandlerSpec::Python {
        module, callable, ..
    } = spec
    else {
        return String::new();
    };
    let mut out = format!(
        "app={module}:{callable}\npreload={}\n",
        if pool.preload { "on" } else { "off" }
    );
    if let Some(p) = &pool.python_path {
        out.push_str(&format!("python_path={p}\n"));
    }
    if pool.is_asgi() {
        out.push_str(&format!(
            "lifespan={}\nconcurrency={}\ntimeout={}\nws_ping={}\n",
            pool.lifespan.name(),
            pool.concurrency(),
            pool.timeout_ms.unwrap_or(0),
            pool.ws_ping_ms.unwrap_or(ngx_pool_conf::DEFAULT_WS_PING_MS)
        ));
    }
    out
}

/// A printable name of at most NAME_MAX bytes, or None.
///
/// # Safety
/// `p` is NULL or points at a NUL-terminated string (only NAME_MAX + 1 bytes are read if the
/// NUL comes later).
unsafe fn bounded_name(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller's contract; strnlen reads no further than NAME_MAX bytes.
    let len = unsafe { libc::strnlen(p, NAME_MAX) };
    // SAFETY: `len` bytes were just found readable (before any NUL).
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    let name = std::str::from_utf8(bytes).ok()?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() || c == ' '))
        .then(|| name.to_string())
}
