"""The process-wide state a main.py run or a test may change, and putting it back.

A fresh interpreter starts every `python main.py` with none of it; an in-process run
(`tests.support.run_main`) starts from `fresh_process()` and ends with `restore()`, and
the autouse fixture in conftest.py fails any test that leaves one of these changed:
environment variables, the handlers of the signals main.py handles, the Keras
mixed-precision policy, TensorFlow's op determinism, the root logger's handlers,
stdout/stderr and the working directory. The seeds (TensorFlow's and Keras' global ones,
Python's and NumPy's random state) are put back, not compared: tests seed for repeatable
draws.
"""

import logging
import os
import random
import signal
import sys

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context
from tensorflow.python.framework import config as tf_config  # determinism's query and undo

from runtime.training import StopRequest
from utils import distributed
from utils.core.tf_compat import keras
from utils.data import reader

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# Keras' own seed generator, which keras.utils.set_random_seed also sets.
_KERAS_BACKEND = keras.utils.set_random_seed.__globals__["backend"]


def _keras_seed_generator():
    return getattr(_KERAS_BACKEND._SEED_GENERATOR, "generator", None)


def _own_handlers():
    """The root logger's handlers, less the ones pytest swaps in for each test phase."""
    root = logging.getLogger()
    return [h for h in root.handlers if not type(h).__module__.startswith("_pytest")]


def snapshot() -> dict:
    """Everything `restore` puts back and `leaks` compares."""
    # pytest names the running test and its phase in PYTEST_CURRENT_TEST.
    environment = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return {
        "environment": environment,
        "signal handlers": {sig: signal.getsignal(sig) for sig in SIGNALS},
        "Keras policy": keras.mixed_precision.global_policy().name,
        "op determinism": tf_config.is_op_determinism_enabled(),
        "TensorFlow global seed": context.global_seed(),
        "Keras seed generator": _keras_seed_generator(),
        "StopRequest.exit_code": StopRequest.exit_code,
        "root logger handlers": _own_handlers(),
        "stdout/stderr": (sys.stdout, sys.stderr),
        "working directory": os.getcwd(),
    }


def random_states() -> dict:
    """Python's and NumPy's global random state (a run with --seed reseeds them): restored
    after an in-process run, not compared, since a test may draw from them freely."""
    return {"Python": random.getstate(), "NumPy": np.random.get_state()}


# Tests seed for repeatable draws; the fixture puts these back after each test, unasked.
SEEDS = ("TensorFlow global seed", "Keras seed generator")


def leaks(before: dict, after: dict) -> list:
    """The names of the items that differ (but the seeds), with a word on what changed."""
    found = []
    for key, old in before.items():
        if key in SEEDS:
            continue
        new = after[key]
        if old == new:
            continue
        if key == "environment":
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            found.append(f"environment variables {changed}")
        else:
            found.append(f"{key}: {old!r} -> {new!r}")
    return found


def fresh_process() -> None:
    """What a new interpreter starts with, for the module-level state of this project:
    no process group yet, no skipped or lost records counted, no SIGINT exit recorded."""
    distributed._instance = None
    reader.reset_counts()
    StopRequest.exit_code = 0


def restore_seeds(before: dict, randomness: "dict | None" = None) -> None:
    """Put back the global seeds of `before` and, if given, the random states."""
    if context.global_seed() != before["TensorFlow global seed"]:
        tf.random.set_seed(before["TensorFlow global seed"])
    if _keras_seed_generator() is not before["Keras seed generator"]:
        _KERAS_BACKEND._SEED_GENERATOR.generator = before["Keras seed generator"]
    if randomness:
        random.setstate(randomness["Python"])
        np.random.set_state(randomness["NumPy"])


def restore(before: dict, randomness: "dict | None" = None) -> None:
    """Put back everything `snapshot` recorded, and free what a run built (Keras' graph
    and name counters, oneDNN's cached eager kernels, which may hold frozen weights)."""
    current_test = os.environ.get("PYTEST_CURRENT_TEST")
    os.environ.clear()
    os.environ.update(before["environment"])
    if current_test is not None:
        os.environ["PYTEST_CURRENT_TEST"] = current_test
    for sig, handler in before["signal handlers"].items():
        signal.signal(sig, handler)
    keras.mixed_precision.set_global_policy(before["Keras policy"])
    if not before["op determinism"]:
        tf_config.disable_op_determinism()
    restore_seeds(before, randomness)
    StopRequest.exit_code = before["StopRequest.exit_code"]
    root = logging.getLogger()
    for handler in _own_handlers():
        if handler not in before["root logger handlers"]:
            root.removeHandler(handler)
    sys.stdout, sys.stderr = before["stdout/stderr"]
    os.chdir(before["working directory"])
    keras.backend.clear_session()
    context.context().clear_kernel_cache()
