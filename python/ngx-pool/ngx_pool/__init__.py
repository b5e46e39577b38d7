"""multiprocessing.Pool and concurrent.futures.Executor on an ngx-pool pool's own workers.

Inside a pool worker of ngx-pool (a WSGI app run by ``python -m ngx_pool serve``), a task of
``Pool.map`` & co. is pickled (functions by reference, as multiprocessing does) and queued for
the same pool's other workers; the caller runs its own tasks while it waits when no worker is
free, so a map always completes: at workers=1, when every worker fans out at once, nested.
No process is created, ever: how many processes there are does not depend on the fan-out.
Tasks may be queued from any thread of the request.

Anywhere else (``flask run``, pytest, a script) ``Pool`` is a real ``multiprocessing.Pool``
and ``Executor`` a ``ProcessPoolExecutor``, so the same code runs unchanged.

Differences from multiprocessing inside ngx-pool: callbacks run in the thread that waits
(``get``, ``wait``, ``join``, iteration), not in a helper thread; ``maxtasksperchild`` is the
pool's ``max_requests``; an ``initializer`` runs once per worker process before the first task
of that initializer.

Modules: ``errors`` (the exceptions), ``_driver`` (the native fan-out, for every thread, and
the worker's side), ``pool`` (Pool), ``executor`` (Executor).
"""

from ._driver import _run_task, in_pool
from .errors import Cancelled, MaybeEncodingError, RemoteTraceback, TimeoutError, WorkerLost
from .executor import Executor
from .pool import ApplyResult, AsyncResult, IMapIterator, MapResult, Pool

__all__ = [
    "Pool",
    "Executor",
    "WorkerLost",
    "Cancelled",
    "RemoteTraceback",
    "MaybeEncodingError",
    "TimeoutError",
    "in_pool",
]
