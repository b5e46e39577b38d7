//! `pool_status;`: a location that reports every pool as JSON (or Prometheus text with
//! `?format=prometheus`, or a page for people with `?format=html` or when a browser asks for
//! `text/html`), read from the regions this nginx worker is attached to.

use crate::download::send_whole;
use crate::runtime::{self, with_pool};
use nginx_sys::{ngx_http_request_t, ngx_int_t, NGX_HTTP_GET, NGX_HTTP_HEAD};
use ngx_pool_channel::status::{snapshot, HistogramStatus, PoolStatus};
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

/// A time histogram in the JSON document: how many, their total, and the median and 99th
/// percentile in seconds (as `histogram_quantile` estimates them; null while none).
fn times(h: &HistogramStatus) -> serde_json::Value {
    json!({
        "count": h.count,
        "sum_seconds": h.sum_seconds,
        "p50_seconds": h.quantile(0.5),
        "p99_seconds": h.quantile(0.99),
        // Cumulative counts at each bound (seconds; the last, +Inf, as null): what the page
        // takes differences of between its samples for the quantiles of the last seconds.
        "le": h.buckets.iter().map(|(le, _)| if le.is_finite() { json!(le) } else { json!(null) }).collect::<Vec<_>>(),
        "cumulative": h.buckets.iter().map(|(_, c)| c).collect::<Vec<_>>(),
    })
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
                "latency": {
                    "queue": times(&s.queue_time),
                    "run": times(&s.run_time),
                },
            }),
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&json!({ "pools": list })).unwrap_or_default();
    out.push('\n');
    out
}

/// What each counter of the region means, for its `# HELP` line (the counter is exposed as
/// `ngx_pool_NAME_total`).
const COUNTER_HELP: [(&str, &str); 15] = [
    ("accepted", "Requests nginx workers queued for the pool."),
    ("completed", "Answers the pool's workers handed over whole."),
    (
        "failed",
        "Requests that failed in the pool (502; 504 for timeouts).",
    ),
    (
        "timeouts",
        "Of the failed: stopped for running past their deadline.",
    ),
    (
        "rejected_full",
        "Requests answered 503 because every slot was in use.",
    ),
    (
        "queue_timeouts",
        "Requests answered 503 after waiting past queue_timeout.",
    ),
    (
        "abandoned",
        "Requests nginx gave up on (deadline or client gone) before their answer.",
    ),
    (
        "worker_exits",
        "Pool workers that exited, died or were killed.",
    ),
    ("respawns", "Pool workers forked to replace one."),
    (
        "recycles",
        "Of the worker exits: retired on max_requests or max_rss.",
    ),
    (
        "tasks_submitted",
        "Fan-out tasks queued for the pool's workers.",
    ),
    (
        "tasks_completed",
        "Fan-out tasks answered by the worker that ran them.",
    ),
    (
        "tasks_failed",
        "Fan-out tasks whose worker died or was stopped.",
    ),
    ("tasks_inline", "Fan-out tasks their caller ran itself."),
    (
        "log_lines_dropped",
        "Lines of the workers' stdout and stderr dropped by log_rate.",
    ),
];

/// A label value as the exposition format writes it: `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: integers as they are, others in Rust's shortest round-trip form (`+Inf` as
/// Prometheus spells it).
fn number(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// One metric family: its `# HELP` and `# TYPE` lines, then `samples` (each a line without the
/// family's name: labels and value), all together as the text format requires.
fn family(o: &mut String, name: &str, kind: &str, help: &str, samples: &[String]) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    for s in samples {
        let _ = writeln!(o, "{name}{s}");
    }
}

