//! Sending a pool worker's response: its head as nginx response headers, its body from the
//! arena to the client without copying, chunk by chunk as it arrives.
//!
//! Body buffers handed to `ngx_http_output_filter` point into the shared region (the request
//! context holds the mapping alive). nginx's write path advances `pos` of each buffer as the
//! kernel takes its bytes (development guide, "Buffers" and "Response body"); once a buffer is
//! wholly sent its chunk is freed, which is the pool worker's credit. A client that reads
//! slowly keeps `c->buffered` set and its buffers unsent, so the credit stops and the handler
//! waits: nginx's own backpressure reaches the application without anything piling up.

use crate::log::log_request;
use nginx_sys::{ngx_buf_t, ngx_chain_t, ngx_http_request_t, ngx_int_t, ngx_str_t};
use nginx_sys::{ngx_table_elt_t, NGX_ERROR, NGX_OK};
use ngx_pool_channel::message::{decode_response_head, UNKNOWN_LENGTH};
use ngx_pool_channel::stream::{Direction, StreamReader};
use ngx_pool_channel::{Region, SlotId};
use std::collections::VecDeque;
use std::ptr;

/// A response whose body is being sent.
pub struct Download {
    reader: StreamReader,
    /// Announced body length (`None`: streamed without one, sent chunked).
    declared: Option<u64>,
    head_len: u64,
    /// Stream offset up to which every byte has left nginx.
    sent: u64,
    /// Buffers handed to nginx and not yet seen sent, with the stream offset each ends at.
    handed: VecDeque<(*mut ngx_buf_t, *mut ngx_chain_t, u64)>,
    /// Buffers and links of sent pieces, for reuse: a long download allocates no more of them
    /// than its window needs.
    spare: Vec<(*mut ngx_buf_t, *mut ngx_chain_t)>,
    last_sent: bool,
    /// The answer is a 101 to an upgrade nginx offered: the connection is a tunnel now.
    pub upgraded: bool,
}

/// What to do after reading a response head.
pub enum Started {
    /// Sent whole (small body copied, or no body for HEAD): finalize with this code; the slot
    /// can be released now.
    Sent(ngx_int_t),
    /// The body streams from the arena to the client without copying (`pool_buffering off`).
    Streaming(Download),
    /// The body is to be buffered ([`crate::buffered`]): the reader stands after the head.
    Buffer {
        reader: StreamReader,
        head_len: u64,
        declared: Option<u64>,
    },
}

/// How a location wants its responses.
pub struct Opts {
    /// Buffer the body (unless the handler says `X-Accel-Buffering: no`).
    pub buffering: bool,
    /// A complete response whose body is at most this long is copied whole into the request's
    /// pool and its slot released at once (`pool_buffer_size`).
    pub copy_up_to: u64,
    /// The largest response head accepted (`pool_max_header_size`).
    pub max_head: u64,
    /// The request asked for an upgrade that nginx offers the pool (see `request::tunnel`):
    /// a 101 is allowed, and makes the connection a tunnel.
    pub upgrade: bool,
}

const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"proxy-connection",
    b"upgrade",
    b"content-length",
    b"te",
    b"trailer",
    // Read by us, never passed on (proxy hides it too).
    b"x-accel-buffering",
];

