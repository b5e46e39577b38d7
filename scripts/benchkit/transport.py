"""The transport part of scripts/bench (`scripts/bench --transport`): what `pool_pass` costs over
nginx answering by itself, with nothing else in the way. One nginx worker and one pool worker
(builtin:hello), wrk at c=32; `return 200` and `pool_pass hello` take turns over the rounds. Two
ratios: throughput (`pool_pass` ÷ `return 200`, goal ≥ 0.8) and server CPU per request (nginx's
worker, poold and the pool worker, from /proc, ÷ nginx's worker alone for `return 200`, goal
≤ 1.5).
"""
import statistics
import time

from .common import TARGET
from .report import Report

CONC = 32


def run(h):
    log, procs, quick, prefix, tree = h.log, h.procs, h.quick, h.prefix, h.tree
    port = h.free_port()
    conf = prefix / "transport-nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
error_log {prefix}/logs/transport-error.log notice;
pid {prefix}/logs/transport-nginx.pid;
load_module {TARGET}/release/libngx_pool_module.so;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    pool hello handler=builtin:hello workers=1;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location = /return200 {{ return 200 "hello"; }}
        location = /pool {{ pool_pass hello; }}
    }}
}}
""")
    master = procs.start([str(h.nginx_binary()), "-p", str(prefix), "-c", str(conf)], "nginx (transport)", port).pid
    log_file = prefix / "logs/transport-error.log"
    deadline = time.time() + 30
    while log_file.read_text().count("attached to") < 1:
        if time.time() > deadline:
            raise SystemExit("bench: nginx did not attach to the transport pool")
        time.sleep(0.05)
    server = tree(master)  # the master, its worker, the watchdog, its spare, poold, the pool worker
    secs = 1 if quick else 5
    rounds = 1 if quick else 5
    targets = [("return 200", "/return200"), ("pool_pass hello", "/pool")]
    res = {}
    for r in range(rounds):
        for name, path in (targets if r % 2 == 0 else targets[::-1]):
            log(f"transport round {r + 1}/{rounds}: {name}")
            x = h.wrk(f"http://127.0.0.1:{port}{path}", CONC, secs, lambda: 0, cpu_of=server)
            x["cpu_us"] = x["cpu_ms"] * 1000
            res.setdefault(name, []).append(x)

    def med(name, key):
        return statistics.median(x[key] for x in res[name])

    ceiling, ceiling_cpu = med("return 200", "rps"), med("return 200", "cpu_us")
    out = Report()
    out.heading(f"Transport: 1 nginx worker, 1 pool worker, hello, c={CONC}, {secs}s x {rounds} "
                "interleaved rounds, medians")
    rows = []
    for name, _ in targets:
        rps, cpu = med(name, "rps"), med(name, "cpu_us")
        rows.append([name, rps, med(name, "p50"), med(name, "p99"), sum(x["errors"] for x in res[name]),
                     cpu, rps / ceiling, cpu / ceiling_cpu])
    out.table([("target", ""), ("req/s", ".0f"), ("p50 ms", ".2f"), ("p99 ms", ".2f"), ("errors", ""),
               ("server CPU µs/request", ".1f"), ("× return 200", ".2f"), ("CPU × return 200", ".2f")], rows)
    out.text("Server CPU: the nginx master and worker, the pool's watchdog, poold and its worker (their "
             "user and system time from /proc over each run) per request served; wrk's own is not counted. "
             "Goals: ≥ 0.80 × return 200 in throughput, ≤ 1.5 × its CPU per request.")
    return out
