"""The event loop of an ASGI pool worker (``handler=asgi:MODULE:APP``).

The extension starts it in each worker after the fork (``start``), on a thread of its own: the
worker's lanes, one per request it runs at once, hand it requests through a bridge whose
descriptor the loop watches, and wait for the answers; no lane runs Python. Here the app's
coroutine runs for each request with ``receive`` and ``send`` over the request's call, and the
lifespan protocol runs as uvicorn's ``--lifespan`` does: startup before the first request (its
failure stops the worker, and the pool's start), shutdown when the worker leaves.
"""

import asyncio
import math
import os
import threading
import traceback

import _ngx_pool


def _log(level, text):
    for line in text.rstrip("\n").split("\n"):
        _ngx_pool.log(level, line)


def _new_loop():
    """uvloop's loop where the app's venv has uvloop (as uvicorn's ``--loop auto``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def start(bridge, app, lifespan, name, timeout):
    """Starts the loop's thread; the extension waits for the lifespan's startup on the bridge.
    `timeout`: the pool's `timeout=` in seconds (0: none)."""
    worker = _Worker(bridge, app, name, timeout)
    thread = threading.Thread(target=worker.main, args=(lifespan,), name="asgi-loop", daemon=True)
    thread.start()


# Deadlines are grouped by when they fall, a group per DEADLINE_STEP seconds, with one timer per
# group rather than one per request: a task is cancelled up to DEADLINE_STEP after its deadline
# (its lane, while it waits, ends the request at the deadline itself).
DEADLINE_STEP = 0.05


class _LifespanUnsupported(Exception):
    pass


