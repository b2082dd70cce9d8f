"""Process set-up before any model is built: devices, precision (--amp/--amp_dtype), seeds.

With several processes (Horovod) each process takes the GPU of its local rank (--gpu_id
only picks the GPU of a single process) and its own seed (--seed + rank), so ranks shuffle
and augment differently; the model's initial weights come from rank 0 by broadcast. On a
machine without GPUs the processes share the cores; splitting TensorFlow's thread pools
between them was measured no faster here, so each keeps TensorFlow's defaults.
"""

import ctypes
import os
import sys

import tensorflow as tf

from utils import precision
from utils.core import cpu_features
from utils.core.errors import UserError
from utils.core.tf_compat import keras


def gpu_total_memory_mb(ordinal):
    """Total memory of CUDA device `ordinal` (the number in TensorFlow's physical device
    name) from the CUDA driver, or None when the driver cannot say."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        device, total = ctypes.c_int(), ctypes.c_size_t()
        if cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(device), ordinal):
            return None
        if cuda.cuDeviceTotalMem_v2(ctypes.byref(total), device):
            return None
    except (OSError, AttributeError):
        return None
    return total.value // 2**20


def configure_devices(
    dist, gpu_id: int, dali: bool = False, memory_fraction: float = 1.0, cpu: bool = False
) -> None:
    """One GPU per process (local rank under Horovod, `--gpu_id` alone), or none with
    `cpu` (--cpu: TensorFlow sees no GPU, so DALI runs on the CPU too). Runs before any
    GPU is used (Horovod is initialised but has not touched a device).

    TensorFlow takes GPU memory as it needs it (memory growth), except with DALI, where,
    as in the original, it may take at most `memory_fraction` (--gpu_memory_fraction) of
    the GPU's memory so DALI's GPU decoding keeps the rest.

    Args:
        dist: the process group. gpu_id: --gpu_id. dali: --dali.
        memory_fraction: --gpu_memory_fraction. cpu: --cpu.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if cpu and gpus:
        tf.config.set_visible_devices([], "GPU")
    if cpu or not gpus:
        return
    if dist.size > 1:
        index = dist.local_rank
        if index >= len(gpus):
            raise UserError(
                f"{dist.local_size} processes on this machine, but it shows {len(gpus)} "
                "GPU(s): start one process per GPU"
            )
    else:
        index = gpu_id
        if index >= len(gpus):
            raise UserError(
                f"--gpu_id {index} does not exist: this machine shows {len(gpus)} GPU(s)"
            )
    gpu = gpus[index]
    tf.config.set_visible_devices(gpu, "GPU")
    if dali and memory_fraction < 1.0:
        total = gpu_total_memory_mb(int(gpu.name.rsplit(":", 1)[1]))
        if total is not None:
            limit = tf.config.LogicalDeviceConfiguration(memory_limit=int(memory_fraction * total))
            tf.config.set_logical_device_configuration(gpu, [limit])
            return
        print(
            "warning: the CUDA driver did not report the GPU's memory, so "
            "--gpu_memory_fraction is not applied; TensorFlow grows its memory as needed",
            file=sys.stderr,
        )
    tf.config.experimental.set_memory_growth(gpu, True)


def _gpu_capability(gpu):
    try:
        return tf.config.experimental.get_device_details(gpu).get("compute_capability")
    except (RuntimeError, ValueError):
        return None


def configure_precision(amp, amp_dtype=None, static_loss_scale=-1, warn=True):
    """Set the Keras policy: float32, or with `amp` mixed float16/bfloat16 (utils/precision.py
    chooses the default dtype from the device). Returns the chosen dtype (None without
    `amp`); `warn`: print its warnings (one line each) on stderr."""
    chosen, warnings = None, []
    if amp:
        gpus = tf.config.list_physical_devices("GPU")
        capability = _gpu_capability(gpus[0]) if gpus else None
        chosen, warnings = precision.choose_dtype(
            amp_dtype, bool(gpus), cpu_features.native_bf16(), capability
        )
        warnings.append(precision.static_scale_warning(chosen, static_loss_scale))
    keras.mixed_precision.set_global_policy(precision.policy_name(amp, chosen))
    for line in filter(None, warnings if warn else []):
        print(line, file=sys.stderr, flush=True)
    return chosen


SEED_NOTE = (
    "--seed {seed}: op determinism is on, so a run can be repeated and resumed exactly; "
    "it costs speed on GPUs (the original had no op determinism: drop --seed for speed)"
)


def configure_seed(seed, rank):
    """Seeds differ per rank; with a seed, ops are deterministic so runs can be repeated
    (SEED_NOTE says so at the start of the run)."""
    if seed is None:
        return None
    rank_seed = seed + rank
    keras.utils.set_random_seed(rank_seed)
    tf.config.experimental.enable_op_determinism()
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    return rank_seed
