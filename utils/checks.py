"""Value checks shared by the command-line parser and the library code (no TensorFlow).

Each returns None for a good value, else the problem as a phrase that names the flag, so
the parser can print it as a usage error and a library function raise it.
"""

DYNAMIC_LOSS_SCALE = -1


def loss_scale_problem(value: float):
    """`--static_loss_scale` must be positive, or -1 for dynamic loss scaling."""
    if value == DYNAMIC_LOSS_SCALE or value > 0:
        return None
    return f"--static_loss_scale must be positive or -1 (dynamic), got {value:g}"