class _Worker:
    def __init__(self, bridge, app, name, timeout):
        self.bridge = bridge
        self.app = app
        self.name = name
        self.timeout = timeout
        # Calls whose task this loop cancelled at the pool's timeout (by key).
        self.timed_out = set()
        # The deadlines to come: when (a multiple of DEADLINE_STEP) -> the keys due then.
        self.deadlines = {}
        self.loop = None
        # Per call (by key): the futures of its receive() and send() waiting for news.
        self.waiters = {}
        self.tasks = {}
        # The lifespan's state, copied into each request's scope (as uvicorn does).
        self.state = {}
        self.lifespan = None
        self.stopping = False

    def main(self, mode):
        self.loop = loop = _new_loop()
        asyncio.set_event_loop(loop)
        try:
            error = loop.run_until_complete(self.startup(mode))
        except BaseException:
            error = traceback.format_exc()
        if error is not None:
            self.bridge.started(error)
            return
        loop.add_reader(self.bridge.fd, self.on_wake)
        self.bridge.started(None)
        try:
            loop.run_forever()
        except BaseException:
            # SystemExit or KeyboardInterrupt in a task the app started, which asyncio lets
            # through: with no loop the worker cannot serve; it leaves (its requests get 502,
            # poold forks a fresh one).
            _log("error", f"the event loop of the ASGI app {self.name} stopped:\n{traceback.format_exc().rstrip()}\nthe worker exits")
            self.exit()
        if not self.stopping:
            _log("error", f"the event loop of the ASGI app {self.name} stopped (loop.stop() in the app?); the worker exits")
            self.exit()
        self.bridge.stopped()

    def exit(self):
        """The loop is gone: the lanes write what the app sent them (1 s at most), then the
        worker ends (poold fails what it still ran with 502 and forks a fresh one)."""
        self.bridge.flush()
        os._exit(70)

    # Requests.

    def on_wake(self):
        new, woken, stop = self.bridge.drain()
        loop = self.loop
        for call, scope in new:
            scope["state"] = self.state.copy()
            key = call.key
            task = loop.create_task(self.run(call, key, scope))
            self.tasks[key] = task
            # A task cancelled before its first step never runs run()'s handlers: the
            # callback finishes its call all the same.
            due = None
            if self.timeout and scope["type"] == "http":
                # The deadline holds even once the lane has left (the client went away, or the
                # request waited in the queue and nginx gave it up first). A WebSocket has
                # none once accepted (its lane holds the handshake to it).
                due = self.watch_deadline(key)
            task.add_done_callback(lambda t, call=call, key=key, due=due: self.done(t, call, key, due))
        for call in woken:
            key = call.key
            if call.cancel_due():
                self.expire(key)
            for fut in self.waiters.pop(key, ()):
                if not fut.done():
                    fut.set_result(None)
        if stop and not self.stopping:
            self.stopping = True
            loop.create_task(self.shutdown())

    def watch_deadline(self, key):
        """Cancels call `key`'s task once the pool's timeout has passed; returns the keys it is
        due with."""
        due = math.ceil((self.loop.time() + self.timeout) / DEADLINE_STEP) * DEADLINE_STEP
        keys = self.deadlines.get(due)
        if keys is None:
            keys = self.deadlines[due] = set()
            self.loop.call_at(due, self.expire_due, due)
        keys.add(key)
        return keys

    def expire_due(self, due):
        for key in self.deadlines.pop(due, ()):
            self.expire(key)

    def expire(self, key):
        """Cancels call `key`'s task: its deadline has passed. Once: the lane's news and the
        loop's own timer may both say so, and a second cancel would cut short the cleanup the
        app runs after the first (its `finally: await ...`)."""
        if key in self.timed_out:
            return
        task = self.tasks.get(key)
        if task is not None and not task.done():
            self.timed_out.add(key)
            task.cancel()

    def done(self, task, call, key, due):
        if due is not None:
            due.discard(key)
        if task.cancelled():
            call.finish("cancelled")
        self.timed_out.discard(key)
        self.tasks.pop(key, None)
        self.waiters.pop(key, None)

    def wait(self, key):
        fut = self.loop.create_future()
        self.waiters.setdefault(key, []).append(fut)
        return fut

    async def run(self, call, key, scope):
        wait = self.wait

        async def receive():
            while True:
                event = call.receive()
                if event is not None:
                    return event
                await wait(key)

        async def send(message):
            if call.send(message):
                await wait(key)

        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if key in self.timed_out:
                call.finish("cancelled")
            else:
                # The app's own cancellation, not the deadline's: an error like any other.
                self.failed(call, traceback.format_exc().rstrip())
        except BaseException:
            self.failed(call, traceback.format_exc().rstrip())
        else:
            call.finish(None)

    def failed(self, call, error):
        if not call.finish(error):
            # After a complete answer (Starlette's error middleware answers 500, then raises):
            # the lane has left, the log still gets it.
            _log("error", f"the ASGI app {self.name} failed: {error}")

    # Lifespan.

    async def startup(self, mode):
        """None once the app started (or has no lifespan), else why it did not."""
        if mode == "off":
            return None
        inbox = asyncio.Queue()
        outbox = asyncio.Queue()
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }

        # Whether the app took the startup message: one that raises after it failed its
        # startup; one that raises before never spoke lifespan (lifespan=auto then serves).
        took = []

        async def receive():
            message = await inbox.get()
            took.append(message["type"])
            return message

        async def send(message):
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise TypeError(f"ASGI protocol: a lifespan message is a dict with a \"type\", not {message!r}")
            await outbox.put(message)

        async def run():
            try:
                await self.app(scope, receive, send)
            except BaseException:
                await outbox.put({"type": "_raised", "traceback": traceback.format_exc().rstrip()})
            else:
                await outbox.put({"type": "_returned"})

        self.lifespan = (inbox, outbox, self.loop.create_task(run()))
        await inbox.put({"type": "lifespan.startup"})
        message = await outbox.get()
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            return None
        self.lifespan = None
        if kind == "lifespan.startup.failed":
            return "lifespan.startup.failed: " + str(message.get("message", ""))
        if kind in ("_raised", "_returned") and mode == "auto" and not took:
            how = "raised" if kind == "_raised" else "returned"
            _log(
                "info" if kind == "_returned" else "warn",
                f"the ASGI app {self.name} {how} on the lifespan scope: it is taken to have no lifespan (lifespan=auto)"
                + ("\n" + message["traceback"] if kind == "_raised" else ""),
            )
            return None
        if kind == "_raised":
            return message["traceback"]
        if kind == "_returned":
            return "the app returned on the lifespan scope without sending lifespan.startup.complete"
        return f"the app sent {kind!r} on the lifespan scope, not lifespan.startup.complete"

    async def shutdown(self):
        try:
            if self.lifespan is not None:
                inbox, outbox, task = self.lifespan
                await inbox.put({"type": "lifespan.shutdown"})
                message = await outbox.get()
                kind = message.get("type")
                if kind == "lifespan.shutdown.failed":
                    _log("error", f"the ASGI app {self.name}'s lifespan shutdown failed: {message.get('message', '')}")
                elif kind == "_raised":
                    _log("error", f"the ASGI app {self.name}'s lifespan shutdown raised:\n{message['traceback']}")
        except BaseException:
            _log("error", traceback.format_exc())
        finally:
            self.loop.stop()
