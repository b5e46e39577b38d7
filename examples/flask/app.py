"""The demo's Flask app (scripts/run serves it at /flask/): an ordinary Flask app; its one
mention of ngx-pool is the import of `Pool` in /fanout (the seed's `multiprocessing.Pool`
snippet with only its import changed). nginx.conf runs it with

    pool flask handler=wsgi:app:app venv=/path/to/venv chdir=/path/to/examples/flask workers=2;
    location /flask/ { pool_param SCRIPT_NAME /flask; pool_pass flask; }
"""
import os

from flask import Flask, jsonify, request, url_for
from ngx_pool import Pool

app = Flask(__name__)


@app.get("/")
def index():
    return (
        "<h1>Flask in the pool</h1>"
        f"<p>Served by pool worker {os.getpid()}.</p>"
        f"<ul><li><a href='{url_for('hello', name='you')}'>hello</a></li>"
        f"<li><a href='{url_for('primes', n=20000)}'>primes below 20000</a> (CPU work)</li>"
        f"<li><a href='{url_for('fanout', n=8)}'>fan-out</a> (a Pool.map over the pool's workers)"
        "</li></ul>"
    )


@app.get("/hello/<name>")
def hello(name):
    return jsonify(hello=name, worker=os.getpid(), script_name=request.script_root)


@app.get("/primes")
def primes():
    n = min(int(request.args.get("n", "10000")), 2_000_000)
    sieve = bytearray([1]) * n
    sieve[:2] = b"\0\0"
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return jsonify(below=n, count=sum(sieve), worker=os.getpid())


def some_expensive_function(x):
    # About 10 ms of pure Python.
    total = 0
    for i in range(200_000):
        total += i * i % 7
    return x * x, os.getpid()


@app.get("/fanout")
def fanout():
    some_data = range(min(int(request.args.get("n", "8")), 64))
    # The seed's snippet with only its import changed: the tasks run on this pool's other
    # workers (and on this one while it waits); no process is created. Under `flask run` the
    # same code is a real multiprocessing.Pool.
    with Pool(4) as pool:
        results = pool.map(some_expensive_function, some_data)
    return jsonify(
        sum=sum(r[0] for r in results),
        caller=os.getpid(),
        workers=sorted({r[1] for r in results}),
    )
