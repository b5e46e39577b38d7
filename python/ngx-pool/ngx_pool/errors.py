"""The exceptions of ``ngx_pool``: multiprocessing's own where it has one."""

import multiprocessing
import multiprocessing.pool

# multiprocessing's classes, so ``except multiprocessing.TimeoutError`` and friends catch them.
TimeoutError = multiprocessing.TimeoutError
RemoteTraceback = multiprocessing.pool.RemoteTraceback
MaybeEncodingError = multiprocessing.pool.MaybeEncodingError


class WorkerLost(Exception):
    """The pool worker running a task died (crashed or was killed) before it answered.

    The worker has been replaced; the task may or may not have had side effects."""


class Cancelled(Exception):
    """The request no longer wants an answer (the client went away, or its deadline passed);
    its tasks have been cancelled."""
