"""The FastAPI app of the ASGI benchmark (scripts/bench --asgi), the same for every server.

/hello -> "hello"            /json -> a small JSON document
/io    -> awaits 10 ms (a database or another service)
/cpu   -> a fixed amount of pure-Python work (~10 ms here), in an async view
/ws    -> a WebSocket that echoes each text message
"""

import asyncio

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/hello")
async def hello():
    return PlainTextResponse("hello")


@app.get("/json")
async def as_json():
    return {"id": 42, "name": "widget", "tags": ["a", "b", "c"], "price": 9.99, "stock": {"eu": 3, "us": 7}}


@app.get("/io")
async def io():
    await asyncio.sleep(0.01)
    return PlainTextResponse("waited")


@app.get("/cpu")
async def cpu():
    # The same work on every server (a count, not a time), so only the overhead differs.
    x = 0
    for i in range(80_000):
        x += i * i
    return {"sum": x}


@app.websocket("/ws")
async def ws_echo(ws: WebSocket):
    # The WebSocket round trip: each message echoed as it comes.
    await ws.accept()
    try:
        while True:
            await ws.send_text(await ws.receive_text())
    except WebSocketDisconnect:
        pass