/// Reads the response head of slot `id` (in `Streaming`, or `Done` when `total` is known),
/// sends the response header, and the body too if it is small. `Err` before anything was sent.
pub fn start(
    r: *mut ngx_http_request_t,
    region: &Region,
    id: SlotId,
    head_len: u32,
    total: Option<u64>,
    opts: &Opts,
) -> Result<Started, String> {
    let g = region.geometry();
    let head_len = u64::from(head_len);
    if head_len > opts.max_head {
        return Err(format!(
            "response head of {head_len} bytes exceeds pool_max_header_size ({} bytes)",
            opts.max_head
        ));
    }
    let published = ngx_pool_channel::stream::published(region, id, Direction::Response);
    if head_len == 0 || head_len > g.message_limit() || head_len > published {
        return Err(format!("bad response head length {head_len}"));
    }
    if let Some(t) = total {
        if t < head_len || t != published {
            return Err(format!("bad response length {t}"));
        }
    }
    // A small complete response is read whole, head and body, into one buffer of the
    // request's pool; otherwise just the head.
    let small = total.filter(|t| t - head_len <= opts.copy_up_to);
    let want = small.unwrap_or(head_len);
    // SAFETY: pool memory of the live request, valid until the request is freed (after its
    // response is sent); filled completely below before it is read.
    let bytes: &mut [u8] = unsafe {
        let p = nginx_sys::ngx_pnalloc((*r).pool, want as usize) as *mut u8;
        if p.is_null() {
            return Err("no memory for the response".into());
        }
        std::slice::from_raw_parts_mut(p, want as usize)
    };
    let mut reader = StreamReader::new();
    if reader
        .read(region, id, Direction::Response, bytes)
        .map_err(|e| e.to_string())?
        != bytes.len()
    {
        return Err("short response".into());
    }
    let (head, body) = bytes.split_at(head_len as usize);
    let view = decode_response_head(head).map_err(|e| e.to_string())?;
    let upgraded = view.status == 101 && opts.upgrade;
    if !(200..=599).contains(&view.status) && !upgraded {
        // 1xx would be taken by the client for an interim answer (101: a protocol switch) with
        // the connection kept for what follows: a desync a handler must not be able to cause
        // (a 101 is only taken for an upgrade the client asked for and nginx offered).
        return Err(format!(
            "response status {} (a handler may send 200 to 599, or 101 to a WebSocket handshake)",
            view.status
        ));
    }
    if upgraded {
        // A complete small answer was read whole: the WebSocket closed at once.
        return upgrade(r, &view.headers, reader, head_len, small.map(|_| body));
    }
    let announced = ngx_pool_channel::message::announced_length(head).unwrap_or(UNKNOWN_LENGTH);
    let body_len = total.map(|t| t - head_len);
    // SAFETY: reading a field of the live request this handler runs for.
    let head_request = unsafe { (*r).method } == nginx_sys::NGX_HTTP_HEAD as nginx_sys::ngx_uint_t;
    if let (Some(b), true) = (body_len, announced != UNKNOWN_LENGTH) {
        // A HEAD answer announces the GET's length and has no body.
        if b != announced && !(head_request && b == 0) {
            return Err(format!("response body of {b} bytes, {announced} announced"));
        }
    }
    let declared = (announced != UNKNOWN_LENGTH)
        .then_some(announced)
        .or(body_len);
    let rc = send_header(r, view.status, &view.headers, declared);
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || header_only(r) {
        return Ok(Started::Sent(rc));
    }
    if small.is_some() {
        return Ok(Started::Sent(send_pooled(r, body)));
    }
    let buffering = view
        .headers
        .iter()
        .rev()
        .find(|(name, _)| name.eq_ignore_ascii_case(b"x-accel-buffering"))
        .map_or(opts.buffering, |(_, v)| {
            match v.to_ascii_lowercase().as_slice() {
                b"no" => false,
                b"yes" => true,
                _ => opts.buffering,
            }
        });
    if buffering {
        return Ok(Started::Buffer {
            reader,
            head_len,
            declared,
        });
    }
    Ok(Started::Streaming(Download::new(
        reader, declared, head_len, false,
    )))
}

