"""The fan-out over the WSGI handler's native primitives (``_ngx_pool``: submit, wait, result,
release), for every thread of the request.

One thread at a time sits in the driver's seat and makes the native calls for all of them: it
gives the host the tasks any thread queued, waits for answers (in slices, so that what other
threads queue meanwhile goes out soon), and delivers them. A thread waiting for a result drives
when the seat is free and otherwise waits on a condition; so tasks queued from helper threads
or ``concurrent.futures`` threads run in parallel on the pool's workers, whichever thread waits.
A task no worker is free for runs in this process ("help while waiting"): in the waiting thread,
or, when that thread waits with a timeout, in a helper thread, so the timeout holds.
"""

import collections
import pickle
import threading
import time
import traceback

try:  # Present only in a pool worker of ngx-pool (the WSGI handler registers it).
    import _ngx_pool as _native
except ImportError:  # pragma: no cover - exercised by the fallback tests
    _native = None

from .errors import Cancelled, MaybeEncodingError, RemoteTraceback, TimeoutError, WorkerLost

# Status codes of _ngx_pool: the host's, by the names the extension gives them (HostStatus in
# crates/abi, the one table; include/ngx_pool.h has the same values). None outside a pool,
# where no native call is made.
_OK, _YOURS, _GONE, _FULL, _LOST, _TIMEOUT = (
    (_native.OK, _native.TASK_YOURS, _native.GONE, _native.FULL, _native.LOST, _native.TIMEOUT)
    if _native is not None
    else (None,) * 6
)

# How long a driver waits in the host before it looks at what other threads queued (s).
_SLICE = 0.02


def in_pool():
    """True inside a pool worker of ngx-pool (where Pool fans out over the pool)."""
    return _native is not None


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


def _encode(out):
    """The pickled outcome; one that cannot be pickled is multiprocessing's
    MaybeEncodingError, as its workers send."""
    try:
        return pickle.dumps(out)
    except Exception as e:  # noqa: BLE001
        return pickle.dumps((False, MaybeEncodingError(e, out[1]), ""))


def _run_task(payload):
    """Called by the WSGI handler's run_task in the worker that took a task: pickled in and out."""
    try:
        kind, fn, data, init = pickle.loads(payload)
    except BaseException as e:  # noqa: BLE001
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        return pickle.dumps((False, RuntimeError("cannot unpickle the task: %r" % (e,)), tb))
    return _encode(_outcome(kind, fn, data, init))


def _decode(data):
    try:
        return pickle.loads(data)
    except BaseException as e:  # noqa: BLE001
        return (False, RuntimeError("cannot unpickle a task's result: %r" % (e,)), "")


# --- the caller's side ---------------------------------------------------------------------

# Everything below is guarded by `lock` (reentrant: deliveries run callbacks, which may queue).
lock = threading.RLock()
changed = threading.Condition(lock)
_inbox = collections.deque()  # queued by some thread, not given to the host yet
_local = collections.deque()  # to run in this process (no room, or handed back)
_pending = {}  # host handle -> task
_releases = []  # host handles to forget (terminated pools)
_seat = None  # the thread driving
_helper = False  # a helper thread runs local tasks


def _unlock():
    """Releases `lock` however deep this thread holds it (as Condition.wait does)."""
    return changed._release_save()


def _relock(held):
    changed._acquire_restore(held)


class Task:
    __slots__ = ("kind", "fn", "data", "init", "deliver", "pool", "payload")

    def __init__(self, kind, fn, data, init, deliver, pool):
        self.kind, self.fn, self.data, self.init = kind, fn, data, init
        self.deliver, self.pool = deliver, pool
        self.payload = None

    def run_here(self):
        # Pickled as a worker would (an unpicklable result is a MaybeEncodingError here too).
        self.finish(_decode(_encode(_outcome(self.kind, self.fn, self.data, self.init))))

    def finish(self, out):
        with lock:
            self.pool._in_flight -= 1
            if out[0]:
                self.deliver(True, out[1])
            else:
                exc = out[1]
                if len(out) > 2 and out[2]:
                    exc.__cause__ = RemoteTraceback('\n"""\n%s"""' % out[2])
                self.deliver(False, exc)
            changed.notify_all()


def submit(task):
    """Queues `task` (any thread; the caller holds `lock`). Given to the host now if no
    thread drives, else by the driver within a slice."""
    try:
        task.payload = pickle.dumps((task.kind, task.fn, task.data, task.init))
    except Exception as e:  # noqa: BLE001 - as multiprocessing: the error is the task's
        task.finish((False, e, ""))
        return
    _inbox.append(task)
    changed.notify_all()
    if _seat is None:
        _step_once(None)


