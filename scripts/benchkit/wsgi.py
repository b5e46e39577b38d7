"""The WSGI part of scripts/bench (`scripts/bench --wsgi`): one Flask app (bench/wsgi_app.py)
under ngx-pool and under the servers it replaces, behind the same nginx, loaded by the same wrk,
each with the same number of Python processes.

  ngx-pool           pool_pass, handler=wsgi:wsgi_app:app, workers=P
  gunicorn sync      proxy_pass, -w P
  gunicorn gthread   proxy_pass, -w P --threads 4
  uwsgi              uwsgi_pass, --processes P
  granian            proxy_pass, --interface wsgi --workers P

Memory: the sum of the PSS (/proc/PID/smaps_rollup) of every process of each stack (nginx and
the server's whole tree), after its runs, against Gunicorn with --preload.

A second Python: the CPU view once more under another CPython (3.12, from scripts/python-matrix's
target/py-matrix/3.12, Gunicorn installed there), ngx-pool against Gunicorn sync on that same
interpreter; a SKIPPED line where the machine has no such Python.
"""
import os
import statistics
import subprocess
import time
from pathlib import Path

from .report import Report

ROOT = Path(__file__).resolve().parent.parent.parent
SECOND_PYTHON = "3.12"
GUNICORN = "gunicorn==23.0.0"  # as tests/python/requirements.txt
TARGET = ROOT / "target"
VENV = TARGET / "python-env"
VIEWS = ["/hello", "/json", "/mib", "/cpu"]


def ensure_peers(log, quick):
    """uWSGI and Granian beside Flask and Gunicorn in the test virtualenv (Debian's Python);
    not installed by --quick (which uses the peers already there)."""
    subprocess.run([str(ROOT / "scripts/python-env")], check=True)
    if quick:
        return
    py = str(VENV / "bin/python")
    for pkg, mod in (("uwsgi", "uwsgidecorators"), ("granian", "granian")):
        if not (VENV / "bin" / pkg).exists():
            log(f"installing {pkg} into {VENV} (uwsgi compiles; a peer that fails is left out)")
            # Compiled against Debian's Python, never a wheel cached from another python3 on
            # PATH (a uWSGI linked to another libpython fails to import the stdlib).
            env = dict(os.environ, PATH="/usr/bin:/bin")
            subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir",
                            pkg], env=env)


def pss_kib(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def start_nginx(h, name, P, pool, proxies, extra="", keepalive=False):
    """nginx with `pool flask ...` (`pool`: its parameters) at /pool/ and a proxy_pass location
    per peer (`proxies`: path prefix -> port; with `keepalive`, through an upstream that keeps
    64 connections open, as an operator sets it up for an HTTP/1.1 server), waiting until every
    worker attached; its port and process."""
    prefix, port = h.prefix, h.free_port()
    conf, log_file = prefix / f"{name}-nginx.conf", prefix / f"logs/{name}-error.log"
    if keepalive:
        upstreams = "".join(f"\n    upstream up_{k} {{ server 127.0.0.1:{v}; keepalive 64; }}" for k, v in proxies.items())
        peers = "".join(f"\n        location /{k}/ {{ proxy_pass http://up_{k}/; proxy_http_version 1.1; "
                        'proxy_set_header Connection ""; }' for k in proxies)
    else:
        upstreams = ""
        peers = "".join(f"\n        location /{k}/ {{ proxy_pass http://127.0.0.1:{v}/; }}" for k, v in proxies.items())
    conf.write_text(f"""
daemon off;
worker_processes {P};
error_log {log_file} notice;
pid {prefix}/logs/{name}-nginx.pid;
load_module {TARGET}/release/libngx_pool_module.so;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body-{name};
    pool flask {pool};{upstreams}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /pool/ {{ rewrite ^/pool(/.*)$ $1 break; pool_pass flask; }}{peers}{extra}
    }}
}}
""")
    ng = h.procs.start([str(h.nginx_binary()), "-p", str(prefix), "-c", str(conf)], f"nginx ({name})", port)
    deadline = time.time() + 30
    while log_file.read_text().count("attached to") < P:
        if time.time() > deadline:
            raise SystemExit(f"bench: nginx ({name}) did not attach to its pool:\n" + log_file.read_text())
        time.sleep(0.05)
    return port, ng


def check_answers(base, targets, views):
    """Every target answers 200 on every view before anything is measured."""
    for name, pre in targets:
        for v in views:
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", base + pre + v],
                                 capture_output=True, text=True).stdout
            if out != "200":
                raise SystemExit(f"bench: {name} answers {out} at {pre}{v}")


