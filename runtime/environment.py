"""Process set-up before any model is built: devices, precision, seeds."""

import os

import tensorflow as tf

from utils.errors import UserError


def configure_devices(dist, gpu_id):
    """One GPU per process (local rank under Horovod, `--gpu_id` alone), memory growth on."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    index = dist.local_rank if dist.size > 1 else gpu_id
    if index >= len(gpus):
        raise UserError(f"--gpu_id {index} does not exist: this machine shows {len(gpus)} GPU(s)")
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
