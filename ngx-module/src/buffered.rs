//! A pool worker's response buffered as `proxy_buffering on` buffers an upstream's: nginx's own
//! event pipe takes the body out of the arena as fast as the handler writes it, into the
//! location's buffers (`pool_buffers`) and then a temp file (`pool_temp_path`, up to
//! `pool_max_temp_file_size`), and sends it on at the client's pace. A slow or stalled client
//! never holds a pool worker: the worker is free once its handler is done.
//!
//! The pipe reads its "upstream" through a connection's `recv_chain`. Ours is a connection that
//! is not in the event loop (`fd` -1, so the pipe never arms events or timers on it) whose
//! `recv_chain` copies published response bytes from the arena into the pipe's buffers and
//! gives the handler its credit back at once (the channel's
//! [`AnswerReader`], in [`Feed`]). The eventfd (more bytes published)
//! and the client's write events drive the pipe, as `ngx_http_upstream_process_upstream` and
//! `_downstream` drive proxy's (development guide, "Buffers"; `src/event/ngx_event_pipe.c`).

use crate::directives::buffering::Effective;
use nginx_sys::{
    ngx_chain_t, ngx_connection_t, ngx_event_pipe_t, ngx_event_t, ngx_http_request_t, ngx_int_t,
    ngx_temp_file_t, off_t, NGX_AGAIN, NGX_ERROR, NGX_LOG_WARN,
};
use ngx_pool_channel::answer::{AnswerReader, Fill};
use ngx_pool_channel::stream::StreamReader;
use ngx_pool_channel::{Region, SlotId};
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;

/// The arena side of a buffered response: the channel's reader of an answer, the region it
/// reads, and what the pipe's callback learned.
pub struct Feed {
    region: Rc<Region>,
    answer: AnswerReader,
    /// Why the stream broke, for the request's log line.
    pub error: Option<String>,
}

impl Feed {
    pub fn new(
        region: Rc<Region>,
        id: SlotId,
        reader: StreamReader,
        head_len: u64,
        declared: Option<u64>,
    ) -> Feed {
        Feed {
            region,
            answer: AnswerReader::new(id, reader, head_len, declared),
            error: None,
        }
    }
}

/// The pipe's `recv_chain`: fills the chain's buffers from `[last, end)` with response bytes.
/// Returns the count (the pipe advances `last` itself), 0 at the end, `NGX_AGAIN` (and clears
/// `ready`) when nothing is published yet, `NGX_ERROR` when the stream broke.
unsafe extern "C" fn recv_chain(
    c: *mut ngx_connection_t,
    chain: *mut ngx_chain_t,
    _: off_t,
) -> isize {
    crate::edge::guard(
        "pipe",
        || NGX_ERROR as isize,
        || {
            // SAFETY: `c` is our source connection, whose `data` is the Feed boxed in the
            // request's context (alive while the pipe is driven); the chain's buffers are the
            // pipe's memory buffers, writable in [last, end).
            unsafe {
                let feed = &mut *((*c).data as *mut Feed);
                let mut bufs: Vec<&mut [u8]> = Vec::new();
                let mut cl = chain;
                while !cl.is_null() {
                    let b = (*cl).buf;
                    if !b.is_null() && (*b).end > (*b).last {
                        let len = (*b).end.offset_from((*b).last) as usize;
                        bufs.push(std::slice::from_raw_parts_mut((*b).last, len));
                    }
                    cl = (*cl).next;
                }
                match feed.answer.fill(&feed.region, &mut bufs) {
                    Fill::Data(n) => n as isize,
                    Fill::End => 0,
                    Fill::Again => {
                        (*(*c).read).set_ready(0);
                        NGX_AGAIN as isize
                    }
                    Fill::Broken(e) => {
                        feed.error = Some(e);
                        NGX_ERROR as isize
                    }
                }
            }
        },
    )
}

/// The pipe's output filter: the request's output filter chain.
unsafe extern "C" fn output_filter(data: *mut c_void, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: `data` is the request the pipe was made for (`output_ctx`), alive while driven.
    unsafe { nginx_sys::ngx_http_output_filter(data as *mut ngx_http_request_t, chain) }
}

/// A buffered response being moved from the arena to the client.
pub struct Buffered {
    pipe: *mut ngx_event_pipe_t,
    source: *mut ngx_connection_t,
    /// Boxed: the source connection points at it.
    feed: Box<Feed>,
}

/// Where a buffered response stands after a turn of the pipe.
pub enum Turn {
    /// More is to come (from the arena or the client).
    Wait,
    /// Every byte is handed to nginx: finalize with this code.
    Finished(ngx_int_t),
    /// The pool's side broke (the reason is logged by the caller): cut the response.
    Broken(String),
    /// The client went away or timed out: close.
    ClientGone,
}

