"""Where layers run: some CPU kernels lack features the GPU ones have."""

import functools

import tensorflow as tf


@functools.cache
def gpu_available():
    """True when TensorFlow sees a GPU; layers then use the native (cuDNN) kernels."""
    return bool(tf.config.list_logical_devices("GPU"))
