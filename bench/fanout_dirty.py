"""(c) of scripts/bench --fanout: the kernel of fanout_app as a Gunicorn Dirty App, run by the
Dirty Arbiter's workers (`--dirty-app fanout_dirty:KernelApp`; Gunicorn >= 25)."""

from gunicorn.dirty import DirtyApp

import fanout_app


class KernelApp(DirtyApp):
    def kernel(self, x):
        return fanout_app.kernel(x)
