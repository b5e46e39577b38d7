"""multiprocessing.Pool and concurrent.futures.Executor on an ngx-pool pool's own workers.

Inside a pool worker of ngx-pool (a WSGI app run by its Python adapter), a task of
``Pool.map`` & co. is pickled (functions by reference, as multiprocessing does) and queued for
the same pool's other workers; the caller runs its own tasks while it waits when no worker is
free, so a map always completes: at workers=1, when every worker fans out at once, nested.
No process is created, ever: how many processes there are does not depend on the fan-out.

Anywhere else (``flask run``, pytest, a script) ``Pool`` is a real ``multiprocessing.Pool``
and ``Executor`` a ``ProcessPoolExecutor``, so the same code runs unchanged.

Differences from multiprocessing inside ngx-pool: callbacks run in the caller when it waits
(``get``, ``wait``, ``join``, iteration), not in a helper thread; ``maxtasksperchild`` is the
pool's ``max_requests``; an ``initializer`` runs once per worker process before the first task
of that initializer.
"""

import concurrent.futures
import itertools
import multiprocessing
import multiprocessing.pool
import pickle
import time
import traceback

try:  # Present only in a pool worker of ngx-pool's Python adapter.
    import _ngx_pool
except ImportError:  # pragma: no cover - exercised by the fallback tests
    _ngx_pool = None

__all__ = [
    "Pool",
    "Executor",
    "WorkerLost",
    "Cancelled",
    "RemoteTraceback",
    "TimeoutError",
    "in_pool",
]

TimeoutError = multiprocessing.TimeoutError

# Status codes of _ngx_pool (the host's, see include/ngx_pool.h).
_OK, _YOURS = 0, 1
_GONE, _FULL, _LOST, _TIMEOUT = -3, -7, -8, -9


class WorkerLost(Exception):
    """The pool worker running a task died (crashed or was killed) before it answered.

    The worker has been replaced; the task may or may not have had side effects."""


class Cancelled(Exception):
    """The request no longer wants an answer (the client went away, or its deadline passed);
    its tasks have been cancelled."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a task, as the worker that ran it printed it;
    the re-raised exception's ``__cause__``."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def in_pool():
    """True inside a pool worker of ngx-pool (where Pool fans out over the pool)."""
    return _ngx_pool is not None


# --- the worker's side ---------------------------------------------------------------------

_initialized = set()


def _call(kind, fn, data):
    if kind == "call":
        args, kwargs = data
        return fn(*args, **kwargs)
    if kind == "map":
        return [fn(x) for x in data]
    return [fn(*x) for x in data]  # "starmap"


def _outcome(kind, fn, data, init):
    """Runs one task here: (True, value) or (False, exception, traceback text)."""
    try:
        if init is not None:
            key = pickle.dumps(init)
            if key not in _initialized:
                initializer, initargs = init
                initializer(*initargs)
                _initialized.add(key)
        return (True, _call(kind, fn, data))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
        if isinstance(e, (SystemExit, KeyboardInterrupt)):
            raise
        return (False, e, "".join(traceback.format_exception(type(e), e, e.__traceback__)))


def _run_task(payload):
    """Called by the adapter's run_task in the worker that took a task: pickled in and out."""
    try:
        kind, fn, data, init = pickle.loads(payload)
    except BaseException as e:  # noqa: BLE001
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        return pickle.dumps((False, RuntimeError("cannot unpickle the task: %r" % (e,)), tb))
    out = _outcome(kind, fn, data, init)
    try:
        return pickle.dumps(out)
    except BaseException as e:  # noqa: BLE001
        if out[0]:
            problem = RuntimeError("cannot pickle the task's result: %r" % (e,))
        else:
            problem = RuntimeError("%s (and it cannot be pickled: %r)" % (out[1], e))
        return pickle.dumps((False, problem, out[2] if not out[0] else ""))


# --- the caller's side ---------------------------------------------------------------------


class _Task:
    __slots__ = ("kind", "fn", "data", "init", "deliver", "pool")

    def __init__(self, kind, fn, data, init, deliver, pool):
        self.kind, self.fn, self.data, self.init = kind, fn, data, init
        self.deliver, self.pool = deliver, pool

    def run_here(self):
        out = _outcome(self.kind, self.fn, self.data, self.init)
        self.finish(out)

    def finish(self, out):
        self.pool._in_flight -= 1
        if out[0]:
            self.deliver(True, out[1])
        else:
            exc = out[1]
            if len(out) > 2 and out[2]:
                exc.__cause__ = RemoteTraceback(out[2])
            self.deliver(False, exc)


