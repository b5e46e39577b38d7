//! `pool_status?format=prometheus` as the exposition format defines it: checked by Prometheus's
//! own `promtool check metrics`, and scraped by a real Prometheus server (both from Debian's
//! `prometheus` package, which `scripts/setup --test` unpacks into target/tools) that answers a
//! `histogram_quantile` query over the test's traffic through its HTTP API.

use ngx_pool_tests::http::request;
use ngx_pool_tests::load::Load;
use ngx_pool_tests::{free_port, procs, repo_dir, temp_prefix, Conf, Nginx, READY_TIMEOUT};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The PromQL expressions of the Grafana dashboard (packaging/grafana/ngx-pool.json), with its
/// variables given values: the pools of these tests, a one-minute rate interval.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo_dir().join("packaging/grafana/ngx-pool.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            out.push(
                expr.replace("$pool", "app|other")
                    .replace("$__rate_interval", "1m"),
            );
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

/// The metric families a PromQL expression names (`_bucket`, `_sum` and `_count` are a
/// histogram's).
fn families_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ngx_pool_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name)
            .to_string();
        out.push(family);
    }
    out
}

/// Prometheus's binaries, if scripts/setup unpacked them.
fn tool(name: &str) -> Option<PathBuf> {
    let p = repo_dir()
        .join("target/tools/prometheus/usr/bin")
        .join(name);
    p.exists().then_some(p)
}

fn start() -> Nginx {
    Nginx::start(
        Conf::new(
            "    pool app handler=builtin:sleep workers=2;\n    pool other handler=builtin:hello workers=1;",
            "    location /app { pool_pass app; }\n    location /other { pool_pass other; }\n    \
             location = /status { pool_status; }",
        )
        .workers(1),
    )
}

/// The run's traffic: 40 requests of 30 ms on `app`, four at a time (so some wait in its queue
/// of two workers), and 20 on `other`.
fn traffic(ng: &Nginx) {
    let outcomes = Load::get(ng.port, "/app?ms=30", 4).run_for(Duration::from_millis(400));
    assert!(outcomes.iter().all(|o| o.status() == 200));
    for _ in 0..20 {
        assert_eq!(ng.get("/other").status, 200);
    }
}

#[test]
fn the_exposition_passes_promtool_with_help_type_and_histograms() {
    let Some(promtool) = tool("promtool") else {
        ngx_pool_tests::skip(
            "metrics",
            "no target/tools/prometheus (scripts/setup --test unpacks it)",
        );
        return;
    };
    let ng = start();
    traffic(&ng);
    let r = ng.get("/status?format=prometheus");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    // promtool's linter: families together, HELP and TYPE, counters named _total, histogram
    // buckets ending in +Inf, no duplicate series.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "# TYPE ngx_pool_accepted_total counter",
        "# TYPE ngx_pool_workers gauge",
        "# TYPE ngx_pool_workers_busy gauge",
        "# TYPE ngx_pool_queue_depth gauge",
        "# TYPE ngx_pool_slots_in_use gauge",
        "# TYPE ngx_pool_chunks_in_use gauge",
        "# TYPE ngx_pool_worker_rss_bytes gauge",
        "# TYPE ngx_pool_tasks_submitted_total counter",
        "# TYPE ngx_pool_queue_seconds histogram",
        "# TYPE ngx_pool_run_seconds histogram",
    ] {
        assert!(text.contains(family), "no {family}:\n{text}");
    }
    // The histograms count every request of the pool, whichever nginx worker served it.
    let count = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series}:\n{text}"))
    };
    let app_runs = count("ngx_pool_run_seconds_count{pool=\"app\"}");
    assert!(app_runs >= 4.0, "{text}");
    assert_eq!(
        count("ngx_pool_run_seconds_bucket{pool=\"app\",le=\"+Inf\"}"),
        app_runs
    );
    // 30 ms each: none under 25 ms, all under 50 ms (a loaded machine may add some).
    assert_eq!(
        count("ngx_pool_run_seconds_bucket{pool=\"app\",le=\"0.025\"}"),
        0.0,
        "{text}"
    );
    assert!(count("ngx_pool_run_seconds_sum{pool=\"app\"}") >= 0.03 * app_runs);
    assert_eq!(count("ngx_pool_queue_seconds_count{pool=\"other\"}"), 20.0);
    assert_eq!(count("ngx_pool_run_seconds_count{pool=\"other\"}"), 20.0);
    // Every metric the Grafana dashboard queries is one the endpoint exposes.
    for expr in dashboard_queries() {
        for family in families_in(&expr) {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {family}, which the endpoint does not expose: {expr}"
            );
        }
    }
    // The JSON gives the same distribution, with its median and 99th percentile.
    let run = &ng.pool_status("app")["latency"]["run"];
    assert!(run["count"].as_f64().unwrap() >= app_runs, "{run}");
    let p50 = run["p50_seconds"].as_f64().unwrap();
    assert!((0.025..=0.05).contains(&p50), "{run}");
    ng.finish();
}

