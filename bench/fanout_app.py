"""The seed's pattern for scripts/bench --fanout: a Flask view that maps a CPU-bound
pure-Python kernel over 8 items, four ways (see scripts/bench_fanout.py)."""

import multiprocessing
import os

from flask import Flask, jsonify

import ngx_pool

app = Flask(__name__)
ITEMS = 8
N = int(os.environ.get("KERNEL_N", "300000"))


def kernel(x):
    total = 0
    for i in range(N):
        total += (i * x) % 7
    return total


@app.route("/alone")
def alone():
    # The yardstick: this process runs a request's items one after the other (seconds taken).
    import time
    start = time.perf_counter()
    for x in range(ITEMS):
        kernel(x)
    return jsonify(time.perf_counter() - start)


@app.route("/spawn")
def spawn():
    # (a) the seed's code under Gunicorn, with the spawn start method: a new Pool per request.
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        return jsonify(pool.map(kernel, range(ITEMS)))


_module_pool = None


@app.route("/module")
def module():
    # (b) a Pool created once per Gunicorn worker and reused.
    global _module_pool
    if _module_pool is None:
        _module_pool = multiprocessing.get_context("spawn").Pool(4)
    return jsonify(_module_pool.map(kernel, range(ITEMS)))


_dirty_threads = None


@app.route("/dirty")
def dirty():
    # (c) Gunicorn's Dirty Arbiters: each item an execute() on the dirty workers. The client is
    # blocking and one call at a time per connection, so the items go out from 4 threads (one
    # client each, as get_dirty_client() keeps one per thread), like a Pool(4).
    global _dirty_threads
    from concurrent.futures import ThreadPoolExecutor
    from gunicorn.dirty import get_dirty_client

    if _dirty_threads is None:
        _dirty_threads = ThreadPoolExecutor(4)

    def call(x):
        return get_dirty_client(timeout=120).execute("fanout_dirty:KernelApp", "kernel", x)

    return jsonify(list(_dirty_threads.map(call, range(ITEMS))))


@app.route("/ngx")
def ngx():
    # (d) the same code with `from ngx_pool import Pool`.
    with ngx_pool.Pool(4) as pool:
        return jsonify(pool.map(kernel, range(ITEMS)))
