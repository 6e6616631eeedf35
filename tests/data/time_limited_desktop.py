"""The seed's desktop session (``examples/desktop_session.py``, unmodified), whose desktops end
by a time limit as a batch job's do: ``start()`` reports the end with ``set_end_time`` after
``options.time_limit_seconds``."""

import importlib.util
import time
from pathlib import Path

_SEED = Path(__file__).resolve().parents[2] / "examples" / "desktop_session.py"
_spec = importlib.util.spec_from_file_location("seed_desktop_session", _SEED)
if _spec is None or _spec.loader is None:
    raise ImportError(f"cannot load the seed's script {_SEED}")
seed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed)


class TimeLimitedDesktop(seed.SimpleVNC):
    def start(self, token, timestamp=None, options=None):
        started = super().start(token, timestamp=timestamp or time.time(), options=options or {})
        if started:
            self.set_end_time(time.time() + float(self._common_options["time_limit_seconds"]))
        return started


def realize_service(name="", count=1, index=0, common_options=None):
    return TimeLimitedDesktop(name, count=count, index=index, common_options=common_options)
