"""A WSGI app written against PEP 3333 alone, for what Flask would hide: every environ key,
write(), exc_info, close() and wsgi.file_wrapper. `validated` is the same app inside
wsgiref.validate.validator, which checks both sides of every call."""
import json
import os
import sys
import tempfile
from wsgiref.validate import validator

# How many response iterables were closed, per kind (read back through /closed).
closed = {}

# What the fork hooks saw, and who imported the app (read back through /forked).
forked = []
os.register_at_fork(before=lambda: forked.append("before"),
                    after_in_parent=lambda: forked.append("parent"),
                    after_in_child=lambda: forked.append("child"))
imported_as = os.geteuid()


class Body:
    """A response iterable with close(), yielding `chunks` and raising `fail_at` if set."""

    def __init__(self, kind, chunks, fail_at=None):
        self.kind, self.chunks, self.fail_at = kind, chunks, fail_at

    def __iter__(self):
        for i, c in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError(f"failed at chunk {i}")
            yield c

    def close(self):
        closed[self.kind] = closed.get(self.kind, 0) + 1


def environ_json(environ):
    keys = [
        "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
        "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR",
        "REMOTE_PORT", "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
    ]
    out = {k: environ.get(k) for k in keys}
    out["wsgi.version"] = list(environ["wsgi.version"])
    out["http"] = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    out["X_APP"] = environ.get("X_APP")
    return out


def app(environ, start_response):
    path = environ["PATH_INFO"]
    text = [("Content-Type", "text/plain")]
    if path.endswith("/environ"):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "application/json")])
        data = environ_json(environ)
        data["body"] = body.decode("latin-1")
        return [json.dumps(data).encode()]
    if path.endswith("/lines"):
        inp = environ["wsgi.input"]
        first = inp.readline()
        limited = inp.readline(3)
        rest = inp.readlines()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([first.decode(), limited.decode()] + [l.decode() for l in rest]).encode()]
    if path.endswith("/iterate"):
        lines = [l.decode() for l in environ["wsgi.input"]]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(lines).encode()]
    if path.endswith("/write"):
        write = start_response("200 OK", text)
        write(b"written, ")
        return Body("write", [b"then iterated\n"])
    if path.endswith("/exc-info"):
        try:
            raise ValueError("caught by the app")
        except ValueError:
            start_response("503 Service Unavailable", text, sys.exc_info())
        return [b"the app's own error page\n"]
    if path.endswith("/late-exc-info"):
        start_response("200 OK", text)
        def gen():
            yield b"partial"
            try:
                raise ValueError("too late")
            except ValueError:
                start_response("500 Oops", text, sys.exc_info())
        return gen()
    if path.endswith("/raise"):
        raise RuntimeError("raised by the raw app")
    if path.endswith("/fail-midway"):
        start_response("200 OK", text)
        return Body("midway", [b"a" * 100000, b"b", b"c"], fail_at=1)
    if path.endswith("/slow"):
        start_response("200 OK", text)

        class Slow(Body):
            def __iter__(self):
                import time
                for i in range(50):
                    yield b"tick %d\n" % i
                    time.sleep(0.05)

        return Slow("slow", [])
    if path.endswith("/bad-header"):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Evil", "a\r\nSet-Cookie: x=1")])
        return [b"never sent"]
    if path.endswith("/closing"):
        start_response("200 OK", text)
        return Body("closing", [b"one\n", b"two\n"])
    if path.endswith("/forked"):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"hooks": forked, "imported_as": imported_as, "pid": os.getpid()}).encode()]
    if path.endswith("/closed"):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(closed).encode()]
    if path.endswith("/file"):
        size = int(environ.get("QUERY_STRING") or "100000")
        f = tempfile.TemporaryFile()
        f.write(bytes(i % 251 for i in range(size)))
        f.seek(0)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return environ["wsgi.file_wrapper"](f, 32768)
    if path.endswith("/errors"):
        environ["wsgi.errors"].write("a line for error_log\npartial ")
        environ["wsgi.errors"].writelines(["and the rest\n"])
        environ["wsgi.errors"].flush()
        start_response("204 No Content", [])
        return []
    if path.endswith("/latin1"):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Path", environ["PATH_INFO"])])
        return [environ["PATH_INFO"].encode("latin-1")]
    start_response("404 Not Found", text)
    return [b"no such raw view\n"]


validated = validator(app)