impl Buffered {
    /// Makes the pipe for request `r`, whose header is sent, reading the body with `feed`.
    pub fn new(r: *mut ngx_http_request_t, feed: Feed, conf: &Effective) -> Option<Buffered> {
        let mut feed = Box::new(feed);
        // SAFETY: allocations from the live request's pool, zeroed (nginx's initial state for
        // these structures); filled as ngx_http_upstream_send_response fills proxy's pipe.
        unsafe {
            let pool = (*r).pool;
            let c = (*r).connection;
            let zeroed = |n: usize| nginx_sys::ngx_pcalloc(pool, n);
            let p = zeroed(std::mem::size_of::<ngx_event_pipe_t>()) as *mut ngx_event_pipe_t;
            let source = zeroed(std::mem::size_of::<ngx_connection_t>()) as *mut ngx_connection_t;
            let rev = zeroed(std::mem::size_of::<ngx_event_t>()) as *mut ngx_event_t;
            let wev = zeroed(std::mem::size_of::<ngx_event_t>()) as *mut ngx_event_t;
            let tf = zeroed(std::mem::size_of::<ngx_temp_file_t>()) as *mut ngx_temp_file_t;
            if p.is_null() || source.is_null() || rev.is_null() || wev.is_null() || tf.is_null() {
                return None;
            }
            (*source).fd = -1;
            (*source).read = rev;
            (*source).write = wev;
            (*source).log = (*c).log;
            (*source).data = ptr::addr_of_mut!(*feed) as *mut c_void;
            (*source).recv_chain = Some(recv_chain);
            (*rev).data = source as *mut c_void;
            (*rev).log = (*c).log;
            (*rev).set_ready(1);
            (*wev).data = source as *mut c_void;
            (*wev).log = (*c).log;

            (*tf).file.fd = -1;
            (*tf).file.log = (*c).log;
            (*tf).path = conf.temp_path;
            (*tf).pool = pool;
            (*tf).set_log_level(NGX_LOG_WARN);
            (*tf).warn = c"a pool's response is buffered to a temporary file".as_ptr() as *mut _;

            let clcf =
                <ngx::http::NgxHttpCoreModule as ngx::http::HttpModuleLocationConf>::location_conf(
                    ngx::http::Request::from_ngx_http_request(r),
                )?;
            (*p).upstream = source;
            (*p).downstream = c;
            (*p).input_filter = Some(nginx_sys::ngx_event_pipe_copy_input_filter);
            (*p).input_ctx = r as *mut c_void;
            (*p).output_filter = Some(output_filter);
            (*p).output_ctx = r as *mut c_void;
            (*p).tag = ptr::addr_of!(crate::ngx_pool_module) as *mut c_void;
            (*p).bufs.num = conf.buffers.0 as ngx_int_t;
            (*p).bufs.size = conf.buffers.1;
            (*p).busy_size = conf.busy_size as isize;
            (*p).pool = pool;
            (*p).log = (*c).log;
            (*p).start_sec = nginx_sys::ngx_time();
            (*p).temp_file = tf;
            (*p).max_temp_file_size = conf.max_temp_file_size as off_t;
            (*p).temp_file_write_size = conf.temp_file_write_size as isize;
            (*p).set_free_bufs(1);
            (*p).send_timeout = clcf.send_timeout;
            (*p).send_lowat = clcf.send_lowat as isize;
            (*p).length = -1;
            Some(Buffered {
                pipe: p,
                source,
                feed,
            })
        }
    }

    /// Runs the pipe: reads what the arena has (`ready`), writes what the client takes
    /// (`write`), and says where the response stands.
    pub fn turn(&mut self, r: *mut ngx_http_request_t, write: bool) -> Turn {
        // SAFETY: the pipe and its source live in the request's pool, `r` is live and suspended
        // by us; the pipe calls back into `recv_chain` and the output filters only.
        unsafe {
            let wev = (*(*r).connection).write;
            // A client past `send_timeout` never gets here: the request's driver ends it first.
            if write && (*wev).delayed() != 0 {
                return Turn::Wait;
            }
            (*(*self.source).read).set_ready(1);
            let p = self.pipe;
            if nginx_sys::ngx_event_pipe(p, ngx_int_t::from(write))
                == nginx_sys::NGX_ABORT as ngx_int_t
            {
                return Turn::ClientGone;
            }
            if (*p).downstream_error() != 0 {
                return Turn::ClientGone;
            }
            if (*p).upstream_error() != 0 {
                let why = self
                    .feed
                    .error
                    .take()
                    .unwrap_or_else(|| "the response stream broke".into());
                return Turn::Broken(why);
            }
            if (*p).upstream_eof() != 0 || (*p).upstream_done() != 0 {
                let rc = nginx_sys::ngx_http_send_special(r, nginx_sys::NGX_HTTP_LAST as _);
                return Turn::Finished(rc);
            }
            Turn::Wait
        }
    }
}
