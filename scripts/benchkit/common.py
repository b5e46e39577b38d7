"""What every part of the bench shares: the tree's paths, the load tool (wrk), processes started
and always stopped, and the `Bench` every part is given.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TARGET = ROOT / "target"
NPROC = os.cpu_count() or 1


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, proc=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"bench: {what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: {what} did not listen on {port}")


def setup(quick):
    run([str(ROOT / "scripts/setup")])
    if not shutil.which("wrk"):
        sys.exit("bench: wrk not found (scripts/setup installs it as root: apt-get install wrk)")
    run(["cargo", "build", "--release", "--workspace"], cwd=ROOT)
    venv = TARGET / "bench/venv"
    py = venv / "bin/python"
    if not py.exists():
        run([sys.executable, "-m", "venv", str(venv)])
    have = subprocess.run([str(py), "-c", "import flask, gunicorn"], capture_output=True).returncode == 0
    if not have:
        log("installing flask and gunicorn into target/bench/venv")
        run([str(py), "-m", "pip", "install", "-q", "flask", "gunicorn"])
    uwsgi = venv / "bin/uwsgi"
    if not quick and not uwsgi.exists():
        log("installing uwsgi (compiles; skipped from the report if it fails)")
        subprocess.run([str(py), "-m", "pip", "install", "-q", "uwsgi"])
    return venv


def nginx_binary():
    found = sorted(TARGET.glob("release/build/nginx-sys-*/out/objs/nginx"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit("bench: nginx binary not built")
    return found[-1]


class Procs:
    """Processes started by the bench; all killed at the end, whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, what, port=None, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)
        self.procs.append(p)
        if port:
            wait_port(port, what, p)
        return p

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            # And whatever of its session is left, even once its leader has exited: a Gunicorn
            # worker that outlived its master (it ignored SIGTERM for seconds) stayed running,
            # re-parented to init, after the bench.
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass


def tree(pid):
    """The processes of the tree rooted at pid (by parentage, from /proc)."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
                parents[int(d)] = int(stat[stat.rfind(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    seen, todo = {pid}, [pid]
    while todo:
        p = todo.pop()
        for c, pp in parents.items():
            if pp == p and c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def nginx_only(master):
    """nginx's own processes (its master and workers, by the titles nginx gives them), without
    the pools it started: a peer behind the same nginx shares these, not the pools."""
    own = set()
    for p in tree(master):
        try:
            with open(f"/proc/{p}/cmdline") as f:
                if f.read().startswith("nginx:"):
                    own.add(p)
        except OSError:
            pass
    return own


def tree_size(pid):
    """How many processes the tree rooted at pid has."""
    return len(tree(pid))


def cpu_seconds(pids):
    """CPU time (user + system) these processes have spent so far, with the children they have
    reaped. The kernel counts a task's time without the hypervisor's steal (paravirtual time
    accounting), so it is the steadier measure of what a stack costs on a shared machine."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def _busy_jiffies():
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def settle(limit=10.0, quiet=0.1, window=0.25):
    """Waits until the machine is quiet (under `quiet` of its CPU busy over `window` seconds),
    `limit` seconds at most; returns how long it waited. A server that goes on working after
    wrk left (requests it had accepted and queues, which nobody reads any more) would
    otherwise run into the next measurement, at the expense of whichever stack comes next."""
    start = time.monotonic()
    while True:
        a = _busy_jiffies()
        time.sleep(window)
        b = _busy_jiffies()
        if (b[0] - a[0]) <= quiet * max(1, b[1] - a[1]) or time.monotonic() - start >= limit:
            return time.monotonic() - start


def wrk(url, conc, secs, count, cpu_of=None):
    """One closed-loop wrk run, on a quiet machine (`settle`); `count()` is sampled for the
    peak process count meanwhile. With `cpu_of` (the stack's processes), the result also has
    `cpu_ms`: the CPU time they spent per request answered."""
    settle(limit=2.0 if secs <= 1 else 10.0)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], count())
            stop.wait(0.2)

    t = threading.Thread(target=sample)
    t.start()
    cpu_before = cpu_seconds(cpu_of) if cpu_of else 0.0
    out = subprocess.run(
        ["wrk", f"-t{min(2, conc)}", f"-c{conc}", f"-d{secs}s", "--latency", "--timeout", "30s", url],
        capture_output=True, text=True,
    ).stdout
    cpu_used = cpu_seconds(cpu_of) - cpu_before if cpu_of else 0.0
    stop.set()
    t.join()

    def ms(label):
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    done = re.search(r"^\s*(\d+) requests in", out, re.M)
    requests = int(done.group(1)) if done else 0
    result = {"rps": float(rps.group(1)) if rps else 0.0, "p50": ms("50%"), "p99": ms("99%"),
              "errors": errors, "procs": peak[0], "requests": requests}
    if cpu_of:
        result["cpu_ms"] = cpu_used * 1000 / max(requests, 1)
    return result



@dataclass
class Bench:
    """What a part of the bench is given: whether the run is quick, the temporary prefix its
    nginx instances live in, and the processes it starts (stopped at the end, whatever
    happens). The helpers it uses are this module's functions."""

    quick: bool
    prefix: Path
    procs: Procs
    venv: Path
    nproc: int = NPROC

    log = staticmethod(log)
    free_port = staticmethod(free_port)
    wrk = staticmethod(wrk)
    tree = staticmethod(tree)
    tree_size = staticmethod(tree_size)
    nginx_only = staticmethod(nginx_only)
    nginx_binary = staticmethod(nginx_binary)
