"""The ASGI part of scripts/bench (`scripts/bench --asgi`): one FastAPI app (bench/asgi_app.py)
under ngx-pool and under the servers users run it with, behind the same nginx, loaded by the
same wrk, two Python processes each, all on Debian's python3 (venvs of it).

  ngx-pool           pool_pass, handler=asgi:asgi_app:app, workers=2 (concurrency 100 each)
  uvicorn            proxy_pass (keepalive upstream), --workers 2
  gunicorn asgi      proxy_pass (keepalive upstream), Gunicorn 27's native --worker-class asgi, -w 2
                     (from target/dirty-env, the fan-out comparison's venv of Gunicorn 27)
  granian            proxy_pass (keepalive upstream), --interface asgi --workers 2

Views: /hello and /json at c=32, /io (awaits 10 ms) at c=256, /cpu (~10 ms of pure Python) at
c=32. Memory: the PSS of each whole stack after its runs. WebSocket: the round trip of a 32-byte
text message on one connection (tests/python/wsclient.py's `rtt`, the `websockets` client, 2000
round trips a run), through pool_pass and through proxy_pass with the Upgrade headers (as an
operator sets it up); p50 and p99.
"""
import json
import statistics
import subprocess

from .report import Report
from .wsgi import ROOT, TARGET, VENV, check_answers, ensure_peers, pss_kib, start_nginx

VIEWS = [("/hello", 32), ("/json", 32), ("/io", 256), ("/cpu", 32)]
P = 2


