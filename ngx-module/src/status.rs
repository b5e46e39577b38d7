//! `pool_status;`: a location that reports every pool as JSON (or Prometheus text with
//! `?format=prometheus`, or a page for people with `?format=html` or when a browser asks for
//! `text/html`), read from the regions this nginx worker is attached to.

use crate::download::send_whole;
use crate::runtime::{self, with_pool};
use nginx_sys::{ngx_http_request_t, ngx_int_t, NGX_HTTP_GET, NGX_HTTP_HEAD};
use ngx_pool_channel::status::{snapshot, PoolStatus};
use serde_json::json;
use std::fmt::Write;

/// The page for people: self-contained (no external asset), it fetches `?format=json` every
/// 2 s and renders it (status.html).
const PAGE: &str = include_str!("status.html");

/// Resident set size of `pid` in KiB, if readable.
fn rss_kib(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096) / 1024)
}

fn pools() -> Vec<(String, Option<PoolStatus>)> {
    (0..runtime::pool_count())
        .filter_map(|i| {
            runtime::ensure_attached(i);
            with_pool(i, |p| {
                (
                    p.name.clone(),
                    p.attached.as_ref().map(|a| snapshot(&a.region)),
                )
            })
            .ok()
        })
        .collect()
}

fn json_doc(pools: &[(String, Option<PoolStatus>)]) -> String {
    let list: Vec<_> = pools
        .iter()
        .map(|(name, st)| match st {
            None => json!({ "name": name, "attached": false }),
            Some(s) => json!({
                "name": name,
                "attached": true,
                "poold_pid": s.poold_pid,
                "workers": s.workers.iter().map(|w| json!({
                    "pid": w.pid,
                    "state": w.state,
                    "requests": w.served,
                    "busy_ms": w.busy_ms,
                    "rss_kib": rss_kib(w.pid),
                })).collect::<Vec<_>>(),
                "queue_depth": s.queue_depth,
                "slots": { "total": s.slots_total, "in_use": s.slots_in_use },
                "chunks": { "total": s.chunks_total, "in_use": s.chunks_in_use, "size": s.chunk_size },
                "counters": s.counters.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            }),
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&json!({ "pools": list })).unwrap_or_default();
    out.push('\n');
    out
}

fn prometheus(pools: &[(String, Option<PoolStatus>)]) -> String {
    let mut o = String::new();
    for (name, st) in pools {
        let _ = writeln!(
            o,
            "ngx_pool_attached{{pool=\"{name}\"}} {}",
            u8::from(st.is_some())
        );
        let Some(s) = st else { continue };
        let busy = s.workers.iter().filter(|w| w.busy_ms.is_some()).count();
        let _ = writeln!(o, "ngx_pool_workers{{pool=\"{name}\"}} {}", s.workers.len());
        let _ = writeln!(o, "ngx_pool_workers_busy{{pool=\"{name}\"}} {busy}");
        let _ = writeln!(
            o,
            "ngx_pool_queue_depth{{pool=\"{name}\"}} {}",
            s.queue_depth
        );
        let _ = writeln!(
            o,
            "ngx_pool_slots_in_use{{pool=\"{name}\"}} {}",
            s.slots_in_use
        );
        let _ = writeln!(
            o,
            "ngx_pool_chunks_in_use{{pool=\"{name}\"}} {}",
            s.chunks_in_use
        );
        for (k, v) in &s.counters {
            let _ = writeln!(o, "ngx_pool_{k}_total{{pool=\"{name}\"}} {v}");
        }
    }
    o
}

/// The content handler of `pool_status` locations.
///
/// # Safety
/// Called by nginx's content phase with a live request.
pub unsafe extern "C" fn pool_status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    crate::edge::guard(
        "status",
        || nginx_sys::NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        // SAFETY: nginx's content phase hands us a live request.
        || unsafe { status(r) },
    )
}

/// # Safety
/// `r` is a live request in its content phase.
unsafe fn status(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: fields of a live request; discarding the body is allowed in a content handler.
    let args = unsafe {
        if (*r).method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
            return 405;
        }
        let rc = nginx_sys::ngx_http_discard_request_body(r);
        if rc != nginx_sys::NGX_OK as ngx_int_t {
            return rc;
        }
        let a = (*r).args;
        if a.data.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(a.data, a.len).to_vec()
        }
    };
    let args = String::from_utf8_lossy(&args);
    let format = args
        .split('&')
        .find_map(|kv| kv.strip_prefix("format="))
        .map(str::to_owned);
    // SAFETY: reading the headers of a live request.
    let browser = format.is_none() && unsafe { accepts_html(r) };
    let (body, ctype): (String, &[u8]) = match format.as_deref() {
        Some("prometheus") => (prometheus(&pools()), b"text/plain; version=0.0.4"),
        Some("html") => (PAGE.to_string(), b"text/html; charset=utf-8"),
        None if browser => (PAGE.to_string(), b"text/html; charset=utf-8"),
        _ => (json_doc(&pools()), b"application/json"),
    };
    let headers: [(&[u8], &[u8]); 2] = [(b"Content-Type", ctype), (b"Cache-Control", b"no-store")];
    send_whole(r, 200, &headers, body.as_bytes())
}

/// True if the request's Accept header names `text/html` (a browser): `*/*` alone (curl, most
/// clients) keeps the JSON.
///
/// # Safety
/// `r` is a live request.
unsafe fn accepts_html(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: the caller's contract; the ngx crate walks the live request's header list.
    let req = unsafe { ngx::http::Request::from_ngx_http_request(r) };
    req.headers_in_iterator().any(|(name, value)| {
        name.as_bytes().eq_ignore_ascii_case(b"accept")
            && value
                .as_bytes()
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"text/html"))
    })
}
