"""``ngx_pool.Executor``: a concurrent.futures.Executor over the pool's own workers."""

import concurrent.futures

from . import _driver
from .pool import _TaskPool


class _Future(concurrent.futures.Future):
    """A Future whose result() drives the fan-out in the waiting thread."""

    def __init__(self, pool):
        super().__init__()
        self._ngx_pool = pool

    def _deliver(self, ok, value):
        if ok:
            self.set_result(value)
        else:
            self.set_exception(value)

    def result(self, timeout=None):
        try:
            self._ngx_pool._drive(self.done, timeout)
        except concurrent.futures.TimeoutError:
            raise
        except _driver.TimeoutError:
            raise concurrent.futures.TimeoutError() from None
        return super().result(0)

    def exception(self, timeout=None):
        try:
            self._ngx_pool._drive(self.done, timeout)
        except _driver.TimeoutError:
            raise concurrent.futures.TimeoutError() from None
        return super().exception(0)


class _TaskExecutor(concurrent.futures.Executor):
    def __init__(self, max_workers=None, initializer=None, initargs=()):
        self._pool = _TaskPool(max_workers, initializer, initargs)

    def submit(self, fn, /, *args, **kwargs):
        if self._pool._state != "RUN":
            raise RuntimeError("cannot schedule new futures after shutdown")
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
    if _driver._native is None:
        return concurrent.futures.ProcessPoolExecutor(max_workers, None, initializer, initargs)
    return _TaskExecutor(max_workers, initializer, initargs)