/// Sends a 101 (its `Upgrade` kept, nginx writes `Connection: upgrade`) and streams what
/// follows unbuffered, on a connection that is not kept alive after.
fn upgrade(
    r: *mut ngx_http_request_t,
    headers: &[(&[u8], &[u8])],
    reader: StreamReader,
    head_len: u64,
    whole: Option<&[u8]>,
) -> Result<Started, String> {
    // SAFETY: the live request, its header not sent yet; strings copied into its pool.
    let rc = unsafe {
        (*r).set_keepalive(0);
        (*r).headers_out.status_line = ngx_str_t {
            len: SWITCHING.len(),
            data: SWITCHING.as_ptr() as *mut u8,
        };
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(b"upgrade") && !push_header(r, name, value) {
                return Err("no memory for the response head".into());
            }
        }
        let others: Vec<(&[u8], &[u8])> = headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(b"upgrade"))
            .copied()
            .collect();
        send_header(r, 101, &others, None)
    };
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
        return Ok(Started::Sent(rc));
    }
    if let Some(body) = whole {
        return Ok(Started::Sent(send_pooled(r, body)));
    }
    // The head goes out now, not with the first bytes the app sends (nginx would hold it
    // back for `postpone_output`), as `ngx_http_upstream_upgrade` does.
    // SAFETY: the live request whose header was just sent.
    if unsafe { nginx_sys::ngx_http_send_special(r, nginx_sys::NGX_HTTP_FLUSH as usize) }
        == NGX_ERROR as ngx_int_t
    {
        return Ok(Started::Sent(NGX_ERROR as ngx_int_t));
    }
    Ok(Started::Streaming(Download::new(
        reader, None, head_len, true,
    )))
}

/// The status line of a 101 (nginx's table has none for 1xx).
const SWITCHING: &[u8] = b"101 Switching Protocols";

impl Download {
    fn new(reader: StreamReader, declared: Option<u64>, head_len: u64, upgraded: bool) -> Self {
        Download {
            reader,
            declared,
            head_len,
            sent: head_len,
            handed: VecDeque::new(),
            spare: Vec::new(),
            last_sent: false,
            upgraded,
        }
    }
}

/// The outcome of one pump.
pub enum Pump {
    /// More is to come: wait for the pool worker (data) or the client (write event). Every
    /// published byte has been handed to nginx.
    Wait {
        /// Chunks were freed: the pool worker may be waiting for that credit.
        freed: bool,
    },
    /// Everything is handed to nginx, the last buffer included: finalize with this code; the
    /// slot must stay until the request is freed (nginx may still be sending from it).
    Finished(ngx_int_t),
    /// The connection failed, or the stream is inconsistent (logged): terminate.
    Error,
}

impl Download {
    /// Hands newly published bytes to nginx, frees the chunks nginx has sent. `total` is the
    /// stream's length once the slot is `Done`.
    pub fn pump(
        &mut self,
        r: *mut ngx_http_request_t,
        region: &Region,
        id: SlotId,
        total: Option<u64>,
    ) -> Pump {
        let cap = u64::from(region.geometry().chunk_data());
        let mut first: *mut ngx_chain_t = ptr::null_mut();
        let mut last: *mut ngx_chain_t = ptr::null_mut();
        loop {
            match self.reader.next_piece(region, id, Direction::Response, cap) {
                Ok(Some(piece)) => {
                    let Some(p) = region.chunk_ptr(piece.chunk, piece.offset, piece.len) else {
                        log_request(r, "pool worker's response: piece out of bounds");
                        return Pump::Error;
                    };
                    let Some((b, cl)) = self.buffer(r) else {
                        return Pump::Error;
                    };
                    // SAFETY: `b` is a zeroed buffer of the request pool; it points at `len`
                    // region bytes that stay allocated to us until we free their chunk, which
                    // we do only after nginx has advanced `pos` to `last`.
                    unsafe {
                        (*b).start = p as *mut u8;
                        (*b).pos = p as *mut u8;
                        (*b).last = (p as *mut u8).add(piece.len as usize);
                        (*b).end = (*b).last;
                        (*b).set_memory(1);
                        link(&mut first, &mut last, b, cl);
                    }
                    self.handed.push_back((b, cl, self.reader.position()));
                }
                Ok(None) => break,
                Err(e) => {
                    log_request(r, &format!("pool worker's response: {e}"));
                    return Pump::Error;
                }
            }
        }
        let position = self.reader.position();
        let complete = total.is_some_and(|t| t == position);
        if let Some(t) = total {
            let body = t.saturating_sub(self.head_len);
            if t < position || self.declared.is_some_and(|d| d != body) && complete {
                log_request(
                    r,
                    &format!(
                        "pool worker's response body is {body} bytes, not the {} announced",
                        self.declared.unwrap_or(0)
                    ),
                );
                return Pump::Error;
            }
        }
        if complete && !self.last_sent {
            let Some((b, cl)) = self.buffer(r) else {
                return Pump::Error;
            };
            // SAFETY: a zeroed pool buffer turned into nginx's "last buffer" marker.
            unsafe {
                // SAFETY: `r` is live; main-request check as in the development guide.
                let is_main = r == (*r).main;
                (*b).set_last_buf(u32::from(is_main));
                (*b).set_last_in_chain(1);
                link(&mut first, &mut last, b, cl);
            }
            self.last_sent = true;
        } else if !last.is_null() {
            // Push what we have now: nginx must not sit on it waiting for more
            // (`postpone_output`), since more waits for credit that only sending gives.
            // SAFETY: `last` is our link with a live buffer.
            unsafe { (*(*last).buf).set_flush(1) };
        }
        // SAFETY: `r` is live; `first` is null (flush what is pending) or our chain.
        let rc = unsafe { nginx_sys::ngx_http_output_filter(r, first) };
        if rc == NGX_ERROR as ngx_int_t {
            return Pump::Error;
        }
        let freed = self.reap(region, id);
        if self.last_sent {
            return Pump::Finished(rc);
        }
        Pump::Wait { freed }
    }