def run(h):
    """`h` is scripts/bench's toolbox: procs, wrk, free_port, nginx_binary, tree, log, quick,
    prefix."""
    log, procs, quick, tree = h.log, h.procs, h.quick, h.tree
    ensure_peers(log, quick)
    P = h.nproc
    bench_dir = ROOT / "bench"
    ports = {k: h.free_port() for k in ("gsync", "gpre", "gthread", "uwsgi", "granian")}
    gunicorn = str(VENV / "bin/gunicorn")
    roots = {}
    common = ["--chdir", str(bench_dir), "--timeout", "120", "--log-level", "warning"]
    roots["gunicorn sync"] = procs.start([gunicorn, "-w", str(P), "-b", f"127.0.0.1:{ports['gsync']}"] + common
                                         + ["wsgi_app:app"], "gunicorn", ports["gsync"]).pid
    roots["gunicorn sync --preload"] = procs.start([gunicorn, "-w", str(P), "--preload", "-b",
                                                    f"127.0.0.1:{ports['gpre']}"] + common + ["wsgi_app:app"],
                                                   "gunicorn", ports["gpre"]).pid
    roots["gunicorn gthread"] = procs.start([gunicorn, "-w", str(P), "-k", "gthread", "--threads", "4", "-b",
                                             f"127.0.0.1:{ports['gthread']}"] + common + ["wsgi_app:app"],
                                            "gunicorn", ports["gthread"]).pid
    have_uwsgi = (VENV / "bin/uwsgi").exists()
    if have_uwsgi:
        roots["uwsgi"] = procs.start([str(VENV / "bin/uwsgi"), "--socket", f"127.0.0.1:{ports['uwsgi']}",
                                      "--processes", str(P), "--master", "--virtualenv", str(VENV), "--chdir", str(bench_dir), "--module",
                                      "wsgi_app:application", "--disable-logging", "--die-on-term"],
                                     "uwsgi", ports["uwsgi"]).pid
    have_granian = (VENV / "bin/granian").exists()
    if have_granian:
        roots["granian"] = procs.start([str(VENV / "bin/granian"), "--interface", "wsgi", "--workers", str(P),
                                        "--host", "127.0.0.1", "--port", str(ports["granian"]),
                                        "--working-dir", str(bench_dir), "wsgi_app:app"],
                                       "granian", ports["granian"]).pid
    uwsgi_loc = ""
    if have_uwsgi:
        uwsgi_loc = f"""
        location /uwsgi/ {{
            rewrite ^/uwsgi(/.*)$ $1 break;
            uwsgi_param REQUEST_METHOD $request_method; uwsgi_param QUERY_STRING $query_string;
            uwsgi_param REQUEST_URI $request_uri; uwsgi_param PATH_INFO $uri;
            uwsgi_param SERVER_PROTOCOL $server_protocol; uwsgi_param SERVER_NAME $server_name;
            uwsgi_param SERVER_PORT $server_port; uwsgi_param REMOTE_ADDR $remote_addr;
            uwsgi_param CONTENT_TYPE $content_type; uwsgi_param CONTENT_LENGTH $content_length;
            uwsgi_pass 127.0.0.1:{ports['uwsgi']};
        }}"""
    proxies = {k: ports[k] for k in ("gsync", "gpre", "gthread", "granian")}
    port, ng = start_nginx(h, "wsgi", P, f"handler=wsgi:wsgi_app:app venv={VENV} chdir={bench_dir} "
                           f"workers={P} timeout=120s", proxies, uwsgi_loc)
    base = f"http://127.0.0.1:{port}"
    nginx_pid = ng.pid

    targets = [("ngx-pool", "/pool"), ("gunicorn sync", "/gsync"), ("gunicorn gthread", "/gthread")]
    if have_uwsgi:
        targets.append(("uwsgi", "/uwsgi"))
    if have_granian:
        targets.append(("granian", "/granian"))

    def stack(name):
        # ngx-pool's stack is nginx with the poolds it started; a peer's, nginx and its tree.
        if name == "ngx-pool":
            return tree(nginx_pid)
        return h.nginx_only(nginx_pid) | tree(roots[name])

    check_answers(base, targets, VIEWS)
    secs = 1 if quick else 5
    rounds = 1 if quick else 3
    # The CPU view varies most from cell to cell (docs/benchmarks.md, "The CPU view and
    # Python's allocator": the hypervisor's steal, and which pymalloc pool a worker's loop
    # happens to allocate from), and what the servers cost is a few percent of it: more rounds.
    cpu_rounds = 1 if quick else 7
    view_rounds = {v: cpu_rounds if v == "/cpu" else rounds for v in VIEWS}
    conc = 32
    res = {}
    for r in range(max(view_rounds.values())):
        for v in VIEWS:
            if r >= view_rounds[v]:
                continue
            # Each round starts with another stack, so that none always runs first after a
            # change of view (or always right after the same neighbour).
            k = r % len(targets)
            for name, pre in targets[k:] + targets[:k]:
                log(f"wsgi round {r + 1}/{view_rounds[v]}: {name} {v}")
                res.setdefault((name, v), []).append(
                    h.wrk(base + pre + v, conc, secs, lambda: 0, cpu_of=stack(name)))
    mem = {}
    # --preload is loaded once like the others, so its workers have touched what they use.
    h.wrk(base + "/gpre/json", conc, secs, lambda: 0)
    # Read idle: every stack quiet for 7 s at least (a pool worker gives the arena's written
    # pages and its free heap back after 5 s without work; the others keep what they hold).
    time.sleep(2)
    for name in [t[0] for t in targets] + ["gunicorn sync --preload"]:
        pids = stack(name)
        mem[name] = (pss_kib(pids), len(pids))

    def med(name, v, key="rps"):
        return statistics.median(x[key] for x in res[(name, v)])

    out = Report()
    out.heading(f"WSGI: one Flask app, {P} Python processes each, wrk c={conc}, {secs}s x {rounds} "
                f"interleaved rounds (the CPU view {cpu_rounds}), medians")
    # One row per view and measure: req/s (with ngx-pool's ratio to each peer) and p99 ms.
    columns = ([("view", "")] + [(t[0], ".0f") for t in targets]
               + [(("ngx-pool × " if i == 0 else "× ") + t[0], ".2f") for i, t in enumerate(targets[1:])])
    rows = []
    for v in VIEWS:
        ours = med("ngx-pool", v)
        rows.append([f"{v} req/s"] + [med(t[0], v) for t in targets]
                    + [ours / med(t[0], v) for t in targets[1:]])
    for v in VIEWS:
        # CPU per request: the peer's over ngx-pool's in the ratio columns (above 1: ngx-pool
        # spends less), so that every ratio reads the same way.
        ours = med("ngx-pool", v, "cpu_ms")
        rows.append([f"{v} CPU ms/req"] + [f"{med(t[0], v, 'cpu_ms'):.3f}" for t in targets]
                    + [med(t[0], v, "cpu_ms") / ours for t in targets[1:]])
    for v in VIEWS:
        rows.append([f"{v} p99 ms"] + [f"{med(t[0], v, 'p99'):.1f}" for t in targets]
                    + [""] * (len(targets) - 1))
    out.table(columns, rows)
    out.text("CPU ms/req: the CPU time the whole stack (nginx and the server's processes) spent "
             "per request answered, without the hypervisor's steal (the kernel leaves it out of a "
             "task's time); its ratios are the peer's over ngx-pool's, so above 1 ngx-pool spends "
             "less. It moves less than req/s from round to round on a shared machine.")
    errors = {t[0]: sum(x["errors"] for v in VIEWS for x in res[(t[0], v)]) for t in targets}
    out.text("Errors (non-2xx, socket): " + ", ".join(f"{k} {e}" for k, e in errors.items()) + ".")
    out.text("Memory, PSS of the whole stack (nginx and the server's every process) after its runs, "
             "idle for 7 s or more:")
    pre = mem["gunicorn sync --preload"][0]
    out.table([("stack", ""), ("processes", ""), ("PSS MiB", ".1f"), ("× gunicorn --preload", ".2f")],
              [[name, n, kib / 1024, kib / pre] for name, (kib, n) in mem.items()])
    out.extend(second_python(h, P, bench_dir, conc, secs, cpu_rounds))
    return out


