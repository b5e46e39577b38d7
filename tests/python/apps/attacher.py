"""A hostile local process for tests/tests/peers.rs: the real attach handshake of an nginx worker
(crates/channel/src/handshake.rs) on a pool's socket, without the attachment secret.

As a WSGI app (`attacher:app`), it does it from inside a pool's handler:
  GET /?socket=PATH&version=N  -> JSON {"status": ..., "got_fd": ...}
From the command line, as whatever user runs it:
  attacher.py once PATH VERSION          one handshake; prints the same JSON
  attacher.py hold PATH VERSION N        N handshakes (and N/3 silent connections) held open
                                         until stdin closes; prints how many got a region
"""
import array
import json
import os
import socket
import struct
import sys
from urllib.parse import parse_qs

HELLO = b"NPH1"
SECRET_LEN = 32


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(path)
    return s


def hello(s, version, long=True, secret=bytes(SECRET_LEN)):
    """Says Hello as an nginx worker does, with an eventfd and `secret` (all zero: none; a
    short, older-style Hello without one if not `long`)."""
    frame = HELLO + struct.pack("<IIII", version, os.getpid(), 0, 0)
    if long:
        frame += secret
    efd = os.eventfd(0)
    try:
        s.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [efd]))])
    finally:
        os.close(efd)


def welcome(s):
    """poold's answer: (status, number of descriptors received), or (None, 0) at end of file."""
    fds = array.array("i")
    try:
        msg, anc, _flags, _addr = s.recvmsg(64, socket.CMSG_SPACE(4 * fds.itemsize))
    except (ConnectionResetError, socket.timeout):
        return None, 0
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    for fd in fds:
        os.close(fd)
    if len(msg) < 8:
        return None, len(fds)
    return struct.unpack("<I", msg[4:8])[0], len(fds)


def once(path, version):
    out = {"uid": os.getuid()}
    tries = [("long", True, bytes(SECRET_LEN)), ("short", False, b"")]
    for key, long, secret in tries:
        try:
            s = connect(path)
            try:
                hello(s, version, long, secret)
            except BrokenPipeError:
                pass  # refused before the Hello went: the reason is still there to read
            status, nfds = welcome(s)
            s.close()
            out[key] = {"status": status, "got_fd": nfds > 0}
        except OSError as e:
            out[key] = {"error": str(e), "got_fd": False}
    out["got_fd"] = any(out[k]["got_fd"] for k, _, _ in tries)
    return out


def hold(path, version, n):
    held, regions = [], 0
    for i in range(n):
        try:
            s = connect(path)
            if i % 4 == 3:
                held.append(s)  # silent: never says Hello
                continue
            try:
                hello(s, version, long=(i % 2 == 0))
            except BrokenPipeError:
                pass
            status, nfds = welcome(s)
            regions += nfds > 0
            held.append(s)
        except OSError:
            pass
    print(json.dumps({"held": len(held), "regions": regions}), flush=True)
    sys.stdin.read()


def app(environ, start_response):
    q = parse_qs(environ.get("QUERY_STRING", ""))
    body = json.dumps(once(q["socket"][0], int(q["version"][0]))).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


if __name__ == "__main__":
    if sys.argv[1] == "once":
        print(json.dumps(once(sys.argv[2], int(sys.argv[3]))), flush=True)
    else:
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
