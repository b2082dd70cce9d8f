"""`QATWrapper`: the layer that fake-quantizes a conv's or dense layer's input and kernel.

It keeps the wrapped layer's name and variables, quantizes in float32 and runs the
wrapped layer's own `call` with the quantized kernel swapped in.
"""

import contextlib

import tensorflow as tf

from model.quantization import tfmot_compat
from model.quantization.quantizers import PACKAGE
from utils.core.tf_compat import keras

FLOAT_ATTRS = ("bias",)  # unquantized weights the wrapped layer's call reads


class StepRef:
    """Plain holder of the model's step variable: not tracked by the wrappers (the model
    tracks the variable once, as `quant_step`)."""

    def __init__(self, variable):
        self.variable = variable


@contextlib.contextmanager
def _swapped(layer, values):
    """Temporarily replace `layer` attributes (its kernel and bias variables) by tensors."""
    saved = {name: getattr(layer, name) for name in values}
    try:
        for name, value in values.items():
            # Bypasses Keras' attribute tracking: the layer's weights never change.
            object.__setattr__(layer, name, value)
        yield
    finally:
        for name, value in saved.items():
            object.__setattr__(layer, name, value)


@keras.utils.register_keras_serializable(package=PACKAGE)
class QATWrapper(tfmot_compat.QuantizeWrapper):
    """Fake-quantizes a layer's input and kernel, then runs the layer's own `call`.

    It keeps the wrapped layer's name (so `model.get_layer("logits_dense")` and
    copies by layer name work on QAT models) and runs under a float32 dtype policy: input
    and weights are quantized in float32, then cast to the wrapped layer's compute dtype.
    `step` (a `StepRef`) and `quant_delay` gate quantization in training; a wrapper
    rebuilt from its config has no step and is always quantized.
    """

    def __init__(self, layer, quantize_config, step=None, quant_delay=0, **kwargs):
        kwargs.setdefault("name", layer.name)  # get_layer and copies by name work on QAT models
        kwargs["dtype"] = "float32"  # quantize in float32; the wrapped layer keeps its policy
        kwargs.pop("name_prefix", None)
        super().__init__(layer, quantize_config, name_prefix="", **kwargs)
        self._step = step
        self.quant_delay = int(quant_delay)

    def build(self, input_shape):
        tfmot_compat.build_wrapper(self, input_shape)
        weight_vars = []
        for weight, quantizer in self.quantize_config.get_weights_and_quantizers(self.layer):
            name = tfmot_compat.weight_name(self, weight)
            weight_vars.append((name, quantizer, quantizer.build(weight.shape, name, self)))
        tfmot_compat.set_weight_vars(self, weight_vars)
        self._input_vars = [
            (quantizer, quantizer.build(input_shape, "input", self))
            for quantizer in self.quantize_config.get_input_quantizers(self.layer)
        ]
        self.built = True

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def _active(self, training):
        """None (always quantize) or a boolean tensor: has the delay passed?"""
        if not training or self._step is None or self.quant_delay <= 0:
            return None
        return tf.greater_equal(self._step.variable, tf.constant(self.quant_delay, tf.int64))

    def quantized_weights(self, training=True):
        """{attr: float32 tensor}: the weights as the layer's call applies them now."""
        active = self._active(training)
        return {
            name: quantizer(getattr(self.layer, name).value(), training, weights, active=active)
            for name, quantizer, weights in tfmot_compat.weight_vars(self)
        }

    def weight_ranges(self):
        """{attr: (min, max)} per output channel, the ranges the kernel is quantized with."""
        return {
            name: quantizer.ranges(getattr(self.layer, name).value())
            for name, quantizer, _ in tfmot_compat.weight_vars(self)
        }

    def input_range(self):
        """(min, max) of the input quantizer, as inference uses it."""
        quantizer, weights = self._input_vars[0]
        return quantizer.ranges(weights)

    def _call(self, inputs, training):
        active = self._active(training)
        x = inputs
        for quantizer, weights in self._input_vars:
            x = quantizer(x, training, weights, active=active)
        dtype = self.layer.compute_dtype
        values = {
            name: tf.cast(value, dtype) for name, value in self.quantized_weights(training).items()
        }
        for name in FLOAT_ATTRS:
            value = getattr(self.layer, name, None)
            if isinstance(value, tf.Variable):
                values[name] = tf.cast(value.value(), dtype)
        with _swapped(self.layer, values):  # the layer's own call, with the quantized kernel
            return self.layer.call(tf.cast(x, dtype))

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        if isinstance(training, (bool, int)):
            return self._call(inputs, bool(training))
        return tf.cond(
            tf.cast(training, tf.bool),
            lambda: self._call(inputs, True),
            lambda: self._call(inputs, False),
        )

    def get_config(self):
        config = super().get_config()
        config["quant_delay"] = self.quant_delay
        return config
