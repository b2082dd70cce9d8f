"""The quantize math: 8-bit fake quantization (or QDQ) over a range, and its gradients.

Pure functions of tensors, used by the quantizers in `model.quantization.quantizers`.
"""

import tensorflow as tf

from utils.core import tf_compat

NUM_BITS = 8
_EPS = 1e-8  # smallest quantization range, so an all-zero tensor or channel stays finite


def quantize(x, min_value, max_value, symmetric, use_qdq, axis=None):
    """Fake-quantize float32 `x` to 8 bits over [min_value, max_value].

    `axis` None: per tensor (scalar ranges); otherwise per slice along `axis`, which
    must be the last axis (ranges of shape [x.shape[-1]]).
    """
    narrow = bool(symmetric)  # symmetric: the 255-level grid -127..127
    if use_qdq:
        return tf_compat.quantize_and_dequantize(x, min_value, max_value, NUM_BITS, narrow, axis)
    if axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, min_value, max_value, num_bits=NUM_BITS, narrow_range=narrow
        )
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, min_value, max_value, num_bits=NUM_BITS, narrow_range=narrow
    )


def quant_range(batch_min, batch_max, symmetric):
    """The quantization range for observed min and max: always contains zero."""
    if symmetric:
        m = tf.maximum(tf.maximum(-batch_min, batch_max), _EPS)
        return -m, m
    low = tf.minimum(batch_min, 0.0)
    high = tf.maximum(tf.maximum(batch_max, 0.0), low + _EPS)
    return low, high


def gated(active, quantized, x):
    """`quantized` when `active` is None (ungated) or true, else `x` itself."""
    if active is None:
        return quantized
    # A select, not tf.cond: exact both ways, and cheap to trace for ~100 layers.
    return tf.where(active, quantized, x)


def straight_through(x, quantize_fn, low=None, high=None):
    """`quantize_fn(x)` with a straight-through gradient: the identity, or with `low` and
    `high` the identity inside [low, high] and zero outside (clipped values).

    For the kernels (TensorFlow's per-channel fake-quant gradient is slow on CPU) and for
    QDQ inputs (`QuantizeAndDequantizeV4Grad` has no XLA kernel; this is its formula).
    """

    @tf.custom_gradient
    def with_grad(t):
        def grad(dy):
            if low is None:
                return dy
            inside = tf.logical_and(t >= low, t <= high)
            return dy * tf.cast(inside, dy.dtype)

        return quantize_fn(t), grad

    return with_grad(x)
