"""``ngx_pool.Pool``: the multiprocessing.pool.Pool API over the pool's own workers."""

import itertools
import multiprocessing
import threading
import warnings

from . import _driver
from ._driver import Task, changed, lock
from .errors import TimeoutError


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
            raise ValueError("{0!r} not ready".format(self))
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


class IMapIterator:
    """multiprocessing.pool.IMapIterator: a feeder thread takes the input as the pool has room
    (an endless one too), results come as they are ready; an exception of the input comes from
    ``next()`` after the results before it."""

    def __init__(self, pool, func, iterable, chunksize, ordered):
        self._pool = pool
        self._ordered = ordered
        self._results = {}  # chunk index -> (ok, values)
        self._arrived = []  # chunk indexes in arrival order (unordered)
        self._next = 0  # next chunk to yield (ordered) / how many yielded
        self._total = None  # chunks, once the input is exhausted
        self._input_error = None
        self._items = iter(())
        self._fed = 0
        self._feeder = threading.Thread(
            target=self._feed, args=(func, iter(iterable), chunksize), name="ngx_pool imap",
            daemon=True)
        self._feeder.start()

    def _feed(self, func, it, chunksize):
        pool = self._pool
        i = 0
        try:
            while True:
                # Bounded: at most a few chunks ahead of what the caller took.
                with lock:
                    while (pool._state == "RUN" or pool._state == "CLOSE") and \
                            i - self._next >= 4 * pool._processes:
                        changed.wait()
                    if pool._state == "TERMINATE":
                        return
                chunk = list(itertools.islice(it, chunksize))
                if not chunk:
                    break
                with lock:
                    pool._queue("map", func, chunk, self._deliver(i), feeding=True)
                i += 1
        except Exception as e:  # noqa: BLE001 - the input's own error: next() raises it
            with lock:
                self._input_error = e
        with lock:
            self._total = i
            changed.notify_all()

    def _deliver(self, i):
        def deliver(ok, value):
            self._results[i] = (ok, value)
            self._arrived.append(i)

        return deliver

    def __iter__(self):
        return self

    def _ready(self):
        if self._ordered:
            return self._next in self._results
        return bool(self._arrived) or self._next == self._total

    def _done(self):
        return self._total is not None and self._next >= self._total

    def next(self, timeout=None):
        while True:
            try:
                return next(self._items)
            except StopIteration:
                pass
            with lock:
                self._pool._drive(lambda: self._done() or self._ready(), timeout)
                if not self._ready() or (not self._ordered and not self._arrived):
                    if self._input_error is not None:
                        e, self._input_error = self._input_error, None
                        self._total = self._next
                        raise e
                    raise StopIteration
                if self._ordered:
                    ok, value = self._results.pop(self._next)
                    self._arrived.remove(self._next)
                else:
                    ok, value = self._results.pop(self._arrived.pop(0))
                self._next += 1
                changed.notify_all()  # The feeder may go on.
            if not ok:
                raise value
            self._items = iter(value)

    __next__ = next


class _TaskPool:
    """``Pool`` inside ngx-pool: the multiprocessing.pool.Pool API over the pool's workers."""

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None,
                 context=None):
        self._state = "INIT"
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._requested = processes
        self._init = None if initializer is None else (initializer, tuple(initargs))
        self._backlog = []
        self._in_flight = 0
        self._state = "RUN"

    @property
    def _processes(self):
        # At most this many of this Pool's tasks run at once, never more than the pool's workers
        # (looked up at use: a Pool made at import time, before any request, knows no size).
        workers = _driver._native.workers()
        return workers if self._requested is None else min(self._requested, workers)

    def __repr__(self):
        return "<ngx_pool.Pool state=%s processes=%d>" % (self._state, self._processes)

    def __del__(self, _warn=warnings.warn):
        if getattr(self, "_state", None) == "RUN":
            _warn("unclosed running multiprocessing pool %r" % (self,), ResourceWarning,
                  source=self)

    def __reduce__(self):
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled")

    def _check_running(self):
        if self._state != "RUN":
            raise ValueError("Pool not running")

    # Admission: tasks wait in the backlog until fewer than `processes` are in flight.
    def _queue(self, kind, fn, data, deliver, feeding=False):
        with lock:
            if not feeding:
                self._check_running()
            elif self._state == "TERMINATE":
                return
            self._backlog.append(Task(kind, fn, data, self._init, deliver, self))
            self._pump()

    def _pump(self):
        while self._backlog and self._in_flight < self._processes:
            self._in_flight += 1
            _driver.submit(self._backlog.pop(0))

    def _drive(self, until, timeout=None):
        def done():
            self._pump()
            return until()

        _driver.drive(done, timeout)

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
        self._check_running()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        if chunksize is None:
            chunksize = self._chunksize(items)
        chunks = list(self._chunks(items, chunksize))
        result = MapResult(self, len(chunks), callback, error_callback)
        with lock:
            for i, chunk in enumerate(chunks):
                self._queue(kind, func, chunk, result._part(i))
        return result

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        self._check_running()
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
        self._check_running()
        if chunksize < 1:
            raise ValueError("Chunksize must be 1+, not {0:n}".format(chunksize))
        return IMapIterator(self, func, iterable, chunksize, ordered)

    def imap(self, func, iterable, chunksize=1):
        return self._imap(func, iterable, chunksize, True)

    def imap_unordered(self, func, iterable, chunksize=1):
        return self._imap(func, iterable, chunksize, False)

    def close(self):
        with lock:
            if self._state == "RUN":
                self._state = "CLOSE"

    def terminate(self):
        with lock:
            self._state = "TERMINATE"
            self._backlog.clear()
            _driver.forget(self)
            changed.notify_all()

    def join(self):
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        if self._state not in ("CLOSE", "TERMINATE"):
            raise ValueError("In unknown state")
        with lock:
            self._drive(lambda: not self._backlog and self._in_flight == 0)

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc):
        self.terminate()


def Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None):
    """``multiprocessing.Pool``: on the pool's workers inside ngx-pool, a real one elsewhere."""
    if _driver._native is None:
        ctx = context if context is not None else multiprocessing
        return ctx.Pool(processes, initializer, initargs, maxtasksperchild)
    return _TaskPool(processes, initializer, initargs, maxtasksperchild, context)
