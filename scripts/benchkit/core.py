"""The main comparison of `scripts/bench`: ngx-pool against `return 200` (the ceiling),
`proxy_pass` to a native keep-alive backend, Gunicorn and uWSGI (Flask) on hello, then buffering,
a CPU-bound view and large bodies, all behind one nginx, rounds interleaved, medians reported.
"""
import os
import statistics
import subprocess
import sys
import time

from .common import NPROC, ROOT, TARGET, free_port, log, nginx_binary, tree_size, wrk
from .report import Report


def nginx_conf(prefix, port, ports, cpu_rounds, uwsgi_port):
    w = NPROC
    uwsgi = ""
    if uwsgi_port:
        uwsgi = f"""
        location /uwsgi/ {{
            rewrite ^/uwsgi(/.*)$ $1 break;
            uwsgi_param REQUEST_METHOD $request_method; uwsgi_param QUERY_STRING $query_string;
            uwsgi_param REQUEST_URI $request_uri; uwsgi_param PATH_INFO $uri;
            uwsgi_param SERVER_PROTOCOL $server_protocol; uwsgi_param SERVER_NAME $server_name;
            uwsgi_param SERVER_PORT $server_port; uwsgi_param REMOTE_ADDR $remote_addr;
            uwsgi_param CONTENT_TYPE $content_type; uwsgi_param CONTENT_LENGTH $content_length;
            uwsgi_pass 127.0.0.1:{uwsgi_port};
        }}"""
    return f"""
daemon off;
worker_processes {w};
error_log {prefix}/logs/error.log notice;
pid {prefix}/logs/nginx.pid;
load_module {TARGET}/release/libngx_pool_module.so;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    pool hello handler=builtin:hello workers={w};
    pool rhello handler=dylib:{TARGET}/release/libngx_pool_example_handler.so workers={w};
    pool echo  handler=builtin:echo  workers={w};
    pool cpu1  handler=builtin:cpu   workers=1 queue=4096 timeout=10m;
    pool cpuN  handler=builtin:cpu   workers={w} queue=4096 timeout=10m;
    pool big   handler=builtin:stream workers=1 timeout=10m;
    pool sink  handler=builtin:echo  workers=1 timeout=10m;
    pool mib   handler=builtin:stream workers={w} timeout=10m;
    client_max_body_size 2g;
    upstream native {{ server 127.0.0.1:{ports['native']}; keepalive 64; }}
    upstream gunicorn {{ server 127.0.0.1:{ports['gunicorn']}; }}
    upstream gunicorn_mp {{ server 127.0.0.1:{ports['gunicorn_mp']}; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /return200 {{ return 200 "hello"; }}
        location = /pool/hello {{ pool_pass hello; }}
        location = /pool/rhello {{ pool_pass rhello; }}
        location = /pool/echo  {{ pool_pass echo; }}
        location = /pool/cpu1  {{ pool_pass cpu1; }}
        location = /pool/cpuN  {{ pool_pass cpuN; }}
        location = /pool/big   {{ pool_pass big; }}
        location = /pool/sink  {{ pool_pass sink; }}
        location = /pool/mib   {{ pool_pass mib; }}
        location = /pool/mib_off {{ pool_pass mib; pool_buffering off; }}
        location = /pool/hello_off {{ pool_pass hello; pool_buffering off; }}
        location /static_mib/ {{ alias {prefix}/html/; }}
        location /proxied/ {{ proxy_pass http://127.0.0.1:{port}/static_mib/; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        location = /static/big.bin {{ root {prefix}/html; rewrite ^ /big.bin break; }}
        location = /discard {{ return 204; }}
        location /native/ {{
            proxy_pass http://native/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location /gunicorn/ {{ proxy_pass http://gunicorn/; proxy_read_timeout 600s; }}
        location /gunicorn_mp/ {{ proxy_pass http://gunicorn_mp/; proxy_read_timeout 600s; }}{uwsgi}
    }}
}}
"""


