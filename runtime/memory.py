"""A memory guard: refuse, before building the model, a batch that cannot fit.

Activation memory grows with batch x image_size^2. The estimate (bytes) is
    params_bytes + batch * size^2 * PER_PIXEL[arch] * (0.6 with --amp) * (1/8 to infer)
with params_bytes = 12 bytes per parameter (weights, gradients, momentum). PER_PIXEL for
resnet50 was measured on CPU from peak RSS at 64 and 128 px, batches 2 and 8 (about
1.8 kB per pixel of the batch); the ResNeXt101 figures scale it by their activation count
(about 2x). A run is refused when the estimate exceeds the memory available: MemAvailable
of /proc/meminfo on a CPU, the GPU's total memory on a GPU.
"""

from typing import Callable, Optional

from utils.core.errors import UserError
from utils.modes import MODES

PER_PIXEL = {"resnet50": 1800, "resnext101-32x4d": 3550, "se-resnext101-32x4d": 3700}
PARAMS = {"resnet50": 25.6e6, "resnext101-32x4d": 44.2e6, "se-resnext101-32x4d": 49.0e6}
AMP_FACTOR = 0.6
INFERENCE_FACTOR = 1 / 8


def estimate_bytes(arch: str, batch: int, size: int, amp: bool, training: bool) -> float:
    """The estimated peak memory of one process (see the module docstring).

    Args:
      arch: the --arch name.
      batch: the per-process batch size.
      size: the input height and width in pixels.
      amp: mixed precision (float16 activations).
      training: gradients are computed (activations kept for the backward pass).
    """
    per_pixel = PER_PIXEL[arch] * (AMP_FACTOR if amp else 1.0)
    if not training:
        per_pixel *= INFERENCE_FACTOR
    return 12 * PARAMS[arch] + batch * size * size * per_pixel


def host_available_bytes(meminfo: str = "/proc/meminfo") -> Optional[int]:
    """MemAvailable in bytes, or None where the kernel does not say.

    Args:
      meminfo: the file to read.
    """
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(
    args, size: int, available: Callable[[], Optional[int]], device: str = "host RAM"
) -> None:
    """Refuse with one line a batch whose estimate exceeds `available()` bytes.

    Args:
      args: the parsed command line (arch, batch_size, amp, mode).
      size: the input height and width.
      available: returns the device's memory in bytes (None: unknown, no check).
      device: how the message names the memory.
    """
    training = MODES[args.mode].trains
    need = estimate_bytes(args.arch, args.batch_size, size, args.amp, training)
    have = available()
    if have is None or need <= have:
        return
    per_image = estimate_bytes(args.arch, 1, size, args.amp, training) - 12 * PARAMS[args.arch]
    fits = max(0, int((have - 12 * PARAMS[args.arch]) // per_image))
    fix = f"use --batch_size {fits} or less" if fits else "lower --image_size"
    raise UserError(
        f"--batch_size {args.batch_size} at {size}x{size} px needs about {need / 2**30:.1f} GiB "
        f"for {args.arch}, more than the {have / 2**30:.1f} GiB of {device}: {fix}"
    )


def guard(args, dist, size: int) -> None:
    """Refuse a run whose estimate exceeds this device's memory (call before building).

    Args:
      args: the parsed command line.
      dist: the process group (processes on one host share its RAM).
      size: the input height and width.
    """
    import tensorflow as tf

    from runtime.environment import gpu_total_memory_mb

    gpus = tf.config.get_visible_devices("GPU")
    if gpus:
        total_mb = gpu_total_memory_mb(int(gpus[0].name.rsplit(":", 1)[1]))
        check_fits(args, size, lambda: total_mb and total_mb * 2**20, "GPU memory")
        return
    host = host_available_bytes()
    share = host // dist.local_size if host else None
    where = "available host RAM" + (
        f" per process ({dist.local_size})" if dist.local_size > 1 else ""
    )
    check_fits(args, size, lambda: share, where)
