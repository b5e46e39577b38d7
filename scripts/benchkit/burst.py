"""The burst part of scripts/bench (`scripts/bench --burst`): the latency of the requests of a
sudden burst against a fixed pool and against a pool of dynamic size (workers=MIN-MAX) that
has shrunk to MIN, behind the same nginx. Each request sleeps 50 ms in the handler
(builtin:sleep); a burst is 16 requests at once; rounds are interleaved, the dynamic pool idle
(back at MIN) before each of its bursts.
"""
import http.client
import statistics
import threading
import time
from pathlib import Path

from .report import Report

ROOT = Path(__file__).resolve().parent.parent.parent
TARGET = ROOT / "target"
BURST = 16


def one(port, path, out, i):
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    out[i] = (time.perf_counter() - t, r.status)


def burst(port, path):
    out = [None] * BURST
    ts = [threading.Thread(target=one, args=(port, path, out, i)) for i in range(BURST)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def run(h):
    log, procs, quick, prefix = h.log, h.procs, h.quick, h.prefix
    P = max(2, h.nproc * 2)
    port = h.free_port()
    conf = prefix / "burst-nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
error_log {prefix}/logs/burst-error.log info;
pid {prefix}/logs/burst-nginx.pid;
load_module {TARGET}/release/libngx_pool_module.so;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    pool fixed handler=builtin:sleep workers={P} queue=256;
    pool dynamic handler=builtin:sleep workers=1-{P} idle_timeout=1s queue=256;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location /fixed {{ pool_pass fixed; }}
        location /dynamic {{ pool_pass dynamic; }}
        location = /status {{ pool_status; }}
    }}
}}
""")
    procs.start([str(h.nginx_binary()), "-p", str(prefix), "-c", str(conf)], "nginx (burst)", port)
    log_file = prefix / "logs/burst-error.log"
    deadline = time.time() + 30
    while log_file.read_text().count("attached to") < 2:
        if time.time() > deadline:
            raise SystemExit("bench: nginx did not attach to the burst pools")
        time.sleep(0.05)

    def size(pool):
        import json
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/status")
        doc = json.loads(c.getresponse().read())
        return next(len(p["workers"]) for p in doc["pools"] if p["name"] == pool)

    rounds = 1 if quick else 5
    res = {"fixed": [], "dynamic": []}
    for r in range(rounds):
        for name in ("fixed", "dynamic"):
            if name == "dynamic":
                deadline = time.time() + 30
                while size("dynamic") > 1 and time.time() < deadline:
                    time.sleep(0.2)
            log(f"burst round {r + 1}/{rounds}: {name}")
            res[name].extend(burst(port, f"/{name}?ms=50"))
    out = Report()
    out.heading(f"A burst of {BURST} requests of 50 ms: fixed pool of {P} against workers=1-{P} "
                f"back at 1 before each burst, {rounds} rounds")
    rows = []
    for name, xs in res.items():
        lat = sorted(x[0] * 1000 for x in xs)
        bad = sum(1 for x in xs if x[1] != 200)
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
        rows.append([name, statistics.median(lat), p(0.9), lat[-1], bad])
    out.table([("pool", ""), ("p50 ms", ".1f"), ("p90 ms", ".1f"), ("max ms", ".1f"), ("non-200", "")], rows)
    fixed, dyn = (statistics.median(sorted(x[0] for x in res[k])) for k in ("fixed", "dynamic"))
    out.text(f"Median latency of a burst's requests, dynamic against fixed: {dyn / fixed:.2f}×.")
    return out
