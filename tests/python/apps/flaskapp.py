"""The Flask app of the WSGI tests: a few views of each kind a real app has.

Runs unmodified under ngx-pool (handler=wsgi:flaskapp:app) and under Gunicorn (flaskapp:app),
for the differential test.
"""
import hashlib
import logging
import os
import sys
import time

from flask import Flask, Response, jsonify, redirect, request, session, stream_with_context, url_for

app = Flask(__name__)
app.secret_key = "test-only-secret"

# A handler made at import, as Django's LOGGING makes one: with preload=on in the pool manager,
# before any worker exists, holding the sys.stderr of that moment.
_log = logging.getLogger("flaskapp.events")
_log.addHandler(logging.StreamHandler())
_log.setLevel(logging.INFO)
_log.propagate = False

# Grows on /leak: for the max_rss= recycling test.
_hoard = []


@app.get("/")
def index():
    return "hello from flask\n"


@app.get("/json")
def as_json():
    return jsonify(path=request.path, args=request.args.to_dict(), pid_is_int=isinstance(os.getpid(), int))


@app.post("/form")
def form():
    return jsonify(name=request.form.get("name"), tags=request.form.getlist("tag"))


@app.post("/upload")
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(filename=f.filename, size=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.post("/digest")
def digest():
    """Hashes a body of any size as it streams in (constant memory)."""
    h = hashlib.sha256()
    n = 0
    while True:
        block = request.stream.read(1 << 16)
        if not block:
            break
        h.update(block)
        n += len(block)
    return jsonify(size=n, sha256=h.hexdigest())


@app.get("/cookie")
def cookie():
    resp = Response("cookie set\n")
    resp.set_cookie("flavour", "oat", httponly=True)
    return resp


@app.get("/session")
def counter():
    session["n"] = session.get("n", 0) + 1
    return jsonify(n=session["n"])


@app.get("/go")
def go():
    return redirect(url_for("index"))


@app.get("/stream")
def stream():
    count = int(request.args.get("n", "3"))
    pause = float(request.args.get("pause", "0"))

    def gen():
        for i in range(count):
            yield f"tick {i}\n"
            if pause:
                time.sleep(pause)

    # As an event stream behind nginx says: send each piece as it comes (nginx buffers a
    # response by default, ngx-pool's pool_buffering as proxy_buffering).
    return Response(stream_with_context(gen()), mimetype="text/plain",
                    headers={"X-Accel-Buffering": "no"})


@app.get("/big")
def big():
    """A streamed download of any size (constant memory on both sides)."""
    total = int(request.args.get("bytes", "1048576"))
    block = b"x" * (1 << 16)

    def gen():
        left = total
        while left > 0:
            n = min(left, len(block))
            yield block[:n]
            left -= n

    return Response(gen(), mimetype="application/octet-stream", headers={"Content-Length": str(total)})


@app.get("/boom")
def boom():
    raise RuntimeError("boom in a view")


@app.get("/exit")
def do_exit():
    sys.exit(3)


@app.get("/hard-exit")
def hard_exit():
    os._exit(4)


@app.get("/leak")
def leak():
    _hoard.append(bytearray(int(request.args.get("mb", "8")) << 20))
    return jsonify(pid=os.getpid(), held_mb=sum(len(b) for b in _hoard) >> 20)


@app.get("/log")
def logged():
    _log.warning("logging says %s", request.args["m"])
    return str(os.getpid())


@app.get("/print")
def printed():
    print("stdout says", request.args["m"])
    print("stderr says", request.args["m"], file=sys.stderr)
    return "printed\n"


@app.get("/pid")
def pid():
    return str(os.getpid())


@app.get("/sleep")
def sleep():
    time.sleep(float(request.args.get("s", "1")))
    return "slept\n"


@app.get("/cpu")
def cpu():
    """About 10 ms of pure-Python work (the benchmark's CPU view)."""
    deadline = time.perf_counter() + float(request.args.get("ms", "10")) / 1000
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return jsonify(loops=n)


@app.get("/env")
def env():
    return jsonify(
        script_name=request.environ.get("SCRIPT_NAME"),
        path_info=request.environ.get("PATH_INFO"),
        app_mode=os.environ.get("APP_MODE"),
        cwd=os.getcwd(),
        prefix=sys.prefix,
    )
