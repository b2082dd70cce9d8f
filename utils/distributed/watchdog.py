"""A rank that waits too long for the others ends itself with one line, never hangs.

Every collective wait and every training step runs under `Watchdog.watch`: past
RNXT_HOROVOD_TIMEOUT seconds (default 1800; 0 turns it off; the first training step,
which compiles, gets `FIRST_STEP_FACTOR` times as long) the process prints one line and
exits with status 1, and the launcher then ends the job.
"""

import contextlib
import os
import sys
import threading
import time

from utils.core.errors import UserError

TIMEOUT_VAR = "RNXT_HOROVOD_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0
FIRST_STEP_FACTOR = 10
EXIT_FAILED = 1


def error_line(error) -> str:
    """`error` as main.py prints a user error."""
    return f"main.py: error: {error}"


def collective_timeout() -> float:
    """Seconds a rank waits for the others before it gives up (0: forever)."""
    value = os.environ.get(TIMEOUT_VAR, "")
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(
            f"{TIMEOUT_VAR}={value!r} is not a number of seconds (0 waits forever)"
        ) from None
    if seconds < 0:
        raise UserError(f"{TIMEOUT_VAR} must be 0 (wait forever) or positive, got {value}")
    return seconds


class Watchdog:
    """Ends the process with one line when a watched wait lasts longer than `timeout`."""

    def __init__(self, timeout: float, rank: int):
        self.timeout = timeout
        self.rank = rank
        self._cond = threading.Condition()
        self._deadline = None
        self._what = None
        self._limit = timeout
        if timeout > 0:
            threading.Thread(target=self._run, name="rnxt-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def watch(self, what: str, factor: float = 1):
        if self.timeout <= 0 or self._deadline is not None:  # off, or already watched
            yield
            return
        with self._cond:
            self._limit = factor * self.timeout
            self._deadline, self._what = time.monotonic() + self._limit, what
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = self._what = None

    def _run(self):
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                print(
                    error_line(
                        f"rank {self.rank}: waited more than {self._limit:g} s for the other "
                        f"processes ({self._what}); one of them died or hangs. "
                        f"{TIMEOUT_VAR} sets this limit in seconds (0: wait forever)"
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_FAILED)
