"""NVIDIA DLLogger's log format: `DLLL {json}` lines in a file plus one line per record on stdout.

Uses NVIDIA's `dllogger` package when it is importable (NGC containers ship it); otherwise
writes the same lines itself. The JSON fields are those of dllogger's JSONStreamBackend:
  LOG:      timestamp, datetime, elapsedtime, type="LOG", step, data
  METADATA: timestamp, elapsedtime, datetime, type="METADATA", metric, metadata
timestamp and elapsedtime are strings of seconds, as dllogger writes them.
"""

import json
import os
import sys
from datetime import datetime

import numpy as np

from utils.logs.progress import interactive

try:
    import dllogger
except ImportError:
    dllogger = None

_STEP_LABELS = ("epoch", "step", "substep")


def to_builtin(value):
    """Plain-Python version of a value (numpy/tf scalars and arrays, bytes) for JSON."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def format_step(step):
    """'PARAMETER' -> 'PARAMETER'; (3, 1200) -> 'epoch 3 step 1200'; () -> 'summary'."""
    if isinstance(step, str):
        return step
    step = list(step)
    if not step:
        return "summary"
    if len(step) > len(_STEP_LABELS):
        return str(step)
    return " ".join(f"{label} {value}" for label, value in zip(_STEP_LABELS, step))


def format_metric(metric, metadata, value):
    """'name : value unit', using the metric's metadata 'format' (e.g. ':.2f') and 'unit'."""
    if "format" in metadata and value is not None:
        text = ("{" + metadata["format"] + "}").format(value)
    elif isinstance(value, float):
        text = f"{value:.5g}"
    else:
        text = str(value)
    unit = metadata.get("unit")
    return f"{metric} : {text} {unit}" if unit else f"{metric} : {text}"


class Logger:
    """DLLogger-format log on `results_dir/log_filename` (appended) and stdout.

    With `enabled=False` (non-zero ranks) every method does nothing and no file is opened.
    Steps: a tuple/list such as (epoch, global_step), (epoch,), (), or "PARAMETER".
    """

    def __init__(self, results_dir, log_filename, enabled=True):
        self.enabled = enabled
        self.path = os.path.join(results_dir, log_filename)
        self._metadata = {}
        self._start = datetime.now()
        self._dll = None
        if not enabled:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if dllogger is not None:
            self._dll = _nvidia_logger(self.path)

    def log_parameters(self, params):
        """All run parameters once, with step "PARAMETER"."""
        self.log("PARAMETER", params)

    def metadata(self, metric, meta):
        """Declare a metric's metadata (e.g. {"unit": "img/s", "format": ":.2f"})."""
        if not self.enabled:
            return
        meta = to_builtin(dict(meta))
        self._metadata.setdefault(metric, {}).update(meta)
        if self._dll is not None:
            self._dll.metadata(metric, meta)
            return
        now, elapsed = self._now()
        record = {
            "timestamp": str(now.timestamp()),
            "elapsedtime": str(elapsed),
            "datetime": str(now),
            "type": "METADATA",
            "metric": metric,
            "metadata": meta,
        }
        self._write(record)

    def log(self, step, data):
        """One record: `data` maps metric names to values (tf/numpy scalars are fine)."""
        if not self.enabled:
            return
        step = step if isinstance(step, str) else to_builtin(list(step))
        data = to_builtin(dict(data))
        if self._dll is not None:
            self._dll.log(step=step, data=data, verbosity=dllogger.Verbosity.DEFAULT)
            return
        now, elapsed = self._now()
        record = {
            "timestamp": str(now.timestamp()),
            "datetime": str(now),
            "elapsedtime": str(elapsed),
            "type": "LOG",
            "step": step,
            "data": data,
        }
        self._write(record)
        self._print(now, step, data)

    def flush(self):
        if self._dll is not None:
            self._dll.flush()
        sys.stdout.flush()

    def close(self):
        """Flushes and stops logging; later calls do nothing."""
        if not self.enabled:
            return
        self.flush()
        for backend in self._dll.backends if self._dll is not None else []:
            if getattr(backend, "file", None) is not None:
                backend.file.close()
        self._dll = None
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _now(self):
        now = datetime.now()
        return now, (now - self._start).total_seconds()

    def _write(self, record):
        # One open per record: every line is on disk even if the process is killed.
        with open(self.path, "a", encoding="utf-8") as log_file:
            log_file.write("DLLL " + json.dumps(record) + "\n")

    def _print(self, now, step, data):
        metrics = " ".join(format_metric(m, self._metadata.get(m, {}), v) for m, v in data.items())
        line = f"DLL {now} - {format_step(step)} {metrics}"
        # Start at column 0 over any progress line drawn with \r on a terminal.
        prefix = "\r\x1b[K" if interactive() else ""
        print(prefix + line, flush=True)


def _nvidia_logger(path):
    try:
        json_backend = dllogger.JSONStreamBackend(dllogger.Verbosity.VERBOSE, path, append=True)
    except TypeError:  # dllogger releases before `append` existed always truncate
        json_backend = dllogger.JSONStreamBackend(dllogger.Verbosity.VERBOSE, path)
    stdout_backend = dllogger.StdOutBackend(
        dllogger.Verbosity.VERBOSE, step_format=format_step, metric_format=format_metric
    )
    return dllogger.Logger(backends=[json_backend, stdout_backend])
