"""A Flask app that fans out with ngx_pool (the tests' and the benchmark's seed pattern)."""

import hashlib
import os
import signal
import time

from flask import Flask, jsonify, request

from ngx_pool import Executor, Pool, WorkerLost

app = Flask(__name__)


def some_expensive_function(x):
    # About 1 ms of pure-Python work per unit of WORK.
    total = 0
    for i in range(int(os.environ.get("WORK", "20000"))):
        total += i * i % 7
    return x * x, os.getpid()


@app.route("/seed")
def seed():
    some_data = range(int(request.args.get("n", 8)))
    # The seed's snippet, with only the import changed.
    with Pool(4) as pool:
        results = pool.map(some_expensive_function, some_data)
    return jsonify(sum=sum(r[0] for r in results), workers=len({r[1] for r in results}),
                   caller=os.getpid())


def add(a, b):
    return a + b


def square(x):
    return x * x


def nested(n):
    with Pool(2) as pool:
        return sum(pool.map(square, range(n)))


@app.route("/version")
def version():
    import platform
    import sys

    return jsonify(version=platform.python_version(), executable=sys.executable,
                   pid=os.getpid())


@app.route("/api")
def api():
    out = {}
    calls = []
    with Pool() as pool:
        out["map"] = pool.map(square, range(10), chunksize=3)
        out["imap"] = list(pool.imap(square, range(6)))
        out["imap_unordered"] = sorted(pool.imap_unordered(square, range(6)))
        out["starmap"] = pool.starmap(add, [(1, 2), (3, 4)])
        out["apply"] = pool.apply(add, (5, 6))
        r = pool.apply_async(add, (7, 8), callback=calls.append)
        m = pool.map_async(square, [2, 3], callback=calls.append)
        out["apply_async"] = r.get(timeout=10)
        out["map_async"] = m.get()
        out["ready"] = [r.ready(), r.successful()]
        out["nested"] = pool.map(nested, [3, 4])
        out["empty"] = pool.map(square, [])
        pool.close()
        pool.join()
    out["callbacks"] = sorted(map(str, calls))
    with Executor() as ex:
        futures = [ex.submit(add, i, 1) for i in range(4)]
        out["executor"] = [f.result() for f in futures]
        out["executor_map"] = list(ex.map(square, range(4)))
    return jsonify(out)


def fail(x):
    if x == 3:
        raise ValueError("task %d refused" % x)
    return x


@app.route("/error")
def error():
    with Pool(4) as pool:
        try:
            pool.map(fail, range(6))
        except ValueError as e:
            return jsonify(error=str(e), remote=str(e.__cause__))
    return "no error", 500


def die(x):
    if x == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return x


@app.route("/lost")
def lost():
    with Pool(4) as pool:
        results = [pool.apply_async(die, (x,)) for x in range(4)]
        out = []
        for r in results:
            try:
                out.append(r.get())
            except WorkerLost:
                out.append("lost")
    return jsonify(out)


def nap(s):
    time.sleep(s)
    return os.getpid()


@app.route("/slow")
def slow():
    s = float(request.args.get("s", "5"))
    n = int(request.args.get("n", "4"))
    with Pool(n) as pool:
        return jsonify(pool.map(nap, [s] * n))


@app.route("/leave")
def leave():
    # Queues tasks and answers without waiting for them (a pool left open, as a view that
    # forgets its results does): the next request in this worker must not meet them.
    pool = Pool(4)
    for _ in range(int(request.args.get("n", "4"))):
        pool.apply_async(nap, (float(request.args.get("s", "0.3")),))
    return jsonify(caller=os.getpid())


def big(mib):
    return bytes(range(256)) * (4096 * mib)


@app.route("/big")
def big_result():
    mib = int(request.args.get("mib", "100"))
    with Pool(1) as pool:
        data = pool.apply(big, (mib,))
    return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.route("/mp-checks")
def mp_checks():
    # multiprocessing.Pool's documented behaviour (tests/python/apps/mpcheck.py): the failures.
    import mpcheck

    return jsonify(mpcheck.checks())


def spin(n):
    # CLOCK_MONOTONIC is the machine's: the spans of tasks in different processes compare.
    start = time.monotonic()
    total = 0
    for i in range(n):
        total += i * i % 7
    return os.getpid(), start, time.monotonic()


@app.route("/threads")
def threads():
    # A map from each of `t` ThreadPoolExecutor threads, against the same work run serially.
    from concurrent.futures import ThreadPoolExecutor

    t, n = int(request.args.get("t", 4)), int(request.args.get("n", 300000))
    t0 = time.monotonic()
    for _ in range(t * 2):
        spin(n)
    serial = time.monotonic() - t0
    with Pool(t) as pool, ThreadPoolExecutor(t) as tpe:
        t0 = time.monotonic()
        futures = [tpe.submit(pool.map, spin, [n, n], 1) for _ in range(t)]
        spans = [s for f in futures for s in f.result()]
        threaded = time.monotonic() - t0
    pids = [p for p, _, _ in spans]
    # The most processes running tasks at the same moment (at some task's start).
    overlap = max(len({p for p, a, b in spans if a <= start < b}) for _, start, _ in spans)
    return jsonify(serial=serial, threaded=threaded, pids=len(set(pids)), tasks=len(pids),
                   caller=os.getpid() in pids, overlap=overlap)
