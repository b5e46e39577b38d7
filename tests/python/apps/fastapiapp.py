"""A FastAPI app for the ASGI tests and the differential against uvicorn: sync and async
endpoints, a streaming response, an upload read with request.stream(), background tasks,
lifespan state, slow views for concurrency and deadlines, and one that watches for the client
leaving. Runs unmodified under uvicorn and behind pool_pass."""

import asyncio
import hashlib
import os
import time
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse

# Where the views that record something write (the tests read it): set by the tests.
RECORD = os.environ.get("ASGI_RECORD", "")


def record(line):
    if RECORD:
        with open(RECORD, "a") as f:
            f.write(line + "\n")


@asynccontextmanager
async def lifespan(app):
    record(f"startup {os.getpid()}")
    yield {"started_by": os.getpid(), "greeting": "hello from lifespan"}
    record(f"shutdown {os.getpid()}")


app = FastAPI(lifespan=lifespan)
running = {"now": 0, "most": 0}


@app.get("/")
async def root():
    return PlainTextResponse("hello from fastapi\n")


@app.get("/sync")
def sync_view():
    return {"thread": "sync", "pid_is_int": isinstance(os.getpid(), int)}


@app.get("/json")
async def json_view(request: Request, a: str = "", b: str = ""):
    return {"path": request.url.path, "a": a, "b": b, "method": request.method}


@app.get("/scope")
async def scope_view(request: Request):
    s = request.scope
    return {
        "type": s["type"],
        "asgi": s["asgi"],
        "http_version": s["http_version"],
        "method": s["method"],
        "scheme": s["scheme"],
        "path": s["path"],
        "raw_path": s["raw_path"].decode("latin-1"),
        "query_string": s["query_string"].decode("latin-1"),
        "root_path": s["root_path"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in s["headers"]],
        "client_is_tuple": isinstance(s["client"], (tuple, list)) and len(s["client"]) == 2,
        "server": list(s["server"]) if s.get("server") else None,
        "state": {k: v for k, v in s.get("state", {}).items() if k == "greeting"},
    }


@app.get("/state")
async def state_view(request: Request):
    return {"greeting": request.state.greeting, "started_by": request.state.started_by, "pid": os.getpid()}


@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type", "application/octet-stream"))


@app.post("/digest")
async def digest(request: Request):
    h = hashlib.sha256()
    n = 0
    chunks = 0
    async for chunk in request.stream():
        h.update(chunk)
        n += len(chunk)
        chunks += 1
    return {"sha256": h.hexdigest(), "bytes": n, "chunks_gt_1": chunks > 1}


@app.post("/items/{item_id}")
async def create_item(item_id: int, item: dict):
    return JSONResponse({"id": item_id, **item}, status_code=201)


@app.get("/stream")
async def stream(n: int = 5):
    async def gen():
        for i in range(n):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(gen(), media_type="text/plain")


@app.get("/big")
async def big(bytes: int = 1000):
    return Response(b"x" * bytes, media_type="application/octet-stream")


@app.get("/cookie")
async def cookie():
    r = PlainTextResponse("cookie set\n")
    r.set_cookie("a", "1")
    r.set_cookie("b", "2", httponly=True)
    return r


@app.get("/go")
async def go():
    return RedirectResponse("/json?a=redirected", status_code=302)


@app.get("/missing")
async def missing():
    raise HTTPException(status_code=404, detail="no such thing")


@app.get("/teapot")
async def teapot():
    return Response(status_code=418, content=b"short and stout\n", headers={"X-Tea": "earl grey"})


@app.get("/empty")
async def empty():
    return Response(status_code=204)


@app.get("/boom")
async def boom():
    raise RuntimeError("the view failed on purpose")


@app.get("/sync-boom")
def sync_boom():
    raise ValueError("the sync view failed on purpose")


@app.get("/unicode")
async def unicode_view():
    return PlainTextResponse("héllo wörld ✓\n")


@app.get("/bg")
async def background(tasks: BackgroundTasks, tag: str = "x"):
    tasks.add_task(record, f"background {tag}")
    return {"scheduled": tag}


@app.get("/sleep")
async def sleep_view(ms: int = 100):
    running["now"] += 1
    running["most"] = max(running["most"], running["now"])
    try:
        await asyncio.sleep(ms / 1000)
    finally:
        running["now"] -= 1
    return {"slept_ms": ms, "pid": os.getpid()}


@app.get("/most")
async def most():
    return {"most": running["most"], "now": running["now"]}


@app.get("/cancellable")
async def cancellable(ms: int = 5000, tag: str = "c"):
    try:
        await asyncio.sleep(ms / 1000)
    except asyncio.CancelledError:
        record(f"cancelled {tag}")
        raise
    record(f"finished {tag}")
    return {"slept_ms": ms}


@app.get("/stuck")
def stuck_sync_in_async(ms: int = 5000):
    # A sync view runs in a thread: this blocks that thread only, not the loop.
    time.sleep(ms / 1000)
    return {"slept_ms": ms}


@app.get("/block-loop")
async def block_loop(ms: int = 5000):
    # Synchronous code inside async: the whole event loop is stuck.
    time.sleep(ms / 1000)
    return {"slept_ms": ms}


@app.post("/watch")
async def watch_disconnect(request: Request, tag: str = "w"):
    # Reads the body, then waits for the client to go away.
    await request.body()
    for _ in range(200):
        if await request.is_disconnected():
            record(f"disconnect {tag}")
            return {"gone": True}
        await asyncio.sleep(0.05)
    record(f"no disconnect {tag}")
    return {"gone": False}


@app.get("/headers")
async def headers(request: Request):
    return {"x_many": request.headers.getlist("x-many"), "host": request.headers.get("host")}


@app.get("/cpu")
def cpu(n: int = 20000):
    total = 0
    for i in range(n):
        total += i * i % 7
    return {"total": total}


@app.get("/feed")
async def feed(tag: str = "f"):
    # Streams as fast as it can, for ever: it must stop once its client has gone.
    async def gen():
        try:
            while True:
                yield b"x" * 65536
                await asyncio.sleep(0)
        finally:
            record(f"feed stopped {tag}")

    return StreamingResponse(gen(), media_type="application/octet-stream")


@app.get("/bg-sysexit")
async def bg_sysexit():
    async def bad():
        raise SystemExit(0)

    asyncio.get_running_loop().create_task(bad())
    return {"scheduled": "SystemExit"}
