//! Write ngx-pool handlers in safe Rust, on the C ABI of `include/ngx_pool.h`.
//!
//! A handler is a type implementing [`Handler`]; [`export_handler!`] turns it into a handler
//! library (a `cdylib` that poold loads with `handler=dylib:PATH`), and poold's built-in
//! handlers are written exactly the same way ([`handler_descriptor!`]). Every call from the
//! host runs under `catch_unwind`: a panic fails that request with 500 and an error_log line,
//! and the pool worker goes on serving. No unwinding crosses the boundary either way.
//!
//! ```no_run
//! use ngx_pool_sdk::{Handler, Request, Response, Result};
//! use std::io::Write;
//!
//! struct Hello;
//! impl Handler for Hello {
//!     fn init(_args: &str) -> Result<Self> { Ok(Hello) }
//!     fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result {
//!         resp.add_header("Content-Type", "text/plain");
//!         writeln!(resp, "hello {}", req.param_str("X_USER").unwrap_or("you"))?;
//!         Ok(())
//!     }
//! }
//! ngx_pool_sdk::export_handler!(Hello);
//! ```

mod error;
#[doc(hidden)]
pub mod export;
mod fanout;
mod host;
mod request;
mod response;
mod status;
mod stream;

pub use error::{Error, ErrorKind, Result};
pub use fanout::{Fanout, Ready, Task, TaskId};
pub use host::{log, pool_workers, Level};
pub use ngx_pool_abi as abi;
pub use request::{BodyReader, Request};
pub use response::Response;
pub use status::Status;
pub use stream::{Stream, Waker};

/// Application code run by pool workers.
///
/// Lifecycle: [`init`](Handler::init) once in poold before it forks (load what the workers
/// share; start no threads), [`worker_init`](Handler::worker_init) once in each worker after
/// the fork, [`handle`](Handler::handle) for each request, [`worker_exit`](Handler::worker_exit)
/// when a worker leaves in an orderly way.
pub trait Handler: Sized + Send + Sync + 'static {
    /// Builds the handler from the pool's `handler_args` (empty when none). An error keeps the
    /// pool from starting (its requests get 503; poold logs the error and tries again later).
    fn init(args: &str) -> Result<Self>;
    /// Per-process set-up after the fork. An error makes the worker exit (poold starts another,
    /// with a growing delay if that keeps happening).
    fn worker_init(&self) -> Result {
        Ok(())
    }
    /// Answers one request. `Err` becomes a 500 (or a cut-short response once its head was
    /// sent) with the error in error_log; a panic is treated the same way.
    fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result;
    /// A worker is leaving in an orderly way (recycled or stopped); not called after a crash.
    fn worker_exit(&self) {}
    /// In poold just before it forks each pool worker: quiesce what must not be copied
    /// mid-operation (an interpreter's locks). The child runs [`worker_init`](Handler::worker_init)
    /// next, poold [`after_fork`](Handler::after_fork).
    fn before_fork(&self) {}
    /// In poold just after it forked a pool worker (or failed to): undo `before_fork`.
    fn after_fork(&self) {}
    /// Runs one fan-out task (ABI 1.2) that a `handle` of this pool queued with
    /// [`Fanout::submit`] or [`Fanout::map`], in whichever worker took it: read its input,
    /// write its output. An `Err` fails the task (the caller gets an error for it).
    fn run_task(&self, task: &Task) -> Result {
        let _ = task;
        Err(Error::msg("this handler runs no fan-out tasks"))
    }
}

/// The `&'static ngx_pool_handler` descriptor of handler type `$t` (named `$name`, by default
/// the type's name): what [`export_handler!`] exports, and what poold's built-ins use directly.
#[macro_export]
macro_rules! handler_descriptor {
    ($t:ty) => {
        $crate::handler_descriptor!($t, stringify!($t))
    };
    ($t:ty, $name:expr) => {{
        static STATE: $crate::export::State<$t> = $crate::export::State::new($name);
        unsafe extern "C" fn init(
            host: *const $crate::abi::ngx_pool_host,
            args: $crate::abi::ngx_pool_str,
        ) -> i32 {
            // SAFETY: called by the host with its table and the handler_args string.
            unsafe { $crate::export::init::<$t>(&STATE, host, args) }
        }
        unsafe extern "C" fn worker_init(host: *const $crate::abi::ngx_pool_host) -> i32 {
            // SAFETY: called by the host with its table.
            unsafe { $crate::export::worker_init::<$t>(&STATE, host) }
        }
        unsafe extern "C" fn handle(
            host: *const $crate::abi::ngx_pool_host,
            r: *mut $crate::abi::ngx_pool_request,
        ) -> i32 {
            // SAFETY: called by the host with its table and the request it is running.
            unsafe { $crate::export::handle::<$t>(&STATE, host, r) }
        }
        unsafe extern "C" fn worker_exit(host: *const $crate::abi::ngx_pool_host) {
            // SAFETY: called by the host with its table.
            unsafe { $crate::export::worker_exit::<$t>(&STATE, host) }
        }
        unsafe extern "C" fn before_fork(host: *const $crate::abi::ngx_pool_host) {
            // SAFETY: called by the host with its table.
            unsafe { $crate::export::fork_hook::<$t>(&STATE, host, true) }
        }
        unsafe extern "C" fn after_fork(host: *const $crate::abi::ngx_pool_host) {
            // SAFETY: called by the host with its table.
            unsafe { $crate::export::fork_hook::<$t>(&STATE, host, false) }
        }
        unsafe extern "C" fn run_task(
            host: *const $crate::abi::ngx_pool_host,
            t: *mut $crate::abi::ngx_pool_request,
        ) -> i32 {
            // SAFETY: called by the host with its table and the task it is running.
            unsafe { $crate::export::run_task::<$t>(&STATE, host, t) }
        }
        static DESCRIPTOR: $crate::abi::ngx_pool_handler = $crate::abi::ngx_pool_handler {
            abi_major: $crate::abi::NGX_POOL_ABI_MAJOR,
            abi_minor: $crate::abi::NGX_POOL_ABI_MINOR,
            size: ::core::mem::size_of::<$crate::abi::ngx_pool_handler>() as u32,
            name: ::core::concat!($name, "\0").as_ptr().cast(),
            init: Some(init),
            worker_init: Some(worker_init),
            handle: Some(handle),
            worker_exit: Some(worker_exit),
            before_fork: Some(before_fork),
            after_fork: Some(after_fork),
            run_task: Some(run_task),
        };
        &DESCRIPTOR
    }};
}

/// Makes this `cdylib` a handler library for handler type `$t`: exports `ngx_pool_handler_v1`,
/// which poold looks up after `dlopen` (`handler=dylib:PATH`).
#[macro_export]
macro_rules! export_handler {
    ($t:ty) => {
        $crate::export_handler!($t, stringify!($t));
    };
    ($t:ty, $name:expr) => {
        /// The handler descriptor poold looks up (see `include/ngx_pool.h`).
        #[no_mangle]
        pub extern "C" fn ngx_pool_handler_v1() -> *const $crate::abi::ngx_pool_handler {
            $crate::handler_descriptor!($t, $name)
        }
    };
}
