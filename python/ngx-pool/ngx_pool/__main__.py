"""``python -m ngx_pool serve ARGS``: runs a pool in this interpreter.

ARGS are poold's (``python -m ngx_pool serve --help``). The pool manager and its workers are this
very executable, with the app's venv and its Python version: no libpython of ours, no adapter.
"""

import signal
import sys


def main(argv):
    if not argv or argv[0] != "serve":
        print("usage: python -m ngx_pool serve [poold's arguments; --help lists them]", file=sys.stderr)
        return 2
    from ngx_pool import _native

    # poold owns the signals (a worker stops on SIGINT and
    # SIGTERM by their default action), and what the app prints reaches the log as written.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True, write_through=True)
        except (AttributeError, ValueError):
            pass
    _native.serve(list(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
