"""A one-line progress display (steps done/total, img/s, ETA) for interactive terminals.

It draws with \\r only when its stream is a TTY; otherwise it prints nothing, and the
logger's lines are the record of non-interactive runs.
"""

import sys
import time


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
        self.enabled = enabled and _is_tty(self.stream)
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


def _is_tty(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