def run(h):
    log, procs, quick, tree = h.log, h.procs, h.quick, h.tree
    ensure_peers(log, quick)
    dirty = TARGET / "dirty-env"
    subprocess.run([str(ROOT / "scripts/python-env"), str(dirty), str(ROOT / "bench/dirty-requirements.txt")],
                   check=True)
    bench_dir = ROOT / "bench"
    ports = {k: h.free_port() for k in ("uv", "gasgi", "granian")}
    roots = {}
    py = str(VENV / "bin/python")
    roots["uvicorn"] = procs.start([py, "-m", "uvicorn", "--workers", str(P), "--host", "127.0.0.1", "--port",
                                    str(ports["uv"]), "--app-dir", str(bench_dir), "--log-level", "warning",
                                    "--no-access-log", "asgi_app:app"], "uvicorn", ports["uv"]).pid
    roots["gunicorn asgi"] = procs.start([str(dirty / "bin/gunicorn"), "--worker-class", "asgi", "-w", str(P),
                                          "-b", f"127.0.0.1:{ports['gasgi']}", "--chdir", str(bench_dir),
                                          "--log-level", "warning", "asgi_app:app"],
                                         "gunicorn asgi", ports["gasgi"]).pid
    proxies = {"uv": ports["uv"], "gasgi": ports["gasgi"]}
    targets = [("ngx-pool", "/pool"), ("uvicorn", "/uv"), ("gunicorn asgi", "/gasgi")]
    # Granian is installed by a full run (ensure_peers); --quick uses it where it is there.
    if (VENV / "bin/granian").exists():
        roots["granian"] = procs.start([str(VENV / "bin/granian"), "--interface", "asgi", "--workers", str(P),
                                        "--host", "127.0.0.1", "--port", str(ports["granian"]),
                                        "--working-dir", str(bench_dir), "asgi_app:app"],
                                       "granian", ports["granian"]).pid
        proxies["granian"] = ports["granian"]
        targets.append(("granian", "/granian"))
    else:
        log("SKIPPED granian in --asgi: not installed (a full run installs it)")
    # WebSockets to the peers: proxy_pass with the Upgrade headers, on a path of their own.
    ws_peers = "".join(f"\n        location /{k}-ws/ {{ proxy_pass http://up_{k}/; proxy_http_version 1.1; "
                       "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; }"
                       for k in proxies)
    port, ng = start_nginx(h, "asgi", P, f"handler=asgi:asgi_app:app venv={VENV} chdir={bench_dir} "
                           f"workers={P} timeout=120s", proxies, extra=ws_peers, keepalive=True)
    base = f"http://127.0.0.1:{port}"
    nginx_pid = ng.pid

    def stack(name):
        if name == "ngx-pool":
            return tree(nginx_pid)
        return h.nginx_only(nginx_pid) | tree(roots[name])

    check_answers(base, targets, [v for v, _ in VIEWS])
    secs = 1 if quick else 5
    rounds = 1 if quick else 3
    res = {}
    for r in range(rounds):
        for v, conc in VIEWS:
            k = r % len(targets)
            for name, pre in targets[k:] + targets[:k]:
                log(f"asgi round {r + 1}/{rounds}: {name} {v} c={conc}")
                res.setdefault((name, v), []).append(h.wrk(base + pre + v, conc, secs, lambda: 0))
    ws = {}
    for r in range(rounds):
        k = r % len(targets)
        for name, pre in targets[k:] + targets[:k]:
            path = "/pool/ws" if name == "ngx-pool" else f"{pre}-ws/ws"
            log(f"asgi round {r + 1}/{rounds}: {name} WebSocket echo")
            got = _rtt(f"ws://127.0.0.1:{port}{path}", 300 if quick else 2000)
            if got is not None:
                ws.setdefault(name, []).append(got)
    mem = {name: (pss_kib(stack(name)), len(stack(name))) for name, _ in targets}

    def med(name, v, key="rps"):
        return statistics.median(x[key] for x in res[(name, v)])

    out = Report()
    out.heading(f"ASGI: one FastAPI app, {P} Python processes each, Debian's python3, wrk {secs}s x {rounds} "
                "interleaved rounds, medians")
    columns = ([("view", "")] + [(t[0], ".0f") for t in targets]
               + [(("ngx-pool × " if i == 0 else "× ") + t[0], ".2f") for i, t in enumerate(targets[1:])])
    rows = []
    for v, conc in VIEWS:
        ours = med("ngx-pool", v)
        rows.append([f"{v} c={conc} req/s"] + [med(t[0], v) for t in targets]
                    + [ours / med(t[0], v) for t in targets[1:]])
    for v, conc in VIEWS:
        rows.append([f"{v} c={conc} p99 ms"] + [f"{med(t[0], v, 'p99'):.1f}" for t in targets]
                    + [""] * (len(targets) - 1))
    out.table(columns, rows)
    errors = {t[0]: sum(x["errors"] for v, _ in VIEWS for x in res[(t[0], v)]) for t in targets}
    out.text("Errors (non-2xx, socket): " + ", ".join(f"{k} {e}" for k, e in errors.items()) + ".")
    out.text("Memory, PSS of the whole stack (nginx and the server's every process) after its runs:")
    uv = mem["uvicorn"][0]
    out.table([("stack", ""), ("processes", ""), ("PSS MiB", ".1f"), ("× uvicorn", ".2f")],
              [[name, n, kib / 1024, kib / uv] for name, (kib, n) in mem.items()])
    out.text("WebSocket echo, one connection, 32-byte text messages, round trip in µs (medians of the runs):")
    ws_rows = []
    ours = statistics.median(x["p50_us"] for x in ws["ngx-pool"]) if "ngx-pool" in ws else None
    for name, _ in targets:
        if name not in ws:
            ws_rows.append([name, "failed", "", ""])
            continue
        p50 = statistics.median(x["p50_us"] for x in ws[name])
        p99 = statistics.median(x["p99_us"] for x in ws[name])
        ws_rows.append([name, f"{p50:.0f}", f"{p99:.0f}", f"{p50 / ours:.2f}" if ours else ""])
    out.table([("server", ""), ("p50 µs", ""), ("p99 µs", ""), ("p50 ÷ ngx-pool's", "")], ws_rows)
    return out


def _rtt(url, count):
    """The `rtt` scenario of tests/python/wsclient.py against `url`; None if it failed."""
    out = subprocess.run([str(VENV / "bin/python"), str(ROOT / "tests/python/wsclient.py"), "rtt", url, str(count)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)

