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


@app.route("/ngx")
def ngx():
    # (d) the same code with `from ngx_pool import Pool`.
    with ngx_pool.Pool(4) as pool:
        return jsonify(pool.map(kernel, range(ITEMS)))
