"""Process set-up before any model is built: devices, precision, seeds.

With several processes (Horovod) each process takes the GPU of its local rank (--gpu_id
only picks the GPU of a single process) and its own seed (--seed + rank), so ranks shuffle
and augment differently; the model's initial weights come from rank 0 by broadcast. On a
machine without GPUs the processes share the cores; splitting TensorFlow's thread pools
between them was measured no faster here, so each keeps TensorFlow's defaults.
"""

import os

import tensorflow as tf

from utils.errors import UserError


def configure_devices(dist, gpu_id):
    """One GPU per process (local rank under Horovod, `--gpu_id` alone), memory growth on.
    Runs before any GPU is used (Horovod is initialised but has not touched a device)."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
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
    tf.config.set_visible_devices(gpus[index], "GPU")
    tf.config.experimental.set_memory_growth(gpus[index], True)


def configure_precision(amp):
    tf.keras.mixed_precision.set_global_policy("mixed_float16" if amp else "float32")


def configure_seed(seed, rank):
    """Seeds differ per rank; with a seed, ops are deterministic so runs can be repeated."""
    if seed is None:
        return None
    rank_seed = seed + rank
    tf.keras.utils.set_random_seed(rank_seed)
    tf.config.experimental.enable_op_determinism()
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    return rank_seed