def forget(pool):
    """Drops `pool`'s tasks not answered yet (terminate); the caller holds `lock`."""
    for q in (_inbox, _local):
        kept = [t for t in q if t.pool is not pool]
        q.clear()
        q.extend(kept)
    for handle, task in list(_pending.items()):
        if task.pool is pool:
            del _pending[handle]
            _releases.append(handle)
    pool._in_flight = 0
    if _seat is None:
        _step_once(None)


def _give():
    """Gives the host what was queued (the seat's holder, under `lock`)."""
    for handle in _releases:
        _native.release(handle)
    del _releases[:]
    while _inbox:
        task = _inbox.popleft()
        code, handle = _native.submit(task.payload) if _native.active() else (_FULL, 0)
        if code == _OK:
            _pending[handle] = task
        else:  # No room (or not inside a request): run it here.
            _local.append(task)


def _step_once(_):
    global _seat
    _seat = threading.get_ident()
    try:
        _give()
    finally:
        _seat = None
        changed.notify_all()


def _fail_all(exc):
    for handle, task in list(_pending.items()):
        del _pending[handle]
        _native.release(handle)
        task.finish((False, exc, ""))
    while _inbox:
        _inbox.popleft().finish((False, exc, ""))
    while _local:
        _local.popleft().finish((False, exc, ""))


def _enter():
    """A request (or task) starts running in this worker: the tasks queued from now on are its
    own (the driver's queues are made new; those of a request it runs inside of come back at
    ``_exit``). Returns what ``_exit`` restores."""
    global _inbox, _local, _pending, _releases
    with lock:
        saved = (_inbox, _local, _pending, _releases)
        _inbox, _local, _pending, _releases = collections.deque(), collections.deque(), {}, []
        return saved


def _exit(saved):
    """The request (or task) has ended, and the host forgot its tasks: so does the driver (what
    still waits for them gets ``Cancelled``, not a stale handle in the next request)."""
    global _inbox, _local, _pending, _releases
    with lock:
        ended = list(_pending.values()) + list(_inbox) + list(_local)
        _inbox, _local, _pending, _releases = saved
    for task in ended:
        task.finish((False, Cancelled("the request that queued this task has ended"), ""))


def _wait_host(seconds):
    """One wait in the host (the seat's holder; `lock` is released meanwhile)."""
    handles = list(_pending)
    ms = int(seconds * 1000)
    held = _unlock()  # Other threads may queue (into the inbox) meanwhile.
    try:
        code, handle = _native.wait(handles, ms)
        data = _native.result(handle) if code == _OK else None
    finally:
        _relock(held)
    if code == _TIMEOUT:
        return
    if code == _GONE:
        _fail_all(Cancelled("the request was cancelled or passed its deadline"))
        return
    if code not in (_OK, _YOURS):
        _fail_all(RuntimeError("ngx_pool: the host refused to wait (status %d)" % code))
        return
    task = _pending.pop(handle, None)
    if task is None:  # Forgotten meanwhile (terminate).
        return
    if code == _YOURS:
        _local.appendleft(task)
        return
    status, data = data
    if status == _OK:
        out = _decode(data)
    elif status == _LOST:
        out = (False, WorkerLost("the pool worker running this task died"), "")
    elif status == _GONE:
        out = (False, Cancelled("the task was stopped: its request's deadline passed"), "")
    else:
        out = (False, RuntimeError("the task failed in its worker (status %d)" % status), "")
    task.finish(out)


def _run_local():
    """A helper thread's loop: runs the local tasks."""
    global _helper
    while True:
        with lock:
            if not _local:
                _helper = False
                changed.notify_all()
                return
            task = _local.popleft()
        task.run_here()


def drive(until, timeout=None):
    """Drives (or waits for the thread driving) until ``until()`` (checked under `lock`);
    multiprocessing's TimeoutError past ``timeout`` s."""
    global _seat, _helper
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    me = threading.get_ident()
    with lock:
        while not until():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError()
            if _seat is not None and _seat != me:
                changed.wait(_SLICE if left is None else min(left, _SLICE))
                continue
            if _local:
                if deadline is None:
                    task = _local.popleft()
                    held = _unlock()  # Others drive while this thread runs the task.
                    try:
                        task.run_here()
                    finally:
                        _relock(held)
                    continue
                if not _helper:  # Run it aside, so this wait's timeout holds.
                    _helper = True
                    threading.Thread(target=_run_local, name="ngx_pool task", daemon=True).start()
            outer = _seat is None
            _seat = me
            try:
                _give()
                if _pending:
                    _wait_host(_SLICE if left is None else min(left, _SLICE))
                elif not _inbox and not until():
                    # Nothing to drive here: what is left runs in another thread.
                    changed.wait(_SLICE if left is None else min(left, _SLICE))
            finally:
                if outer:
                    _seat = None
                    changed.notify_all()