def second_python(h, P, bench_dir, conc, secs, rounds):
    """The CPU view under another CPython: ngx-pool (a pool in that venv's python) against
    Gunicorn sync from the same venv, behind one nginx, interleaved rounds."""
    log, procs = h.log, h.procs
    venv = TARGET / "py-matrix" / SECOND_PYTHON
    py = venv / "bin/python"
    if not (venv / ".ngx-pool-wheel").exists():
        log(f"SKIPPED the second Python: no {venv} (scripts/python-matrix makes it where CPython "
            f"{SECOND_PYTHON} is installed)")
        out = Report()
        out.text(f"SKIPPED: the CPU view under CPython {SECOND_PYTHON} (not on this machine).")
        return out
    if not (venv / "bin/gunicorn").exists():
        log(f"installing {GUNICORN} into {venv}")
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", GUNICORN],
                       check=True)
    version = subprocess.run([str(py), "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # A pyenv build with a shared libpython finds it through LD_LIBRARY_PATH (its copy's run
    # path names root's home), for the pool's user and Gunicorn alike.
    home = next((line.split("=", 1)[1].strip() for line in (venv / "pyvenv.cfg").read_text().splitlines()
                 if line.startswith("home")), "")
    lib = str(Path(home).parent / "lib") if home else ""
    env = dict(os.environ, LD_LIBRARY_PATH=lib) if lib else None
    gport = h.free_port()
    gunicorn = procs.start([str(venv / "bin/gunicorn"), "-w", str(P), "-b", f"127.0.0.1:{gport}",
                            "--chdir", str(bench_dir), "--timeout", "120", "--log-level", "warning",
                            "wsgi_app:app"], "gunicorn (second Python)", gport, env=env).pid
    pool_env = f" env=LD_LIBRARY_PATH={lib}" if lib else ""
    port, ng = start_nginx(h, "wsgi2", P, f"handler=wsgi:wsgi_app:app venv={venv} chdir={bench_dir} "
                          f"workers={P} timeout=120s{pool_env}", {"gsync": gport})
    base = f"http://127.0.0.1:{port}"
    targets = [("ngx-pool", "/pool"), ("gunicorn sync", "/gsync")]
    check_answers(base, targets, ["/cpu"])

    def stack(name):
        if name == "ngx-pool":
            return h.tree(ng.pid)
        return h.nginx_only(ng.pid) | h.tree(gunicorn)

    res = {}
    for r in range(rounds):
        for name, pre in targets:
            log(f"second Python round {r + 1}/{rounds}: {name} /cpu")
            res.setdefault(name, []).append(
                h.wrk(base + pre + "/cpu", conc, secs, lambda: 0, cpu_of=stack(name)))

    def med(name, key):
        return statistics.median(x[key] for x in res[name])

    ours, theirs = med("ngx-pool", "rps"), med("gunicorn sync", "rps")
    ours_cpu, theirs_cpu = med("ngx-pool", "cpu_ms"), med("gunicorn sync", "cpu_ms")
    out = Report()
    out.heading(f"The CPU view under a second Python: CPython {version} (a venv of scripts/python-matrix), "
                f"both stacks on that interpreter, {P} processes each, wrk c={conc}, {secs}s x {rounds} "
                "rounds, medians")
    out.table([("view", ""), ("ngx-pool", ".0f"), ("gunicorn sync", ".0f"), ("ngx-pool × gunicorn sync", ".2f")],
              [["/cpu req/s", ours, theirs, ours / theirs],
               ["/cpu CPU ms/req", f"{ours_cpu:.3f}", f"{theirs_cpu:.3f}", theirs_cpu / ours_cpu]])
    return out
