"""The demo's FastAPI app (scripts/run: /api/ on 127.0.0.1:8080): async views on one event loop
per pool worker, `concurrency=` requests at once, with the lifespan's state in every request."""

import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect


@asynccontextmanager
async def lifespan(app):
    # Runs in each pool worker after the fork: what you would connect to a database here.
    yield {"worker_started": os.getpid()}


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def hello():
    return {"hello": "from fastapi", "pid": os.getpid()}


@app.get("/wait")
async def wait(request: Request, ms: int = 100):
    # Awaits as a call to a database would: the worker serves other requests meanwhile.
    await asyncio.sleep(ms / 1000)
    return {"waited_ms": ms, "pid": os.getpid(), "worker_started": request.state.worker_started}


@app.post("/items/{item_id}")
async def create(item_id: int, item: dict):
    return {"id": item_id, **item}


@app.websocket("/ws")
async def echo(ws: WebSocket):
    # A WebSocket through pool_pass: it holds one of the worker's `concurrency` places while
    # open, and costs nothing while idle.
    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await ws.send_text(message["text"])
            else:
                await ws.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        pass
