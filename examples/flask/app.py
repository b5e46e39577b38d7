"""The demo's Flask app (scripts/run serves it at /flask/): an ordinary Flask app, nothing in it
knows about ngx-pool. nginx.conf runs it with

    pool flask handler=wsgi:app:app venv=/path/to/venv chdir=/path/to/examples/flask workers=2;
    location /flask/ { pool_param SCRIPT_NAME /flask; pool_pass flask; }
"""
import os

from flask import Flask, jsonify, request, url_for

app = Flask(__name__)


@app.get("/")
def index():
    return (
        "<h1>Flask in the pool</h1>"
        f"<p>Served by pool worker {os.getpid()}.</p>"
        f"<ul><li><a href='{url_for('hello', name='you')}'>hello</a></li>"
        f"<li><a href='{url_for('primes', n=20000)}'>primes below 20000</a> (CPU work)</li></ul>"
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
