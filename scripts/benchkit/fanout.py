"""The fan-out part of scripts/bench (`scripts/bench --fanout`): the seed's pattern, a Flask view
mapping a CPU-bound pure-Python kernel (about 50 ms per item) over 8 items, at c = 4 and 16:

  (a) nginx -> Gunicorn (workers = cores), multiprocessing "spawn" Pool(4) per request
  (b) the same, a module-level Pool(4) created once per Gunicorn worker
  (c) Gunicorn 27 (workers = cores) with its Dirty Arbiters (--dirty-workers = cores), each item
      an execute() from 4 threads of the view (the client is blocking, one call per connection)
  (d) ngx-pool (workers = cores, or FAN_WORKERS=N in the environment), ngx_pool.Pool(4) per request

(c) runs from a venv of its own (target/dirty-env, bench/dirty-requirements.txt): the other
comparisons use the Gunicorn the tests pin. Processes "created" is the growth of the
kernel's last pid (/proc/loadavg) during the run: every process made on the machine, so an
upper bound for the stack's own.
"""
import http.client
import statistics
import threading
import time
from pathlib import Path

from .common import cpu_seconds
from .report import Report

ROOT = Path(__file__).resolve().parent.parent.parent
TARGET = ROOT / "target"
VENV = TARGET / "python-env"
ITEMS = 8
FAN_WORKERS = int(__import__("os").environ.get("FAN_WORKERS", "0"))


def last_pid():
    return int(Path("/proc/loadavg").read_text().split()[-1])


def calibrate():
    """KERNEL_N for a 50 ms item on this machine, and the seconds one request's 8 items take
    run one after the other in one process: the app's own kernel, the venv's Python."""
    import subprocess
    code = ("import os, time\n"
            "import fanout_app as a\n"
            "def t(n):\n"
            "    a.N = n\n"
            "    s = time.perf_counter()\n"
            "    for x in range(a.ITEMS):\n"
            "        a.kernel(x)\n"
            "    return time.perf_counter() - s\n"
            "n = int(200000 * 0.050 * a.ITEMS / min(t(200000) for _ in range(3)))\n"
            "print(n, min(t(n) for _ in range(3)))\n")
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT / "python/ngx-pool"))
    out = subprocess.check_output([str(VENV / "bin/python"), "-c", code], cwd=ROOT / "bench", env=env)
    n, one_request = out.split()
    return int(n), float(one_request)