def run(bench):
    """Runs the comparison; returns its report."""
    quick, procs, prefix, venv = bench.quick, bench.procs, bench.prefix, bench.venv
    secs = 1 if quick else 5
    rounds = 1 if quick else 3
    concs = [32] if quick else [1, 32, 256]
    report = Report()
    ports = {"native": free_port(), "gunicorn": free_port(), "gunicorn_mp": free_port()}
    roots = {}
    roots["native"] = procs.start([str(TARGET / "release/native-backend"), f"127.0.0.1:{ports['native']}", str(NPROC)],
                                  "native-backend", ports["native"]).pid
    gworkers = 2 * NPROC + 1
    roots["gunicorn"] = procs.start(
        [str(venv / "bin/gunicorn"), "-w", str(gworkers), "-b", f"127.0.0.1:{ports['gunicorn']}",
         "--timeout", "600", "--chdir", str(ROOT / "bench"), "app:app"], "gunicorn", ports["gunicorn"]).pid
    # The multiprocessing.Pool-per-request pattern gets a Gunicorn of its own: forking inside
    # a worker can wedge it, and must not take the other targets down with it. Gunicorn's own
    # --timeout then kills and replaces wedged workers, as in production.
    roots["gunicorn_mp"] = procs.start(
        [str(venv / "bin/gunicorn"), "-w", str(gworkers), "-b", f"127.0.0.1:{ports['gunicorn_mp']}",
         "--timeout", "30", "--chdir", str(ROOT / "bench"), "app:app"], "gunicorn", ports["gunicorn_mp"]).pid
    uwsgi_port = None
    if (venv / "bin/uwsgi").exists():
        uwsgi_port = free_port()
        roots["uwsgi"] = procs.start(
            [str(venv / "bin/uwsgi"), "--socket", f"127.0.0.1:{uwsgi_port}", "--processes", str(gworkers),
             "--master", "--chdir", str(ROOT / "bench"), "--module", "app:application", "--disable-logging",
             "--die-on-term"], "uwsgi", uwsgi_port).pid
    port = free_port()
    # The 1 MiB file proxy_pass serves in the buffering comparison.
    (prefix / "html").mkdir(exist_ok=True)
    (prefix / "html/mib.bin").write_bytes(os.urandom(1 << 20))
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port, ports, 0, uwsgi_port))
    ng = procs.start([str(nginx_binary()), "-p", str(prefix), "-c", str(conf)], "nginx", port)
    # Wait until every nginx worker attached to every pool (8 pools).
    deadline = time.time() + 30
    while (prefix / "logs/error.log").read_text().count("attached to") < 8 * NPROC:
        if time.time() > deadline:
            sys.exit("bench: nginx workers did not attach to the pools:\n" + (prefix / "logs/error.log").read_text())
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    nginx_root = ng.pid

    def poold_of(pool):
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if f"--name\0{pool}\0" in open(f"/proc/{d}/cmdline").read() and \
                            int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == nginx_root:
                        return int(d)
                except (OSError, ValueError):
                    pass
        return None

    def nginx_only():
        # The master and its workers, without the poolds it started.
        return tree_size(nginx_root) - sum(tree_size(p) for p in poolds.values() if p)

    poolds = {name: poold_of(name) for name in ("hello", "rhello", "echo", "cpu1", "cpuN", "big", "sink", "mib")}

    def with_pool(name):
        return lambda: nginx_only() + tree_size(poolds[name])

    def with_backend(name):
        return lambda: nginx_only() + tree_size(roots[name])

    targets = [
        ("return 200", "/return200", nginx_only),
        ("pool_pass hello", "/pool/hello", with_pool("hello")),
        ("pool_pass dylib hello (Rust SDK)", "/pool/rhello", with_pool("rhello")),
        ("pool_pass echo", "/pool/echo", with_pool("echo")),
        ("proxy_pass native", "/native/hello", with_backend("native")),
        (f"gunicorn ({gworkers} sync) flask", "/gunicorn/hello", with_backend("gunicorn")),
    ]
    if uwsgi_port:
        targets.append((f"uwsgi ({gworkers}) flask", "/uwsgi/hello", with_backend("uwsgi")))
    for name, path, _ in targets:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", base + path], capture_output=True, text=True).stdout
        if out != "200":
            sys.exit(f"bench: {name} answers {out} at {path}")

    results = {}
    for conc in concs:
        for r in range(rounds):
            for name, path, count_roots in targets:
                log(f"c={conc} round {r + 1}/{rounds}: {name}")
                results.setdefault((conc, name), []).append(wrk(base + path, conc, secs, count_roots))

    def med(xs, key):
        vals = [x[key] for x in xs]
        return statistics.median(vals)

    report.heading(f"scripts/bench{' --quick' if quick else ''}", 1)
    report.text(f"{NPROC} CPUs, nginx worker_processes {NPROC}, pools of {NPROC} workers, "
                f"wrk {secs}s per run, {rounds} interleaved round(s), medians.")
    for conc in concs:
        ceiling = med(results[(conc, 'return 200')], "rps")
        native = med(results[(conc, 'proxy_pass native')], "rps")
        report.heading(f"hello, concurrency {conc}")
        rows = []
        for name, _, _ in targets:
            xs = results[(conc, name)]
            rps = med(xs, "rps")
            rows.append([name, rps, med(xs, "p50"), med(xs, "p99"), sum(x["errors"] for x in xs),
                         max(x["procs"] for x in xs), rps / ceiling, rps / native])
        report.table([("target", ""), ("req/s", ".0f"), ("p50 ms", ".2f"), ("p99 ms", ".2f"),
                      ("errors", ""), ("processes", ""), ("× return 200", ".2f"),
                      ("× proxy_pass native", ".2f")], rows)
        builtin = med(results[(conc, 'pool_pass hello')], "rps")
        dylib = med(results[(conc, 'pool_pass dylib hello (Rust SDK)')], "rps")
        report.text(f"Handler library through dlopen against the built-in (both on the ABI): "
                      f"{dylib / builtin:.3f}× (goal ≥ 0.95×).")

    # Buffering (pool_buffering on, the default, against off = streaming from the arena),
    # beside proxy_pass (buffered by nginx) of a 1 MiB file nginx serves itself.
    mib = 1 << 20
    bconc = 8
    btargets = [
        ("hello", "on", "/pool/hello"),
        ("hello", "off", "/pool/hello_off"),
        ("1 MiB", "on", f"/pool/mib?bytes={mib}"),
        ("1 MiB", "off", f"/pool/mib_off?bytes={mib}"),
        ("1 MiB streamed (16 KiB writes, chunked)", "on", f"/pool/mib?bytes={mib}&every=16384&chunked=1"),
        ("1 MiB streamed (16 KiB writes, chunked)", "off", f"/pool/mib_off?bytes={mib}&every=16384&chunked=1"),
        ("1 MiB", "proxy_pass", "/proxied/mib.bin"),
    ]
    bres = {}
    for r in range(rounds):
        for what, mode, path in btargets:
            log(f"buffering round {r + 1}/{rounds}: {what}, {mode}")
            bres.setdefault((what, mode), []).append(wrk(base + path, bconc, secs, with_pool("mib")))
    report.heading(f"Buffering: pool_buffering on (default) and off, concurrency {bconc}")
    rows = []
    for what, mode, _ in btargets:
        xs = bres[(what, mode)]
        rps = med(xs, "rps")
        off = med(bres[(what, "off")], "rps") if (what, "off") in bres else float("nan")
        label = f"{what}, {mode}" if mode == "proxy_pass" else f"{what}, buffering {mode}"
        rows.append([label, rps, med(xs, "p50"), med(xs, "p99"), sum(x["errors"] for x in xs), rps / off])
    report.table([("target", ""), ("req/s", ".0f"), ("p50 ms", ".2f"), ("p99 ms", ".2f"), ("errors", ""),
                  ("× buffering off", ".2f")], rows)
    on_mib = med(bres[("1 MiB", "on")], "rps") / med(bres[("1 MiB", "off")], "rps")
    report.text(f"Buffering on the 1 MiB view costs {max(0.0, 1 - on_mib) * 100:.0f}% against streaming "
                  f"({on_mib:.2f}×; goal ≥ 0.90×). proxy_pass reads a file nginx serves itself, so it "
                  "bounds what buffering through nginx costs, not a like-for-like backend.")

    # CPU-bound: size the kernel to ~20 ms on one pool worker (kept-alive connection, the
    # cost of a 1-round request subtracted).
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port)

    def timed(rounds, times=5):
        best = float("inf")
        for _ in range(times):
            t = time.perf_counter()
            conn.request("GET", f"/pool/cpu1?n={rounds}")
            conn.getresponse().read()
            best = min(best, time.perf_counter() - t)
        return best

    empty = timed(1)
    n = 100_000
    per_round = max((timed(n) - empty) / n, 1e-9)
    n = max(1000, int(0.020 / per_round))
    conn.close()
    cconc = 4 * NPROC
    csecs = 2 if quick else 10
    cpu_targets = [
        ("pool, 1 worker", f"/pool/cpu1?n={n}", with_pool("cpu1")),
        (f"pool, {NPROC} workers", f"/pool/cpuN?n={n}", with_pool("cpuN")),
        (f"gunicorn ({gworkers} sync), kernel in Python", f"/gunicorn/cpu?n={n}", with_backend("gunicorn")),
        (f"gunicorn ({gworkers} sync), multiprocessing.Pool({NPROC}) per request",
         f"/gunicorn_mp/mp?n={n}&procs={NPROC}", with_backend("gunicorn_mp")),
    ]
    cres = {}
    for r in range(1 if quick else 3):
        for name, path, count_roots in cpu_targets:
            log(f"cpu round {r + 1}: {name}")
            cres.setdefault(name, []).append(wrk(base + path, cconc, csecs, count_roots))
    one = statistics.median(x["rps"] for x in cres["pool, 1 worker"])
    report.heading(f"CPU-bound: {n} rounds of SHA-256 chaining (≈ 20 ms in Rust), concurrency {cconc}")
    rows = []
    for name, _, _ in cpu_targets:
        xs = cres[name]
        rps = statistics.median(x["rps"] for x in xs)
        rows.append([name, rps, med(xs, "p50"), med(xs, "p99"), sum(x["errors"] for x in xs),
                     max(x["procs"] for x in xs), rps / one])
    report.table([("target", ""), ("req/s", ".1f"), ("p50 ms", ".1f"), ("p99 ms", ".1f"), ("errors", ""),
                  ("processes", ""), ("× pool, 1 worker", ".2f")], rows)
    scaling = statistics.median(x["rps"] for x in cres[f"pool, {NPROC} workers"]) / one
    report.text(f"Scaling from 1 pool worker to {NPROC}: {scaling:.2f}× (goal ≥ {0.9 * NPROC:.1f}×).")
    report.text(f"One round of the kernel costs {per_round * 1e9:.0f} ns in a pool worker here.")
    report.text("Processes: nginx's master and workers, plus the target's own tree (the pool's poold and "
                  "workers, or the proxied server's processes), peak during the run.")

    # Large bodies: a streamed download from a pool worker against nginx sending a static file
    # of the same size from the page cache; an upload hashed by a pool worker against nginx
    # reading and discarding it.
    big = (16 if quick else 256) << 20
    (prefix / "html").mkdir(exist_ok=True)
    with open(prefix / "html/big.bin", "wb") as f:
        for _ in range(big >> 20):
            f.write(os.urandom(1 << 20))
    upload = prefix / "upload.bin"
    with open(upload, "wb") as f:
        for _ in range((big // 4) >> 20):
            f.write(os.urandom(1 << 20))

    def curl(args):
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"] + args,
                             capture_output=True, text=True).stdout.split()
        if out[0] not in ("200", "204"):
            sys.exit(f"bench: {args} answered {out[0]}")
        return float(out[1])

    large = [
        ("download: static file", big, ["%s/static/big.bin" % base]),
        ("download: pool_pass builtin:stream", big, [f"{base}/pool/big?bytes={big}"]),
        ("upload: return 204 (nginx reads, discards)", big // 4,
         ["--data-binary", f"@{upload}", "-H", "Expect:", f"{base}/discard"]),
        ("upload: pool_pass builtin:echo (hashes it)", big // 4,
         ["--data-binary", f"@{upload}", "-H", "Expect:", f"{base}/pool/sink"]),
    ]
    lres = {}
    for r in range(rounds):
        for name, size, cargs in large:
            log(f"large bodies round {r + 1}: {name}")
            lres.setdefault(name, []).append(size / curl(cargs) / 1e6)
    report.heading(f"Large bodies: {big >> 20} MiB down, {big >> 22} MiB up, one request at a time")
    rows = []
    for i, (name, _, _) in enumerate(large):
        mbs = statistics.median(lres[name])
        alone = statistics.median(lres[large[i - i % 2][0]])
        rows.append([name, mbs, mbs / alone])
    report.table([("target", ""), ("MB/s", ".0f"), ("× nginx alone", ".2f")], rows)
    return report
