"""The scale-out part of scripts/bench (`scripts/bench --cluster`, as root): one CPU-bound view
through the front nginx of nginx-conf/cluster/ over 1, 2 and 3 hosts, each host a network
namespace made by scripts/cluster with one pool worker pinned to one core (taskset). The
concurrency is the same for every size, enough to keep 3 hosts busy and within one host's
queue; rounds are interleaved (1, 2, 3 hosts, then again) and the median reported.
"""
import http.client
import os
import statistics
import subprocess
import time
from pathlib import Path

from .report import Report

ROOT = Path(__file__).resolve().parent.parent.parent
CLUSTER = ROOT / "scripts/cluster"
NET = 30  # 10.77.30.0/24: apart from the tests' subnets (21-24)
CONCURRENCY = 6  # one host: 1 running + 5 queued, within its queue=8 and queue_timeout=250ms
TARGET_MS = 20.0  # the view's cost in a pool worker


def cores_of(hosts, nproc):
    return [(h - 1) % nproc for h in range(1, hosts + 1)]


def run(h):
    log, quick, prefix, free_port, wrk = h.log, h.quick, h.prefix, h.free_port, h.wrk
    nproc = h.nproc
    out = Report()
    out.heading("Scale-out: one CPU view over 1, 2 and 3 hosts behind a front nginx")
    if os.geteuid() != 0:
        log("cluster: skipped (network namespaces need root)")
        out.text("Skipped: `scripts/cluster` needs root (network namespaces).")
        return out
    secs = 1 if quick else 10
    rounds = 1 if quick else 3
    port = free_port()
    where = prefix / "cluster"

    def cluster(*args, check=True):
        return subprocess.run([str(CLUSTER), *args, "--net", str(NET), "--port", str(port),
                               "--prefix", str(where)], check=check, stdout=subprocess.DEVNULL)

    def up(hosts):
        cluster("down", check=False)
        cluster("up", "--hosts", str(hosts), "--pin", "--cpu-workers", "1")

    def timed(n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            c.request("GET", f"/cpu?n={n}")
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise SystemExit(f"bench: the cluster's /cpu answered {r.status}")
            best = min(best, time.perf_counter() - t)
        c.close()
        return best

    res = {}
    try:
        up(1)
        probe = 20000
        n = max(1000, int(probe * TARGET_MS / 1000 / timed(probe)))
        log(f"cluster: /cpu?n={n} costs {timed(n) * 1000:.1f} ms through the front")
        for r in range(rounds):
            for hosts in (1, 2, 3):
                log(f"cluster round {r + 1}: {hosts} host(s)")
                if r or hosts > 1:
                    up(hosts)
                res.setdefault(hosts, []).append(
                    wrk(f"http://127.0.0.1:{port}/cpu?n={n}", CONCURRENCY, secs, lambda: 0))
    finally:
        cluster("down", check=False)

    one = statistics.median(x["rps"] for x in res[1])
    pins = ", ".join(f"host {i + 1} → core {c}" for i, c in enumerate(cores_of(3, nproc)))
    shared = "" if nproc >= 3 else (f" This machine has {nproc} cores: host 3 shares core "
                                     f"{cores_of(3, nproc)[2]} with host 1, so 3 hosts have "
                                     f"{min(3, nproc)} cores between them.")
    out.text(f"Each host one pool worker (`--cpu-workers 1`), pinned with taskset: {pins}.{shared} "
               f"The front nginx and wrk are not pinned. View: builtin:cpu, about {TARGET_MS:.0f} ms "
               f"per request; concurrency {CONCURRENCY}; {rounds} round(s) of {secs} s, median.")
    rows = []
    for hosts in (1, 2, 3):
        xs = res[hosts]
        rps = statistics.median(x["rps"] for x in xs)
        cores = len(set(cores_of(hosts, nproc)))
        p50 = statistics.median(x["p50"] for x in xs)
        p99 = statistics.median(x["p99"] for x in xs)
        rows.append([hosts, cores, rps, p50, p99, sum(x["errors"] for x in xs), rps / one, rps / one / cores])
    out.table([("hosts", ""), ("cores", ""), ("req/s", ".1f"), ("p50 ms", ".1f"), ("p99 ms", ".1f"),
               ("errors", ""), ("× 1 host", ".2f"), ("× 1 host per core", ".2f")], rows)
    return out
