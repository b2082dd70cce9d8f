"""TensorFlow environment variables that `main.py` sets per mode, before TensorFlow starts.

Today one: `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1` (oneDNN keeps each kernel's reordered
weights) for the modes whose weights never change (`Mode.frozen_weights`), never for
training, where a user's setting is refused. Why, and why these modes must call the model
through a `tf.function`: docs/design.md, "CPU performance environment".
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