# The tasks this process has queued and not collected, by host handle. One request runs at a
# time in a pool worker; a handle the host no longer knows fails loudly in wait().
_pending = {}


def _submit(task):
    payload = pickle.dumps((task.kind, task.fn, task.data, task.init))
    code, handle = _ngx_pool.submit(payload) if _ngx_pool.active() else (_FULL, 0)
    task.pool._in_flight += 1
    if code == _OK:
        _pending[handle] = task
    else:  # No room (or not inside a request): run it here, now.
        task.run_here()


def _drive(until, timeout=None):
    """Collects answers (and runs tasks handed back) until ``until()`` or ``timeout`` s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not until():
        if not _pending:
            raise RuntimeError("ngx_pool: waiting for a result no task will bring")
        left = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        code, handle = _ngx_pool.wait(list(_pending), left)
        if code == _TIMEOUT:
            raise TimeoutError()
        if code == _GONE:
            _cancel_all()
            raise Cancelled("the request was cancelled or passed its deadline")
        if code not in (_OK, _YOURS):
            raise RuntimeError("ngx_pool: the host refused to wait (status %d)" % code)
        task = _pending.pop(handle)
        if code == _YOURS:
            task.run_here()
            continue
        status, data = _ngx_pool.result(handle)
        if status == _OK:
            try:
                out = pickle.loads(data)
            except BaseException as e:  # noqa: BLE001
                out = (False, RuntimeError("cannot unpickle a task's result: %r" % (e,)), "")
        elif status == _LOST:
            out = (False, WorkerLost("the pool worker running this task died"), "")
        elif status == _GONE:
            out = (False, Cancelled("the task was stopped: its request's deadline passed"), "")
        else:
            out = (False, RuntimeError("the task failed in its worker (status %d)" % status), "")
        task.finish(out)


def _cancel_all(pool=None):
    for handle, task in list(_pending.items()):
        if pool is None or task.pool is pool:
            del _pending[handle]
            _ngx_pool.release(handle)
            task.pool._in_flight -= 1


class ApplyResult:
    """multiprocessing.pool.AsyncResult: the result of ``apply_async``."""

    def __init__(self, pool, callback=None, error_callback=None):
        self._pool = pool
        self._callback, self._error_callback = callback, error_callback
        self._ready = False
        self._success = None
        self._value = None

    def _set(self, ok, value):
        self._ready, self._success, self._value = True, ok, value
        if ok and self._callback is not None:
            self._callback(value)
        if not ok and self._error_callback is not None:
            self._error_callback(value)

    def ready(self):
        return self._ready

    def successful(self):
        if not self._ready:
            raise ValueError("%r not ready" % self)
        return self._success

    def wait(self, timeout=None):
        try:
            self._pool._drive(self.ready, timeout)
        except TimeoutError:
            pass

    def get(self, timeout=None):
        self._pool._drive(self.ready, timeout)
        if self._success:
            return self._value
        raise self._value


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of ``map_async`` / ``starmap_async``: a list, in order."""

    def __init__(self, pool, chunks, callback=None, error_callback=None):
        super().__init__(pool, callback, error_callback)
        self._parts = [None] * chunks
        self._left = chunks
        self._error = None
        if chunks == 0:
            self._set(True, [])

    def _part(self, i):
        def deliver(ok, value):
            if ok:
                self._parts[i] = value
            elif self._error is None:
                self._error = value
            self._left -= 1
            if self._left == 0:
                if self._error is not None:
                    self._set(False, self._error)
                else:
                    self._set(True, list(itertools.chain.from_iterable(self._parts)))

        return deliver


