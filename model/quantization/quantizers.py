"""The quantizers (TFMOT `Quantizer`s) and the per-layer policy (a `QuantizeConfig`).

Weights: per output channel, with the kernel's own current min and max. Inputs: per
tensor, with a bias-corrected moving average of the training batches' min and max.
Both compute in float32 and let `active` (the quantization delay) pass the input through.
"""

import tensorflow as tf

from model.quantization import tfmot_compat
from model.quantization.ops import gated, quant_range, quantize, straight_through
from utils.core.tf_compat import keras

EMA_DECAY = 0.999
INIT_RANGE = 6.0  # input range before the first training batch, as TFMOT and contrib.quantize
WEIGHT_ATTRS = ("kernel",)  # quantized weights; other weights (bias) stay float
PACKAGE = "resnext_qat"  # the Keras registration prefix of the QAT classes


@keras.utils.register_keras_serializable(package=PACKAGE)
class WeightQuantizer(tfmot_compat.Quantizer):
    """Per-output-channel (last axis) 8-bit quantizer with the kernel's own min/max.

    Stateless: the range is recomputed from the weight at every call, in training and in
    inference, so no range variable can go stale when weights are copied or restored.
    `__call__(..., active=t)` returns the input unchanged where the boolean tensor `t` is
    false (the quantization delay).
    """

    def __init__(self, symmetric=False, use_qdq=False):
        self.symmetric = bool(symmetric)
        self.use_qdq = bool(use_qdq)

    def build(self, tensor_shape, name, layer):
        del tensor_shape, name, layer
        return {}

    def ranges(self, weight):
        w = tf.stop_gradient(tf.cast(weight, tf.float32))
        reduce_axes = list(range(w.shape.rank - 1))
        return quant_range(
            tf.reduce_min(w, axis=reduce_axes), tf.reduce_max(w, axis=reduce_axes), self.symmetric
        )

    def __call__(self, inputs, training, weights, active=None, **kwargs):
        del weights, kwargs
        w = tf.cast(inputs, tf.float32)
        low, high = self.ranges(w)

        def quantize_fn(t):
            return quantize(t, low, high, self.symmetric, self.use_qdq, axis=t.shape.rank - 1)

        if not training:
            return quantize_fn(w)
        # The last-value range holds every weight: the straight-through gradient is exact.
        return gated(active, straight_through(w, quantize_fn), w)

    def get_config(self):
        return {"symmetric": self.symmetric, "use_qdq": self.use_qdq}


@keras.utils.register_keras_serializable(package=PACKAGE)
class ActivationQuantizer(tfmot_compat.Quantizer):
    """Per-tensor 8-bit quantizer with a moving-average min/max range.

    Variables (non-trainable, float32 / int64): `{name}_min`, `{name}_max` (the range in
    use) and `{name}_count` (training batches seen). In training every call folds the
    batch's range into the average, bias-corrected like TF1's `assign_moving_average(...,
    zero_debias=True)`, so the first batch sets the range and early batches weigh equally;
    then it quantizes with the updated range. In inference it quantizes with the stored
    range. The range is tracked whether or not `active` lets the quantization through.
    """

    def __init__(self, symmetric=False, use_qdq=False, ema_decay=EMA_DECAY):
        self.symmetric = bool(symmetric)
        self.use_qdq = bool(use_qdq)
        self.ema_decay = float(ema_decay)

    def build(self, tensor_shape, name, layer):
        del tensor_shape

        def scalar(suffix, value, dtype=tf.float32):
            return layer.add_weight(
                f"{name}_{suffix}",
                shape=(),
                dtype=dtype,
                initializer=keras.initializers.Constant(value),
                trainable=False,
            )

        return {
            "min": scalar("min", -INIT_RANGE),
            "max": scalar("max", INIT_RANGE),
            "count": scalar("count", 0, tf.int64),
        }

    def _update(self, x, weights):
        batch_low, batch_high = quant_range(
            tf.stop_gradient(tf.reduce_min(x)), tf.stop_gradient(tf.reduce_max(x)), self.symmetric
        )
        decay = tf.constant(self.ema_decay, tf.float32)
        count = weights["count"].assign_add(1)
        t = tf.cast(count, tf.float32)
        # Bias-corrected EMA of the batch ranges: the average after t batches is
        # (d (1 - d^(t-1)) avg_(t-1) + (1 - d) batch) / (1 - d^t).
        carried = decay * (1.0 - tf.pow(decay, t - 1.0))
        norm = 1.0 - tf.pow(decay, t)
        low = weights["min"].assign((carried * weights["min"] + (1.0 - decay) * batch_low) / norm)
        high = weights["max"].assign((carried * weights["max"] + (1.0 - decay) * batch_high) / norm)
        return low, high

    def ranges(self, weights):
        """The stored range, as inference uses it."""
        return quant_range(
            tf.convert_to_tensor(weights["min"]),
            tf.convert_to_tensor(weights["max"]),
            self.symmetric,
        )

    def __call__(self, inputs, training, weights, active=None, **kwargs):
        del kwargs
        x = tf.cast(inputs, tf.float32)
        if training:
            low, high = quant_range(*self._update(x, weights), self.symmetric)
        else:
            low, high = self.ranges(weights)

        def quantize_fn(t):
            return quantize(t, low, high, self.symmetric, self.use_qdq)

        if training and self.use_qdq:
            return gated(active, straight_through(x, quantize_fn, low, high), x)
        return gated(active, quantize_fn(x), x)

    def get_config(self):
        return {"symmetric": self.symmetric, "use_qdq": self.use_qdq, "ema_decay": self.ema_decay}


@keras.utils.register_keras_serializable(package=PACKAGE)
class ConvDenseQuantizeConfig(tfmot_compat.QuantizeConfig):
    """Conv2D / GroupedConv2D / Dense: input per tensor, kernel per output channel.

    `get_input_quantizers` is this port's addition to TFMOT's interface (which has only
    weight, activation-function and output quantizers); `QATWrapper` calls it.
    """

    def __init__(self, symmetric=False, use_qdq=False, ema_decay=EMA_DECAY):
        self.symmetric = bool(symmetric)
        self.use_qdq = bool(use_qdq)
        self.ema_decay = float(ema_decay)

    def get_weights_and_quantizers(self, layer):
        return [
            (getattr(layer, attr), WeightQuantizer(self.symmetric, self.use_qdq))
            for attr in WEIGHT_ATTRS
        ]

    def get_activations_and_quantizers(self, layer):
        del layer
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        # QATWrapper swaps the quantized kernel in around the wrapped call itself.
        del layer, quantize_weights

    def set_quantize_activations(self, layer, quantize_activations):
        del layer, quantize_activations

    def get_output_quantizers(self, layer):
        del layer
        return []

    def get_input_quantizers(self, layer):
        del layer
        return [ActivationQuantizer(self.symmetric, self.use_qdq, self.ema_decay)]

    def get_config(self):
        return {"symmetric": self.symmetric, "use_qdq": self.use_qdq, "ema_decay": self.ema_decay}