def load(port, path, conc, secs):
    lat, bad = [], [0]
    stop = time.time() + secs

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.time() < stop:
            t = time.perf_counter()
            try:
                c.request("GET", path)
                r = c.getresponse()
                r.read()
                ok = r.status == 200
            except OSError:
                ok = False
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            if ok:
                lat.append(time.perf_counter() - t)
            else:
                bad[0] += 1

    t0 = time.time()
    ts = [threading.Thread(target=client) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return len(lat) / (time.time() - t0), sorted(lat), bad[0]


def run(h):
    log, procs, quick, prefix, tree = h.log, h.procs, h.quick, h.prefix, h.tree
    cores = h.nproc
    import subprocess
    subprocess.run([str(ROOT / "scripts/python-env")], check=True)  # Flask, Gunicorn
    dirty_venv = TARGET / "dirty-env"
    subprocess.run([str(ROOT / "scripts/python-env"), str(dirty_venv),
                    str(ROOT / "bench/dirty-requirements.txt")], check=True)
    n, one_request = calibrate()
    item_s = one_request / ITEMS
    env = dict(__import__("os").environ, KERNEL_N=str(n),
               PYTHONPATH=str(ROOT / "python/ngx-pool"))
    gport, dport, port = h.free_port(), h.free_port(), h.free_port()
    groot = procs.start([str(VENV / "bin/gunicorn"), "-w", str(cores), "-b", f"127.0.0.1:{gport}",
                         "--timeout", "120", "--chdir", str(ROOT / "bench"), "fanout_app:app"],
                        "gunicorn (fan-out)", gport, env=env).pid
    droot = procs.start([str(dirty_venv / "bin/gunicorn"), "-w", str(cores), "-b", f"127.0.0.1:{dport}",
                         "--timeout", "120", "--chdir", str(ROOT / "bench"), "--no-control-socket",
                         "--dirty-app", "fanout_dirty:KernelApp", "--dirty-workers", str(cores),
                         "--dirty-timeout", "120", "fanout_app:app"],
                        "gunicorn 27 with dirty arbiters (fan-out)", dport, env=env).pid
    conf = prefix / "fanout-nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
error_log {prefix}/logs/fanout-error.log notice;
pid {prefix}/logs/fanout-nginx.pid;
load_module {TARGET}/release/libngx_pool_module.so;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    pool fan handler=wsgi:fanout_app:app venv={VENV} chdir={ROOT / "bench"} workers={FAN_WORKERS or cores} env=KERNEL_N={n} queue=256;
    upstream gunicorn {{ server 127.0.0.1:{gport}; keepalive 32; }}
    upstream dirty {{ server 127.0.0.1:{dport}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location /ngx {{ pool_pass fan; }}
        location = /alone {{ pool_pass fan; }}
        location /dirty {{ proxy_pass http://dirty; proxy_http_version 1.1;
                          proxy_set_header Connection ""; proxy_read_timeout 120s; }}
        location / {{ proxy_pass http://gunicorn; proxy_http_version 1.1;
                     proxy_set_header Connection ""; proxy_read_timeout 120s; }}
    }}
}}
""")
    nroot = procs.start([str(h.nginx_binary()), "-p", str(prefix), "-c", str(conf)], "nginx (fan-out)", port).pid
    log_file = prefix / "logs/fanout-error.log"
    deadline = time.time() + 60
    while log_file.read_text().count("attached to") < 1:
        if time.time() > deadline:
            raise SystemExit("bench: nginx did not attach to the fan-out pool")
        time.sleep(0.05)
    secs = 4 if quick else 10
    targets = [("(a) Gunicorn + spawn Pool(4) per request", "/spawn", groot),
               ("(b) Gunicorn + module-level Pool(4)", "/module", groot),
               ("(c) Gunicorn 27 + Dirty Arbiters", "/dirty", droot),
               ("(d) ngx-pool + ngx_pool.Pool(4)", "/ngx", nroot)]
    for _, path, _ in targets:  # warm-up: imports, the module-level pools
        load(port, path, cores, 1)
    # One pool worker running a request's items alone: the same interpreter as (a)-(c) (the
    # venv's python), so its per-item speed should match theirs.
    def alone(path):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        times = []
        for _ in range(3):
            c.request("GET", path)
            times.append(float(c.getresponse().read()))
        return min(times)
    one_worker = alone("/alone")
    # Interleaved rounds, each starting with another stack: a cell of this pattern moves by
    # 10-20 % from one run to the next on a shared machine, and whoever runs right after
    # another stack's burst pays for its leftovers.
    rounds = 1 if quick else 3
    cells = {}
    for rnd in range(rounds):
        for conc in (4, 16):
            k = rnd % len(targets)
            for name, path, root in targets[k:] + targets[:k]:
                log(f"fan-out round {rnd + 1}/{rounds}: {name} c={conc}")
                before = last_pid()
                stack = tree(root) | tree(nroot)
                cpu_before, t0 = cpu_seconds(stack), time.time()
                r, lat, bad = load(port, path, conc, secs)
                stack |= tree(root) | tree(nroot)
                busy = (cpu_seconds(stack) - cpu_before) / (time.time() - t0)
                created = last_pid() - before
                alive = len(tree(root)) + (2 if root != nroot else 0)  # + nginx master and worker
                p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0
                cells.setdefault((name, conc), []).append(
                    {"rps": r, "p50": p(0.5), "p99": p(0.99), "busy": busy, "alive": alive,
                     "created": created, "bad": bad})
    rows, rps = [], {}
    for conc in (4, 16):
        for name, _, _ in targets:
            xs = cells[(name, conc)]
            med = lambda key: statistics.median(x[key] for x in xs)
            rps[(name[:3], conc)] = med("rps")
            rows.append([name, conc, med("rps"), med("p50"), med("p99"), med("busy"),
                         max(x["alive"] for x in xs), max(x["created"] for x in xs),
                         sum(x["bad"] for x in xs)])
    ideal = cores / one_request
    out = Report()
    out.heading(f"The seed's pattern: 8 items of {item_s * 1000:.0f} ms of pure Python per request, "
                f"{cores} cores, {secs} s per cell x {rounds} interleaved rounds, medians")
    out.table([("stack", ""), ("c", ""), ("req/s", ".2f"), ("p50 ms", ".0f"), ("p99 ms", ".0f"),
               ("cores busy", ".2f"), ("processes alive", ""), ("processes created", ""), ("failed", "")], rows)
    ideal_worker = cores / one_worker
    out.text(f"One process running a request's 8 items alone: {1 / one_request:.2f} req/s "
               f"(× cores = {ideal:.2f}) in Debian's python3, as (a)-(c) run them; "
               f"{1 / one_worker:.2f} req/s (× cores = {ideal_worker:.2f}) in a pool worker (the "
               f"venv's python too), {one_worker / one_request:.2f}× the time.")
    for conc in (4, 16):
        d = rps[("(d)", conc)]
        out.text(f"c={conc}: (d) = {d / max(rps[('(a)', conc)], 1e-9):.1f}× (a), "
                   f"{d / max(rps[('(b)', conc)], 1e-9):.2f}× (b), "
                   f"{d / max(rps[('(c)', conc)], 1e-9):.2f}× (c), {d / ideal:.2f}× cores × one python3 process, "
                   f"{d / ideal_worker:.2f}× cores × one pool worker.")
    out.text("Processes alive: the whole stack at the end of a cell (nginx included), the most over "
               "the rounds; created: the most in a cell; failed: over all rounds. Cores busy: the CPU "
               "time the stack (nginx included) used during the cell per second of it.")
    return out