class _TaskPool:
    """``Pool`` inside ngx-pool: the multiprocessing.pool.Pool API over the pool's workers."""

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None,
                 context=None):
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        self._requested = processes
        self._init = None if initializer is None else (initializer, tuple(initargs))
        self._backlog = []
        self._in_flight = 0
        self._state = "RUN"

    @property
    def _processes(self):
        # At most this many of this Pool's tasks run at once, never more than the pool's workers
        # (looked up at use: a Pool made at import time, before any request, knows no size).
        workers = _ngx_pool.workers()
        return workers if self._requested is None else min(self._requested, workers)

    def __repr__(self):
        return "<ngx_pool.Pool state=%s processes=%d>" % (self._state, self._processes)

    # Admission: tasks wait in the backlog until fewer than `processes` are in flight.
    def _queue(self, kind, fn, data, deliver):
        if self._state != "RUN":
            raise ValueError("Pool not running")
        self._backlog.append(_Task(kind, fn, data, self._init, deliver, self))
        self._pump()

    def _pump(self):
        while self._backlog and self._in_flight < self._processes:
            _submit(self._backlog.pop(0))

    def _drive(self, until, timeout=None):
        def done():
            self._pump()
            return until()

        if not done():
            _drive(done, timeout)

    @staticmethod
    def _chunks(iterable, chunksize):
        it = iter(iterable)
        while True:
            chunk = list(itertools.islice(it, chunksize))
            if not chunk:
                return
            yield chunk

    def _chunksize(self, items):
        chunksize, extra = divmod(len(items), self._processes * 4)
        return chunksize + 1 if extra else max(chunksize, 1)

    def _map_async(self, kind, func, iterable, chunksize, callback, error_callback):
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        if chunksize is None:
            chunksize = self._chunksize(items)
        chunks = list(self._chunks(items, chunksize))
        result = MapResult(self, len(chunks), callback, error_callback)
        for i, chunk in enumerate(chunks):
            self._queue(kind, func, chunk, result._part(i))
        return result

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        result = ApplyResult(self, callback, error_callback)
        self._queue("call", func, (tuple(args), dict(kwds)), result._set)
        return result

    def apply(self, func, args=(), kwds={}):
        return self.apply_async(func, args, kwds).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async("map", func, iterable, chunksize, callback, error_callback)

    def map(self, func, iterable, chunksize=None):
        return self.map_async(func, iterable, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async("starmap", func, iterable, chunksize, callback, error_callback)

    def starmap(self, func, iterable, chunksize=None):
        return self.starmap_async(func, iterable, chunksize).get()

    def _imap(self, func, iterable, chunksize, ordered):
        if self._state != "RUN":
            raise ValueError("Pool not running")
        results, order = {}, []
        total = 0
        for i, chunk in enumerate(self._chunks(iterable, chunksize)):
            def deliver(ok, value, i=i):
                results[i] = (ok, value)
                order.append(i)

            self._queue("map", func, chunk, deliver)
            total = i + 1
        return self._collect(results, order, total, ordered)

    def _collect(self, results, order, total, ordered):
        for n in range(total):
            if ordered:
                self._drive(lambda: n in results)
                ok, value = results.pop(n)
            else:
                self._drive(lambda: bool(order))
                ok, value = results.pop(order.pop(0))
            if not ok:
                raise value
            yield from value

    def imap(self, func, iterable, chunksize=1):
        return self._imap(func, iterable, chunksize, True)

    def imap_unordered(self, func, iterable, chunksize=1):
        return self._imap(func, iterable, chunksize, False)

    def close(self):
        self._state = "CLOSE"

    def terminate(self):
        self._state = "TERMINATE"
        self._backlog.clear()
        _cancel_all(self)

    def join(self):
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        self._drive(lambda: not self._backlog and self._in_flight == 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.terminate()


def Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None):
    """``multiprocessing.Pool``: on the pool's workers inside ngx-pool, a real one elsewhere."""
    if _ngx_pool is None:
        ctx = context if context is not None else multiprocessing
        return ctx.Pool(processes, initializer, initargs, maxtasksperchild)
    return _TaskPool(processes, initializer, initargs, maxtasksperchild, context)


class _Future(concurrent.futures.Future):
    """A Future whose result() collects answers in the caller (no helper thread)."""

    def __init__(self, pool):
        super().__init__()
        self._ngx_pool = pool

    def _deliver(self, ok, value):
        if ok:
            self.set_result(value)
        else:
            self.set_exception(value)

    def result(self, timeout=None):
        self._ngx_pool._drive(self.done, timeout)
        return super().result(0)

    def exception(self, timeout=None):
        self._ngx_pool._drive(self.done, timeout)
        return super().exception(0)


class _TaskExecutor(concurrent.futures.Executor):
    def __init__(self, max_workers=None, initializer=None, initargs=()):
        self._pool = _TaskPool(max_workers, initializer, initargs)

    def submit(self, fn, /, *args, **kwargs):
        f = _Future(self._pool)
        f.set_running_or_notify_cancel()
        self._pool._queue("call", fn, (args, kwargs), f._deliver)
        return f

    def shutdown(self, wait=True, *, cancel_futures=False):
        if cancel_futures:
            self._pool.terminate()
            return
        self._pool.close()
        if wait:
            self._pool.join()


def Executor(max_workers=None, initializer=None, initargs=()):
    """A ``concurrent.futures.Executor``: the pool's workers inside ngx-pool, a
    ``ProcessPoolExecutor`` elsewhere."""
    if _ngx_pool is None:
        return concurrent.futures.ProcessPoolExecutor(max_workers, None, initializer, initargs)
    return _TaskExecutor(max_workers, initializer, initargs)

