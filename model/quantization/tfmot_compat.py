"""The one door to TensorFlow Model Optimization (TFMOT) and the internals QAT relies on.

Checked on TFMOT 0.7.5 with TensorFlow 2.15 (Keras 2). TFMOT 0.8.1 keeps the same
`QuantizeWrapper` fields and `_weight_name`, but subclasses its own `compat.keras`
(`tf_keras` where `tf.keras` is Keras 3): it then needs `utils.core.tf_compat.keras` to
be that same `tf_keras` (it is, on TensorFlow 2.16+), so that `Wrapper` is one class.
tests/test_quantization.py exercises each function here on the installed stack.
"""

import tensorflow_model_optimization as tfmot

from utils.core.tf_compat import keras

Quantizer = tfmot.quantization.keras.quantizers.Quantizer
QuantizeConfig = tfmot.quantization.keras.QuantizeConfig
QuantizeWrapper = tfmot.quantization.keras.QuantizeWrapperV2


def weight_name(wrapper, weight):
    """'kernel' for the variable 'conv/kernel:0', as TFMOT names weight quantizer state."""
    return wrapper._weight_name(weight.name)


def build_wrapper(wrapper, input_shape):
    """Build `wrapper` as a plain Keras `Wrapper`: builds the wrapped layer, and skips
    `QuantizeWrapper.build` (its unused `optimizer_step` variable and quantizer state)."""
    keras.layers.Wrapper.build(wrapper, input_shape)


def set_weight_vars(wrapper, weight_vars):
    """Store the wrapper's (attribute name, quantizer, quantizer variables) list in
    TFMOT's field; its activation and output quantizer fields stay empty (this port
    quantizes the layer's input instead)."""
    wrapper._weight_vars = weight_vars
    wrapper._quantize_activations = []
    wrapper._output_quantizers = []


def weight_vars(wrapper):
    """The list `set_weight_vars` stored."""
    return wrapper._weight_vars