/// The pools in Prometheus's text exposition format (version 0.0.4): every family with its
/// help and type, counters ending in `_total`, and the two time histograms, pool-wide (read from
/// the region, so every nginx worker's scrape gives the same numbers).
fn prometheus(pools: &[(String, Option<PoolStatus>)]) -> String {
    let mut o = String::new();
    let attached: Vec<(String, &PoolStatus)> = pools
        .iter()
        .filter_map(|(n, s)| s.as_ref().map(|s| (label(n), s)))
        .collect();
    let per_pool = |f: &dyn Fn(&PoolStatus) -> String| -> Vec<String> {
        attached
            .iter()
            .map(|(n, s)| format!("{{pool=\"{n}\"}} {}", f(s)))
            .collect()
    };
    let up: Vec<String> = pools
        .iter()
        .map(|(n, s)| format!("{{pool=\"{}\"}} {}", label(n), u8::from(s.is_some())))
        .collect();
    family(
        &mut o,
        "ngx_pool_attached",
        "gauge",
        "Whether this nginx worker is attached to the pool's poold (1) or not (0).",
        &up,
    );
    family(
        &mut o,
        "ngx_pool_workers",
        "gauge",
        "Pool workers running.",
        &per_pool(&|s| s.workers.len().to_string()),
    );
    family(
        &mut o,
        "ngx_pool_workers_busy",
        "gauge",
        "Pool workers running a request or a task now.",
        &per_pool(&|s| {
            s.workers
                .iter()
                .filter(|w| w.busy_ms.is_some() || w.state == "task")
                .count()
                .to_string()
        }),
    );
    family(
        &mut o,
        "ngx_pool_queue_depth",
        "gauge",
        "Requests waiting in the pool's queue.",
        &per_pool(&|s| s.queue_depth.to_string()),
    );
    family(
        &mut o,
        "ngx_pool_slots",
        "gauge",
        "Request slots of the pool (its queue's bound).",
        &per_pool(&|s| s.slots_total.to_string()),
    );
    family(
        &mut o,
        "ngx_pool_slots_in_use",
        "gauge",
        "Request slots in use (queued, running or being answered).",
        &per_pool(&|s| s.slots_in_use.to_string()),
    );
    family(
        &mut o,
        "ngx_pool_chunks",
        "gauge",
        "Chunks of the pool's arena (bodies in transit).",
        &per_pool(&|s| s.chunks_total.to_string()),
    );
    family(
        &mut o,
        "ngx_pool_chunks_in_use",
        "gauge",
        "Chunks of the arena in use.",
        &per_pool(&|s| s.chunks_in_use.to_string()),
    );
    let rss: Vec<String> = attached
        .iter()
        .flat_map(|(n, s)| {
            s.workers.iter().filter_map(move |w| {
                rss_kib(w.pid).map(|k| format!("{{pool=\"{n}\",pid=\"{}\"}} {}", w.pid, k * 1024))
            })
        })
        .collect();
    family(
        &mut o,
        "ngx_pool_worker_rss_bytes",
        "gauge",
        "Resident memory of each pool worker.",
        &rss,
    );
    for (key, help) in COUNTER_HELP {
        let samples = per_pool(&|s| {
            s.counters
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0, |(_, v)| *v)
                .to_string()
        });
        family(
            &mut o,
            &format!("ngx_pool_{key}_total"),
            "counter",
            help,
            &samples,
        );
    }
    for (name, help, pick) in [
        (
            "ngx_pool_queue_seconds",
            "How long requests waited in the pool's queue, from nginx queueing one to a worker taking it.",
            (|s: &PoolStatus| &s.queue_time) as fn(&PoolStatus) -> &HistogramStatus,
        ),
        (
            "ngx_pool_run_seconds",
            "How long requests ran in a pool worker, from taking one to its answer handed over or failed.",
            |s: &PoolStatus| &s.run_time,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} histogram");
        for (n, s) in &attached {
            let h = pick(s);
            for (le, c) in &h.buckets {
                let _ = writeln!(o, "{name}_bucket{{pool=\"{n}\",le=\"{}\"}} {c}", number(*le));
            }
            let _ = writeln!(o, "{name}_sum{{pool=\"{n}\"}} {}", number(h.sum_seconds));
            let _ = writeln!(o, "{name}_count{{pool=\"{n}\"}} {}", h.count);
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
        Some("prometheus") => (
            prometheus(&pools()),
            b"text/plain; version=0.0.4; charset=utf-8",
        ),
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
