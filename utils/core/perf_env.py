"""TensorFlow environment variables that `main.py` sets per mode, before TensorFlow starts.

`TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`: each oneDNN convolution or matmul kernel reorders its
weights into oneDNN's blocked layout at its first call and keeps them, instead of on
every call (4-43% more CPU inference img/s, benchmarks/RESULTS.md). A kernel then ignores
any later change to its weights, so it is set only for the modes whose weights never change
after their first inference call and that run the model in a `tf.function`, where every
op has its own kernel: evaluate, predict and inference_benchmark. (Eager ops of one type
and attributes share one kernel, so a model called eagerly could reuse another layer's
cached weights: these modes must keep calling it through a `tf.function`.) Never for
training.
TensorFlow reads the variable once per process, when it creates its first oneDNN
convolution or matmul kernel, so it must be set before then.
"""

import os

from utils.core.errors import UserError
from utils.modes import MODES

FROZEN_WEIGHTS = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
FROZEN_WEIGHTS_MODES = tuple(name for name, mode in MODES.items() if mode.frozen_weights)


def configure(mode, environ=os.environ):
    """Sets the variables for `mode` in `environ` unless the user set them; refuses frozen
    weights in a training mode, where they would silently train on stale weights."""
    if mode in FROZEN_WEIGHTS_MODES:
        environ.setdefault(FROZEN_WEIGHTS, "1")
    elif MODES[mode].trains and environ.get(FROZEN_WEIGHTS, "").strip().lower() in (
        "1",
        "true",
    ):
        raise UserError(
            f"{FROZEN_WEIGHTS}={environ[FROZEN_WEIGHTS]} makes oneDNN ignore weight updates: "
            f"unset it for --mode {mode}"
        )
