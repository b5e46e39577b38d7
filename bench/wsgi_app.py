"""The Flask app of the WSGI benchmark (scripts/bench --wsgi), the same for every server.

/hello -> "hello"            /json -> a small JSON document
/mib   -> 1 MiB of bytes      /cpu   -> a fixed amount of pure-Python work (~10 ms here)
"""

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
    # The same work on every server (a count, not a time: threads sharing the GIL must not
    # finish more requests by waiting together), so only the overhead differs.
    x = 0
    for i in range(80_000):
        x += i * i
    return jsonify(sum=x)