/// GET `path` of the Prometheus server on `port`: status and body.
fn api(port: u16, path: &str) -> (u16, serde_json::Value) {
    match request(port, "GET", path, &[], b"") {
        Ok(r) => (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        ),
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// `q` URL-encoded: letters, digits, `_` and `.` as they are, every other byte as `%XX`.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `query`'s single value.
fn query(port: u16, query: &str) -> Option<f64> {
    let (status, v) = api(port, &format!("/api/v1/query?query={}", encode(query)));
    if status != 200 {
        return None;
    }
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

#[test]
fn a_real_prometheus_scrapes_the_pools_and_answers_a_quantile_of_the_run() {
    let Some(prometheus) = tool("prometheus") else {
        ngx_pool_tests::skip(
            "metrics",
            "no target/tools/prometheus (scripts/setup --test unpacks it)",
        );
        return;
    };
    let ng = start();
    traffic(&ng);
    let dir = temp_prefix();
    let port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ngx-pool\n    \
             metrics_path: /status\n    params:\n      format: [prometheus]\n    \
             static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            ng.port
        ),
    )
    .unwrap();
    let server = procs::Owned::spawn(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap()),
    )
    .expect("start prometheus");
    let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    // Ready, then scraped at least once with every series (`up` is 1 after a good scrape).
    let deadline = Instant::now() + READY_TIMEOUT * 2;
    let mut quantile = None;
    while Instant::now() < deadline {
        let up = query(port, "up{job=\"ngx-pool\"}");
        quantile = query(
            port,
            "histogram_quantile(0.5, sum by (le) (ngx_pool_run_seconds_bucket{pool=\"app\"}))",
        );
        if up == Some(1.0) && quantile.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let p50 = quantile.unwrap_or_else(|| panic!("no quantile from prometheus:\n{}", log()));
    // Every request slept 30 ms: the median falls in the 25-50 ms bucket.
    assert!((0.025..=0.05).contains(&p50), "p50 {p50}");
    // Quantiles of both times, per pool: one answer for each of the two pools.
    for family in ["ngx_pool_queue_seconds", "ngx_pool_run_seconds"] {
        let expr = format!("histogram_quantile(0.99, sum by (pool, le) ({family}_bucket))");
        let (status, v) = api(port, &format!("/api/v1/query?query={}", encode(&expr)));
        assert_eq!(status, 200, "{expr}: {v}");
        let mut pools: Vec<&str> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["metric"]["pool"].as_str())
            .collect();
        pools.sort();
        assert_eq!(pools, ["app", "other"], "{expr}: {v}");
    }
    // Every query of the Grafana dashboard is one Prometheus takes and answers.
    for expr in dashboard_queries() {
        let (status, v) = api(port, &format!("/api/v1/query?query={}", encode(&expr)));
        assert_eq!(status, 200, "{expr}: {v}");
        assert_eq!(v["status"], "success", "{expr}: {v}");
    }
    // The scrape itself was clean: no sample Prometheus refused.
    let (_, targets) = api(port, "/api/v1/targets");
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{targets}");
    assert_eq!(target["lastError"], "", "{targets}");
    // Its keep-alive connection to nginx goes with it, before nginx counts its descriptors.
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    ng.finish();
}
