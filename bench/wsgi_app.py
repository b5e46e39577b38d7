"""The Flask app of the WSGI benchmark (scripts/bench --wsgi), the same for every server.

/hello -> "hello"            /json -> a small JSON document
/mib   -> 1 MiB of bytes      /cpu   -> about 10 ms of pure-Python work
"""
import time

from flask import Flask, jsonify

app = Flask(__name__)
application = app
MIB = b"x" * (1 << 20)


@app.get("/hello")
def hello():
    return "hello"


@app.get("/json")
def as_json():
    return jsonify(id=42, name="widget", tags=["a", "b", "c"], price=9.99, stock={"eu": 3, "us": 7})


@app.get("/mib")
def mib():
    return MIB, 200, {"Content-Type": "application/octet-stream"}


@app.get("/cpu")
def cpu():
    # Pure-Python work for ~10 ms: the same on every server, so only the overhead differs.
    deadline = time.perf_counter() + 0.010
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return jsonify(loops=n)
