"""The Python side of scripts/bench: the Flask app that Gunicorn and uWSGI serve.

/hello  -> "hello"
/cpu    -> the SHA-256 chaining kernel of poold's builtin:cpu, n rounds (?n=N)
/mp     -> the same work through a multiprocessing.Pool opened inside the request, the pattern
           ngx-pool replaces (?n=N&procs=P)
"""
import hashlib
import multiprocessing

from flask import Flask, request

app = Flask(__name__)
application = app


def kernel(n):
    state = hashlib.sha256(b"").digest()
    for _ in range(n):
        state = hashlib.sha256(state).digest()
    return state


@app.route("/hello")
def hello():
    return "hello"


@app.route("/cpu")
def cpu():
    n = int(request.args.get("n", 1000))
    return {"rounds": n, "digest": kernel(n).hex()}


@app.route("/mp")
def mp():
    n = int(request.args.get("n", 1000))
    procs = int(request.args.get("procs", 2))
    parts = [n // procs] * procs
    with multiprocessing.Pool(procs) as pool:
        digests = pool.map(kernel, parts)
    return {"rounds": n, "digests": [d.hex() for d in digests]}
