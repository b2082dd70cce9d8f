"""Turning a float model into its QAT copy, and the hooks the runtime calls on it.

`quantize_model` wraps every Conv2D, GroupedConv2D and Dense layer in a `QATWrapper`;
`set_quant_step` feeds the optimizer step to the quantization delay.
"""

import tensorflow as tf

from model.layers.grouped_conv import GroupedConv2D
from model.quantization.quantizers import EMA_DECAY, ConvDenseQuantizeConfig
from model.quantization.wrapper import QATWrapper, StepRef
from model.weights import copy_float_weights
from utils.core import tf_compat
from utils.core.tf_compat import keras

QUANTIZED_LAYERS = (keras.layers.Conv2D, keras.layers.Dense, GroupedConv2D)


def is_quantized(model) -> bool:
    """Whether `model` is a QAT model (it has a `quant_step` variable)."""
    return isinstance(getattr(model, "quant_step", None), tf.Variable)


def qat_layers(model) -> list:
    """The model's `QATWrapper`s, in layer order."""
    return [layer for layer in model.layers if isinstance(layer, QATWrapper)]


def set_quant_step(model, step):
    """Tell the quantizers the optimizer step; a no-op (None) for a float model.

    Call it inside the training step before the forward pass, with
    `optimizer.iterations` (the number of steps already applied): steps 0..delay-1 then
    run in float, step `quant_delay` onwards quantized.
    """
    if not is_quantized(model):
        return None
    return model.quant_step.assign(tf.cast(step, tf.int64))


def _clone_layer(layer):
    return layer.__class__.from_config(layer.get_config())


def quantize_model(
    model: keras.Model,
    symmetric: bool = False,
    use_qdq: bool = False,
    quant_delay: int = 0,
    ema_decay: float = EMA_DECAY,
) -> keras.Model:
    """A QAT copy of the functional Keras `model`, starting from its float weights.

    Every Conv2D, GroupedConv2D and Dense layer is wrapped in a `QATWrapper` (same name);
    all other layers are cloned unchanged. Build it under the mixed-precision policy the
    run uses (the clone takes the float model's per-layer policies).

    Args:
        model: a functional float Keras model, e.g. from `model.resnet.build_model`.
        symmetric: ranges [-m, m] on the grid -127..127; else [min, max] on 0..255.
        use_qdq: QuantizeAndDequantizeV4 ops (TensorRT's explicit quantization) instead
            of FakeQuantWithMinMaxVars*.
        quant_delay: training steps that run in float before quantization starts.
        ema_decay: decay of the moving average of the input ranges.

    Returns:
        The QAT model, with a `quant_step` variable (see `set_quant_step`).

    Raises:
        ValueError: `model` is already quantized, not functional, or has no layer to
            quantize; or `quant_delay` is negative.
    """
    if is_quantized(model) or any(isinstance(layer, QATWrapper) for layer in model.layers):
        raise ValueError(f"model {model.name} is already quantized")
    if not tf_compat.is_functional(model):
        raise ValueError("quantize_model needs a functional Keras model")
    if quant_delay < 0:
        raise ValueError(f"quant_delay must be >= 0, got {quant_delay}")
    step = StepRef(tf.Variable(0, dtype=tf.int64, trainable=False, name="quant_step"))
    config = ConvDenseQuantizeConfig(symmetric, use_qdq, ema_decay)

    def clone(layer):
        if isinstance(layer, QUANTIZED_LAYERS):
            return QATWrapper(_clone_layer(layer), config, step=step, quant_delay=quant_delay)
        return _clone_layer(layer)

    qat = keras.models.clone_model(model, clone_function=clone)
    if not qat_layers(qat):
        raise ValueError(f"model {model.name} has no Conv2D, GroupedConv2D or Dense layer")
    qat.quant_step = step.variable  # tracked: in model.variables and in checkpoints
    copy_float_weights(model, qat)
    return qat
