"""WebSocket client scenarios for the tests, with the `websockets` library (sync client).

    python wsclient.py SCENARIO URL [ARGS...]

Prints one JSON object with what the scenario saw; exits 0 unless the library itself failed in
a way the scenario did not expect. The Rust tests run it against nginx (pool_pass) and uvicorn
and compare or check what it printed.
"""

import json
import os
import sys
import time

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


def closed(ws):
    """The close codes and reasons both sides sent (None where no close frame came)."""
    rcvd = ws.protocol.close_rcvd
    sent = ws.protocol.close_sent
    return {
        "rcvd_code": rcvd.code if rcvd else None,
        "rcvd_reason": rcvd.reason if rcvd else None,
        "sent_code": sent.code if sent else None,
    }


def echo(url, count="3"):
    out = {"texts": [], "binaries": []}
    with connect(url, open_timeout=10, close_timeout=5) as ws:
        for i in range(int(count)):
            ws.send(f"hello {i} ✓")
            out["texts"].append(ws.recv(timeout=10))
            ws.send(bytes([i, 0, 255, i]))
            out["binaries"].append(list(ws.recv(timeout=10)))
        # The library checked Sec-WebSocket-Accept against its key (it differs per connection).
        out["response_headers"] = {k.lower(): v.lower() for k, v in ws.response.headers.raw_items() if k.lower() in ("upgrade", "connection")}
        out["status"] = ws.response.status_code
    out.update(closed(ws))
    return out


def big(url, size="1048576"):
    size = int(size)
    payload = bytes((i * 7) % 251 for i in range(size))
    text = "é" * (size // 2)
    with connect(url, open_timeout=10, close_timeout=5, max_size=4 * size) as ws:
        ws.send(payload)
        got = ws.recv(timeout=30)
        ws.send(text)
        got_text = ws.recv(timeout=30)
    return {"binary_ok": got == payload, "binary_len": len(got), "text_ok": got_text == text}


def room(url):
    """Two clients in one room: each message reaches both."""
    with connect(url, open_timeout=10) as a, connect(url, open_timeout=10) as b:
        # Both are in the room once each has seen a message of its own come back.
        a.send("ping-a")
        first_a = a.recv(timeout=10)
        b.recv(timeout=10)
        b.send("from b")
        got_a = a.recv(timeout=10)
        got_b = b.recv(timeout=10)
    return {"first_a": first_a.split(": ", 1)[1], "a": got_a.split(": ", 1)[1], "b": got_b.split(": ", 1)[1]}


def subprotocol(url):
    with connect(url, open_timeout=10, subprotocols=["chat.v1", "chat.v2"]) as ws:
        data = json.loads(ws.recv(timeout=10))
        chosen = ws.subprotocol
        try:
            ws.recv(timeout=10)
        except ConnectionClosed:
            pass
    data["chosen"] = chosen
    data.update(closed(ws))
    return data


def handshake(url):
    """A handshake the server refuses: its HTTP status, headers and body."""
    try:
        with connect(url, open_timeout=10):
            return {"opened": True}
    except InvalidStatus as e:
        r = e.response
        return {
            "opened": False,
            "status": r.status_code,
            "body": r.body.decode("utf-8", "replace"),
            "x_why": r.headers.get("X-Why"),
        }


def until_closed(url, *messages):
    """Receives (sending `messages` first) until the server closes; the close codes."""
    got = []
    with connect(url, open_timeout=10, close_timeout=5) as ws:
        for m in messages:
            ws.send(m)
        try:
            while True:
                got.append(ws.recv(timeout=30))
        except ConnectionClosed:
            pass
    out = {"received": got}
    out.update(closed(ws))
    return out


def client_close(url, code="4005"):
    """The client closes with `code`: what the server answered."""
    with connect(url, open_timeout=10, close_timeout=5) as ws:
        ws.send("x")
        ws.recv(timeout=10)
        ws.close(code=int(code), reason="client leaves")
    return closed(ws)


def hold(url, ready_file):
    """Opens, writes the server's first message (its pid) to `ready_file`, and waits for the
    server to close (a reload, a retirement)."""
    got = []
    started = time.monotonic()
    with connect(url, open_timeout=10, close_timeout=5) as ws:
        pid = ws.recv(timeout=10)
        with open(ready_file + ".tmp", "w") as f:
            f.write(pid)
        os.rename(ready_file + ".tmp", ready_file)
        try:
            while True:
                got.append(ws.recv(timeout=60))
        except ConnectionClosed:
            pass
    out = {"pid": pid, "received": got, "held_s": round(time.monotonic() - started, 1)}
    out.update(closed(ws))
    return out


def rtt(url, count="2000", size="32"):
    """Echo round trips, one at a time: p50 and p99 in microseconds."""
    msg = "x" * int(size)
    times = []
    with connect(url, open_timeout=10) as ws:
        for _ in range(50):
            ws.send(msg)
            ws.recv(timeout=10)
        for _ in range(int(count)):
            t = time.perf_counter_ns()
            ws.send(msg)
            ws.recv(timeout=10)
            times.append((time.perf_counter_ns() - t) / 1000)
    times.sort()
    return {"p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * 0.99)], "count": len(times)}


SCENARIOS = {f.__name__: f for f in (echo, big, room, subprotocol, handshake, until_closed, client_close, hold, rtt)}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](*sys.argv[2:])), flush=True)
