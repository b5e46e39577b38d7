"""A FastAPI app with WebSocket endpoints, for the WebSocket tests and the differential
against uvicorn: echo, a broadcast room, subprotocols, refusals (a close before accept, a
denial response), close codes, an app that raises, and one that reports how it was closed.
Runs unmodified under uvicorn and behind pool_pass."""

import os

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

RECORD = os.environ.get("ASGI_RECORD", "")


def record(line):
    if RECORD:
        with open(RECORD, "a") as f:
            f.write(line + "\n")


app = FastAPI()
room = set()


@app.get("/")
async def root():
    return PlainTextResponse("hello\n")


@app.websocket("/ws/echo")
async def echo(ws: WebSocket):
    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                record(f"echo disconnect {message['code']}")
                return
            if message.get("text") is not None:
                await ws.send_text(message["text"])
            else:
                await ws.send_bytes(message["bytes"])
    except WebSocketDisconnect as e:
        record(f"echo disconnect {e.code}")


@app.websocket("/ws/room")
async def chat(ws: WebSocket):
    await ws.accept()
    room.add(ws)
    try:
        while True:
            text = await ws.receive_text()
            for peer in list(room):
                try:
                    await peer.send_text(f"{os.getpid()}: {text}")
                except Exception:
                    room.discard(peer)
    except WebSocketDisconnect:
        pass
    finally:
        room.discard(ws)


@app.websocket("/ws/subprotocol")
async def subprotocol(ws: WebSocket):
    offered = ws.scope["subprotocols"]
    await ws.accept(subprotocol="chat.v2" if "chat.v2" in offered else None)
    await ws.send_json({"offered": offered, "scheme": ws.scope["scheme"], "path": ws.scope["path"], "query": ws.scope["query_string"].decode()})
    await ws.close()


@app.websocket("/ws/refuse")
async def refuse(ws: WebSocket):
    await ws.close(code=1008)


@app.websocket("/ws/deny")
async def deny(ws: WebSocket):
    await ws.send_denial_response(PlainTextResponse("no entry\n", status_code=401, headers={"X-Why": "token"}))


@app.websocket("/ws/close")
async def close_with_code(ws: WebSocket):
    await ws.accept()
    await ws.send_text("bye soon")
    await ws.close(code=4001, reason="done here")


@app.websocket("/ws/raise")
async def raises(ws: WebSocket):
    await ws.accept()
    await ws.send_text("about to fail")
    raise RuntimeError("the view failed on purpose")


@app.websocket("/ws/wait")
async def wait(ws: WebSocket):
    """Accepts, says its pid, and records how it was closed (reload, retirement)."""
    await ws.accept()
    await ws.send_text(str(os.getpid()))
    message = await ws.receive()
    record(f"wait {os.getpid()} {message['type']} {message.get('code')}")


@app.websocket("/ws/headers")
async def headers(ws: WebSocket):
    """Accepts with headers of its own, framing ones among them (dropped: a 101 has no body)."""
    await ws.accept(headers=[(b"x-extra", b"1"), (b"content-length", b"10"), (b"transfer-encoding", b"chunked")])
    await ws.send_text("hi")
    await ws.close()