    /// Frees the chunks behind buffers nginx has sent; true if any was freed.
    fn reap(&mut self, region: &Region, id: SlotId) -> bool {
        while let Some(&(b, cl, end)) = self.handed.front() {
            // SAFETY: our buffers live in the request pool for the request's life.
            let done = unsafe { (*b).pos == (*b).last };
            if !done {
                break;
            }
            self.handed.pop_front();
            self.spare.push((b, cl));
            self.sent = end;
        }
        self.reader
            .release(region, id, Direction::Response, self.sent)
    }

    /// A zeroed buffer and chain link: a spare one whose bytes were sent, or new from the pool.
    fn buffer(&mut self, r: *mut ngx_http_request_t) -> Option<(*mut ngx_buf_t, *mut ngx_chain_t)> {
        if let Some((b, cl)) = self.spare.pop() {
            // SAFETY: a buffer of ours that nginx finished with: its bytes are sent, and the
            // filters keep their own chain links, never ours, nor sent buffers of others
            // (`ngx_chain_update_chains` frees foreign ones). Zeroing resets every flag.
            unsafe {
                ptr::write_bytes(b, 0, 1);
                ptr::write_bytes(cl, 0, 1);
            }
            return Some((b, cl));
        }
        // SAFETY: allocations from the live request's pool, zeroed.
        unsafe {
            let b = nginx_sys::ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_buf_t>())
                as *mut ngx_buf_t;
            let cl = nginx_sys::ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_chain_t>())
                as *mut ngx_chain_t;
            (!b.is_null() && !cl.is_null()).then_some((b, cl))
        }
    }
}

/// Appends buffer `b` on link `cl` to the chain `first`..`last`.
///
/// # Safety
/// `b` and `cl` are valid and ours; `last` is null or the chain's last link.
unsafe fn link(
    first: &mut *mut ngx_chain_t,
    last: &mut *mut ngx_chain_t,
    b: *mut ngx_buf_t,
    cl: *mut ngx_chain_t,
) {
    // SAFETY: per the contract.
    unsafe {
        (*cl).buf = b;
        (*cl).next = ptr::null_mut();
        if last.is_null() {
            *first = cl;
        } else {
            (**last).next = cl;
        }
    }
    *last = cl;
}

/// Copies `data` into the request pool as an ngx_str_t.
///
/// # Safety
/// `r` must be live.
unsafe fn pool_str(r: *mut ngx_http_request_t, data: &[u8]) -> Option<ngx_str_t> {
    // SAFETY: per the contract.
    unsafe {
        let p = nginx_sys::ngx_pnalloc((*r).pool, data.len().max(1)) as *mut u8;
        if p.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(data.as_ptr(), p, data.len());
        Some(ngx_str_t {
            len: data.len(),
            data: p,
        })
    }
}

