"""A pool's ``sys.stdout`` and ``sys.stderr``: what the app prints (``print()``, a
``logging.StreamHandler``, a traceback it renders itself) reaches nginx's error log as lines in
nginx's format, with the time, a level (stdout: notice, stderr: error), the pool and the
writing process's pid, one per line written. Installed by the WSGI handler in the pool
manager before the app is imported (so a handler the app makes at import, as Django's
``LOGGING`` does, writes through it too, in every worker); the lines still
pass through poold's ``log_rate=``. A line without its newline goes out at ``flush()``.
``fileno()`` and ``buffer`` are the original streams' (raw writes there stay raw).
"""

import io
import sys
import threading

import _ngx_pool as _native

# The longest line kept whole; the rest of a longer one goes out as further lines.
_MAX_LINE = 8192


class LineLog(io.TextIOBase):
    def __init__(self, level, original):
        super().__init__()
        self._level = level
        self._original = original
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self):
        return True

    def isatty(self):
        return False

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "backslashreplace"

    @property
    def buffer(self):
        return self._original.buffer

    def fileno(self):
        return self._original.fileno()

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            *lines, self._pending = (self._pending + s).split("\n")
            while len(self._pending) > _MAX_LINE:
                lines.append(self._pending[:_MAX_LINE])
                self._pending = self._pending[_MAX_LINE:]
        for line in lines:
            _native.log(self._level, line)
        return len(s)

    def flush(self):
        with self._lock:
            pending, self._pending = self._pending, ""
        if pending:
            _native.log(self._level, pending)


def install():
    """Makes this process's sys.stdout and sys.stderr LineLogs (once)."""
    if not isinstance(sys.stdout, LineLog):
        sys.stdout = LineLog("notice", sys.__stdout__)
    if not isinstance(sys.stderr, LineLog):
        sys.stderr = LineLog("error", sys.__stderr__)
