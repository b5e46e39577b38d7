"""Raw ASGI apps that break the protocol (one rule per path), and apps for the lifespan's
cases: one whose startup fails, one that does not speak lifespan at all."""

import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        # Speaks lifespan properly.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
    if path == "/ok":
        await send(start)
        await send({"type": "http.response.body", "body": b"ok\n"})
    elif path == "/body-first":
        await send({"type": "http.response.body", "body": b"too early"})
    elif path == "/start-twice":
        await send(start)
        await send(start)
    elif path == "/bad-status":
        await send({"type": "http.response.start", "status": "200 OK", "headers": []})
    elif path == "/bad-header":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-evil", b"a\r\nInjected: yes")]})
    elif path == "/no-start":
        return
    elif path == "/after-complete":
        await send(start)
        await send({"type": "http.response.body", "body": b"done\n"})
        await send({"type": "http.response.body", "body": b"more"})
    elif path == "/start-only":
        await send({"type": "http.response.start", "status": 201, "headers": [(b"x-only", b"start")]})
    elif path == "/stream-return":
        await send(start)
        await send({"type": "http.response.body", "body": b"partial-", "more_body": True})
        return
    elif path == "/ctl-header":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-ctl", b"a\x01b")]})
    elif path == "/three-tuple":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1", b"2")]})
    elif path == "/own-cancel":
        import asyncio
        raise asyncio.CancelledError()
    elif path == "/chunks":
        await send(start)
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/receive-all":
        body = b""
        while True:
            message = await receive()
            assert message["type"] == "http.request", message
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send(start)
        await send({"type": "http.response.body", "body": b"%d\n" % len(body)})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found\n"})


async def failing_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        raise ConnectionError(f"the database is not there (startup in pid {os.getpid()})")
    await app(scope, receive, send)


async def no_lifespan(scope, receive, send):
    # As many simple apps: anything but http is an error.
    assert scope["type"] == "http", "only http here"
    await app(scope, receive, send)
