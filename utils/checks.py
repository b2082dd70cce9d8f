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


MIN_IMAGE_SIZE = 32  # the networks downsample by 32: smaller inputs leave no pixel


def positive_problem(value: float):
    """A learning rate and the like must be a finite number > 0 (not NaN)."""
    if 0 < value < float("inf"):
        return None
    return f"must be a number > 0, got {value:g}"


def image_size_problem(value: int):
    """Fewer than MIN_IMAGE_SIZE pixels a side vanish in the networks' stride of 32."""
    if value >= MIN_IMAGE_SIZE:
        return None
    return f"must be at least {MIN_IMAGE_SIZE} (the networks downsample by 32), got {value}"
