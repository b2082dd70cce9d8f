"""A one-line progress display (steps done/total, img/s, ETA) for interactive terminals.

It draws with \\r only on an interactive terminal (`interactive`); otherwise it prints
nothing, and the logger's lines are the record of non-interactive runs.
"""

import functools
import os
import sys
import time

# Open MPI gives every rank a pseudo-terminal, even when mpiexec's own output goes to a file.
_MPI_RANK_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def format_duration(seconds):
    """Seconds as H:MM:SS."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Call `update(done)` with the number of steps completed so far; `close()` at the end.

    img/s and ETA are measured from the first `update`, so start-up and compilation before
    it are left out. Redraws at most every `min_interval` seconds (and always at the end).
    """

    def __init__(
        self,
        total,
        batch_size,
        label="",
        stream=None,
        enabled=True,
        min_interval=0.5,
        clock=time.monotonic,
    ):
        self.total = total
        self.batch_size = batch_size
        self.label = label
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled and interactive(self.stream)
        self.min_interval = min_interval
        self.clock = clock
        self._start = None
        self._last_draw = None
        self._drawn = False

    def update(self, done):
        if not self.enabled:
            return
        now = self.clock()
        if self._start is None:
            self._start = (now, done)
        throttled = self._last_draw is not None and now - self._last_draw < self.min_interval
        if throttled and done < self.total:
            return
        self._last_draw = now
        self.stream.write("\r" + self.render(done, now) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def render(self, done, now):
        start_time, start_done = self._start
        elapsed = now - start_time
        text = f"{self.label} {done}/{self.total}".lstrip()
        if elapsed > 0 and done > start_done:
            steps_per_sec = (done - start_done) / elapsed
            eta = (self.total - done) / steps_per_sec
            text += f" | {steps_per_sec * self.batch_size:.1f} img/s | ETA {format_duration(eta)}"
        return text

    def close(self):
        """Ends the progress line so later output starts on a fresh line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def interactive(stream=None, environ=os.environ, parent_stdout=None) -> bool:
    """Whether `stream` (default stdout) shows on a terminal, so \\r redraws are welcome.

    RNXT_PROGRESS=1 or 0 decides. Under Open MPI a rank's TTY is the launcher's
    pseudo-terminal: then the launcher's own stdout must be a terminal too.

    Args:
        stream: the output stream.
        environ: the environment to read (tests pass their own).
        parent_stdout: where the launcher's stdout points (default: read from /proc).
    """
    forced = environ.get("RNXT_PROGRESS", "")
    if forced in ("0", "1"):
        return forced == "1"
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        return False
    if not any(name in environ for name in _MPI_RANK_VARS):
        return True
    if parent_stdout is None:
        parent_stdout = _launcher_stdout()
    return parent_stdout.startswith(("/dev/pts/", "/dev/tty"))


@functools.cache  # asked at every logged line; the launcher's stdout does not change
def _launcher_stdout() -> str:
    try:
        return os.readlink(f"/proc/{os.getppid()}/fd/1")
    except OSError:  # not Linux, or another user's launcher: assume a log file
        return ""