/// Appends a response header.
///
/// # Safety
/// `r` must be live and its response header not yet sent.
pub unsafe fn push_header(r: *mut ngx_http_request_t, name: &[u8], value: &[u8]) -> bool {
    // SAFETY: per the contract; the list element is zeroed before use (its layout differs
    // between nginx versions) and then filled with pool-allocated strings.
    unsafe {
        let h = nginx_sys::ngx_list_push(ptr::addr_of_mut!((*r).headers_out.headers))
            as *mut ngx_table_elt_t;
        if h.is_null() {
            return false;
        }
        ptr::write_bytes(h, 0, 1);
        let (Some(k), Some(v)) = (pool_str(r, name), pool_str(r, value)) else {
            (*h).hash = 0;
            return false;
        };
        (*h).hash = 1;
        (*h).key = k;
        (*h).value = v;
        true
    }
}

/// Sends the response header: status, the worker's headers (hop-by-hop ones dropped; nginx
/// writes its own), and the body length when known (else nginx uses chunked encoding).
fn send_header(
    r: *mut ngx_http_request_t,
    status: u16,
    headers: &[(&[u8], &[u8])],
    body_len: Option<u64>,
) -> ngx_int_t {
    // SAFETY: `r` is live and its header not sent; all strings are copied into its pool.
    unsafe {
        (*r).headers_out.status = status as usize;
        (*r).headers_out.content_length_n = body_len.map_or(-1, |n| n as i64);
        for (name, value) in headers {
            if HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                continue;
            }
            if name.eq_ignore_ascii_case(b"content-type") {
                if let Some(v) = pool_str(r, value) {
                    (*r).headers_out.content_type = v;
                    (*r).headers_out.content_type_len = v.len;
                }
                continue;
            }
            if !push_header(r, name, value) {
                return NGX_ERROR as ngx_int_t;
            }
        }
        nginx_sys::ngx_http_send_header(r)
    }
}

/// Whether request `r` wants no body (a HEAD, a 304): after its header, nothing is sent.
fn header_only(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: reading a flag of a live request.
    unsafe { (*r).header_only() != 0 }
}

/// Sends a whole response from process memory (copied into the request pool).
pub fn send_whole(
    r: *mut ngx_http_request_t,
    status: u16,
    headers: &[(&[u8], &[u8])],
    body: &[u8],
) -> ngx_int_t {
    let rc = send_header(r, status, headers, Some(body.len() as u64));
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || header_only(r) {
        return rc;
    }
    send_copy(r, body)
}

/// Sends a small body, copied into the request pool, as the whole response body.
fn send_copy(r: *mut ngx_http_request_t, body: &[u8]) -> ngx_int_t {
    // SAFETY: pool memory of the live request, filled before use.
    let data = unsafe {
        let data = nginx_sys::ngx_pnalloc((*r).pool, body.len().max(1)) as *mut u8;
        if data.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::copy_nonoverlapping(body.as_ptr(), data, body.len());
        std::slice::from_raw_parts(data, body.len())
    };
    send_pooled(r, data)
}

/// Sends `body`, which lives in the request pool, as the whole response body.
fn send_pooled(r: *mut ngx_http_request_t, body: &[u8]) -> ngx_int_t {
    // SAFETY: `r` is live with its header sent; the buffer and the bytes live in its pool until
    // the request is freed, after nginx has sent them.
    unsafe {
        let b =
            nginx_sys::ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
        let out = nginx_sys::ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_chain_t>())
            as *mut ngx_chain_t;
        if b.is_null() || out.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        let data = body.as_ptr() as *mut u8;
        (*b).start = data;
        (*b).pos = data;
        (*b).last = data.add(body.len());
        (*b).end = (*b).last;
        (*b).set_memory(u32::from(!body.is_empty()));
        (*b).set_last_buf(u32::from(r == (*r).main));
        (*b).set_last_in_chain(1);
        (*out).buf = b;
        (*out).next = ptr::null_mut();
        nginx_sys::ngx_http_output_filter(r, out)
    }
}
