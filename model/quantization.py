"""Quantization-aware training (QAT): fake quantization around every conv and dense layer.

`quantize_model(model, symmetric=False, use_qdq=False, quant_delay=0)` turns a float
Keras model of `model.resnet.build_model` into a QAT model: a copy of it (same layer
names, same float weights) in which every `Conv2D` (stem, 1x1, projection shortcut, the
`--use_final_conv` head), every `GroupedConv2D` (the ResNeXt 3x3) and every `Dense` (SE
gates, classifier) is wrapped in a `QATWrapper` that fake-quantizes

- the layer's input (8 bits, per tensor): the range is a moving average (decay 0.999,
  bias-corrected so the first batch sets it) of each training batch's min and max,
  updated in every training step, frozen in inference;
- the kernel (8 bits, per output channel, i.e. the last kernel axis): the range is the
  kernel's own current min and max ("last value"), recomputed at every call, so weights
  copied or restored into the model are quantized with their own ranges.

Asymmetric (default): ranges [min(x_min, 0), max(x_max, 0)] on the 256-level grid
(`narrow_range=False`, zero exactly representable). Symmetric (`symmetric=True`): ranges
[-m, m] with m = max(|x_min|, |x_max|) on the 255-level grid -127..127 (`narrow_range=True`),
so zero is the exact midpoint and the ranges are symmetric around zero.

Ops: `tf.quantization.fake_quant_with_min_max_vars(_per_channel)` (FakeQuantWithMinMaxVars*),
or with `use_qdq=True` `tf.quantization.quantize_and_dequantize_v2` (QuantizeAndDequantizeV4
op, signed, range given, `axis` for the per-channel kernels), the form TensorRT's explicit
quantization imports. QDQ has no zero point: an asymmetric range [a, b] is quantized with
the scale max(-a/128, b/127) over the signed grid, so with `use_qdq` `symmetric=True` is
the natural choice. Biases are not quantized (INT8 engines derive their int32 scale), BN
is kept as is (not folded into the convs), residual adds and pools are not quantized.

Quantizers compute in float32 whatever the mixed-precision policy: the wrapper runs under
a float32 policy (so it reads the float32 master weights and ranges), quantizes input and
kernel in float32, then casts them to the wrapped layer's compute dtype (float16 under
`mixed_float16`) and runs the wrapped layer's own `call` with the quantized kernel.

Quantization delay: the QAT model owns one non-trainable int64 variable, `model.quant_step`.
In training mode (`training=True`) every quantizer returns `tf.where(quant_step >=
quant_delay, quantized, input)`, so before the delay the model computes exactly the float
function, forward and backward (input ranges are still tracked from step 0, as TF1's
contrib.quantize did). The training step must call `set_quant_step(model,
optimizer.iterations)` before the forward pass. In inference (`training=False`:
evaluation, prediction, export) the model is always quantized, as TF1's eval graph was,
so an exported SavedModel holds the quantize ops inline with their ranges (stored
variables for inputs, reductions of the constant kernels for weights).

Gradients: the per-tensor fake-quant ops use their own gradient (straight through inside
the range, zero for clipped values). The kernels use a plain straight-through gradient
(their last-value ranges contain every weight), because TensorFlow's CPU kernels for the
per-channel gradient loop over channels (~0.15 s per million weights); QDQ inputs use the
same formula as `QuantizeAndDequantizeV4Grad`, which has no XLA kernel.

Built on TensorFlow Model Optimization 0.7.5 (`tfmot.quantization.keras`, Keras 2): the
quantizers are `Quantizer`s, the per-layer policy is a `QuantizeConfig` and the wrapper
is a `QuantizeWrapperV2` subclass. TFMOT's `quantize_model`/`quantize_apply` and its
built-in `LastValueQuantizer`/`MovingAverageQuantizer` are not used: they have no QDQ ops
and no quantization delay; `quantize_apply` quantizes the outputs of the layers feeding
a conv (through its registry, which knows neither `GroupedConv2D` nor the `Lambda`
normalisation) rather than the conv's input, always wraps with its own
`QuantizeWrapperV2` and passes configs through serialization (no way to share the step
variable); its moving average starts at [-6, 6] without bias correction (thousands of
steps to reach the real range at decay 0.999); its stored weight ranges go stale when
float weights are copied in; and `quantize_model` fails under `mixed_float16` (a
TypeError in its `QuantizeLayer`).
"""

import contextlib
import functools

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from model.layers.grouped_conv import GroupedConv2D

NUM_BITS = 8
EMA_DECAY = 0.999
INIT_RANGE = 6.0  # input range before the first training batch, as TFMOT and contrib.quantize
_EPS = 1e-8  # smallest quantization range, so an all-zero tensor or channel stays finite
QUANTIZED_LAYERS = (tf.keras.layers.Conv2D, tf.keras.layers.Dense, GroupedConv2D)
WEIGHT_ATTRS = ("kernel",)  # quantized weights; other weights (bias) stay float
FLOAT_ATTRS = ("bias",)  # unquantized weights the wrapped layer's call reads
_PACKAGE = "resnext_qat"


# --------------------------------------------------------------------------------------
# Quantize ops


@functools.cache
def _qdq_v4_per_channel():
    """Whether QuantizeAndDequantizeV4 takes per-channel ranges. TensorFlow 2.21's CPU
    kernel rejects them ("input_min must be a scalar", also with `axis`); V3 takes them."""
    with tf.init_scope(), tf.device("/CPU:0"):
        try:
            tf.quantization.quantize_and_dequantize_v2(
                tf.zeros([1, 2]), [-1.0, -1.0], [1.0, 1.0], range_given=True, axis=1
            )
        except tf.errors.InvalidArgumentError:
            return False
    return True


def _quantize(x, min_value, max_value, symmetric, use_qdq, axis=None):
    """Fake-quantize float32 `x` to 8 bits over [min_value, max_value].

    `axis` None: per tensor (scalar ranges); otherwise per slice along `axis`, which
    must be the last axis (ranges of shape [x.shape[-1]]).
    """
    narrow = bool(symmetric)
    if use_qdq and axis is not None and not _qdq_v4_per_channel():
        # The same quantize-dequantize as V4 (one kernel), num_bits given as a tensor.
        return tf.raw_ops.QuantizeAndDequantizeV3(
            input=x,
            input_min=min_value,
            input_max=max_value,
            num_bits=tf.constant(NUM_BITS),
            signed_input=True,
            range_given=True,
            narrow_range=narrow,
            axis=axis,
        )
    if use_qdq:
        return tf.quantization.quantize_and_dequantize_v2(
            x,
            min_value,
            max_value,
            signed_input=True,
            num_bits=NUM_BITS,
            range_given=True,
            narrow_range=narrow,
            axis=axis,
        )
    if axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, min_value, max_value, num_bits=NUM_BITS, narrow_range=narrow
        )
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, min_value, max_value, num_bits=NUM_BITS, narrow_range=narrow
    )


def _range(batch_min, batch_max, symmetric):
    """The quantization range for observed min and max: always contains zero."""
    if symmetric:
        m = tf.maximum(tf.maximum(-batch_min, batch_max), _EPS)
        return -m, m
    low = tf.minimum(batch_min, 0.0)
    high = tf.maximum(tf.maximum(batch_max, 0.0), low + _EPS)
    return low, high


def _gated(active, quantized, x):
    """`quantized` when `active` is None (ungated) or true, else `x` itself.

    A select rather than `tf.cond`: exact in both directions (the unselected input gets a
    zero gradient) and much cheaper to trace and to save than ~100 conditional branches.
    """
    if active is None:
        return quantized
    return tf.where(active, quantized, x)


def _straight_through(x, quantize, low=None, high=None):
    """`quantize(x)` with a straight-through gradient: the identity, or with `low` and
    `high` the identity inside [low, high] and zero outside (clipped values).

    Used for the kernels (their last-value ranges contain every weight, so the op's own
    gradient is the identity too, and TensorFlow's CPU kernels for the per-channel ops
    loop over channels, the gradient many times slower than the conv itself) and for
    QDQ inputs (`QuantizeAndDequantizeV4Grad` has no XLA kernel; this is its formula).
    """

    @tf.custom_gradient
    def straight_through(t):
        def grad(dy):
            if low is None:
                return dy
            inside = tf.logical_and(t >= low, t <= high)
            return dy * tf.cast(inside, dy.dtype)

        return quantize(t), grad

    return straight_through(x)


# --------------------------------------------------------------------------------------
# Quantizers (tfmot Quantizer interface)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class WeightQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
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
        return _range(
            tf.reduce_min(w, axis=reduce_axes), tf.reduce_max(w, axis=reduce_axes), self.symmetric
        )

    def __call__(self, inputs, training, weights, active=None, **kwargs):
        del weights, kwargs
        w = tf.cast(inputs, tf.float32)
        low, high = self.ranges(w)

        def quantize(t):
            return _quantize(t, low, high, self.symmetric, self.use_qdq, axis=t.shape.rank - 1)

        if not training:
            return quantize(w)
        return _gated(active, _straight_through(w, quantize), w)

    def get_config(self):
        return {"symmetric": self.symmetric, "use_qdq": self.use_qdq}


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class ActivationQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
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
                initializer=tf.keras.initializers.Constant(value),
                trainable=False,
            )

        return {
            "min": scalar("min", -INIT_RANGE),
            "max": scalar("max", INIT_RANGE),
            "count": scalar("count", 0, tf.int64),
        }

    def _update(self, x, weights):
        batch_low, batch_high = _range(
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
        return _range(
            tf.convert_to_tensor(weights["min"]),
            tf.convert_to_tensor(weights["max"]),
            self.symmetric,
        )

    def __call__(self, inputs, training, weights, active=None, **kwargs):
        del kwargs
        x = tf.cast(inputs, tf.float32)
        if training:
            low, high = _range(*self._update(x, weights), self.symmetric)
        else:
            low, high = self.ranges(weights)

        def quantize(t):
            return _quantize(t, low, high, self.symmetric, self.use_qdq)

        if training and self.use_qdq:
            return _gated(active, _straight_through(x, quantize, low, high), x)
        return _gated(active, quantize(x), x)

    def get_config(self):
        return {"symmetric": self.symmetric, "use_qdq": self.use_qdq, "ema_decay": self.ema_decay}


# --------------------------------------------------------------------------------------
# Per-layer configuration (tfmot QuantizeConfig interface) and the wrapper


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class ConvDenseQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
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
        # QATWrapper swaps the quantized kernel in around the wrapped call (`_swapped`).
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


class _StepRef:
    """Plain holder of the model's step variable: not tracked by the wrappers (the model
    tracks the variable once, as `quant_step`)."""

    def __init__(self, variable):
        self.variable = variable


@contextlib.contextmanager
def _swapped(layer, values):
    """Temporarily replace `layer` attributes (its kernel and bias variables) by tensors.

    `object.__setattr__` bypasses Keras' attribute tracking, so the wrapped layer's
    weights and checkpoint dependencies never change; the variables are put back after
    the call.
    """
    saved = {name: getattr(layer, name) for name in values}
    try:
        for name, value in values.items():
            object.__setattr__(layer, name, value)
        yield
    finally:
        for name, value in saved.items():
            object.__setattr__(layer, name, value)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class QATWrapper(tfmot.quantization.keras.QuantizeWrapperV2):
    """Fake-quantizes a layer's input and kernel, then runs the layer's own `call`.

    It keeps the wrapped layer's name (so `model.get_layer("logits_dense")` and
    copies by layer name work on QAT models) and runs under a float32 dtype policy: input
    and weights are quantized in float32, then cast to the wrapped layer's compute dtype.
    `step` (a `_StepRef`) and `quant_delay` gate quantization in training; a wrapper
    rebuilt from its config has no step and is always quantized.
    """

    def __init__(self, layer, quantize_config, step=None, quant_delay=0, **kwargs):
        kwargs.setdefault("name", layer.name)
        kwargs["dtype"] = "float32"
        kwargs.pop("name_prefix", None)
        super().__init__(layer, quantize_config, name_prefix="", **kwargs)
        self._step = step
        self.quant_delay = int(quant_delay)

    def build(self, input_shape):
        tf.keras.layers.Wrapper.build(self, input_shape)
        self._weight_vars = []
        for weight, quantizer in self.quantize_config.get_weights_and_quantizers(self.layer):
            name = self._weight_name(weight.name)
            self._weight_vars.append((name, quantizer, quantizer.build(weight.shape, name, self)))
        self._input_vars = [
            (quantizer, quantizer.build(input_shape, "input", self))
            for quantizer in self.quantize_config.get_input_quantizers(self.layer)
        ]
        self._quantize_activations = []
        self._output_quantizers = []
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
            for name, quantizer, weights in self._weight_vars
        }

    def weight_ranges(self):
        """{attr: (min, max)} per output channel, the ranges the kernel is quantized with."""
        return {
            name: quantizer.ranges(getattr(self.layer, name).value())
            for name, quantizer, _ in self._weight_vars
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
        with _swapped(self.layer, values):
            return self.layer.call(tf.cast(x, dtype))

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        if training is None:
            training = tf.keras.backend.learning_phase()
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


# --------------------------------------------------------------------------------------
# Public API


def is_quantized(model):
    return isinstance(getattr(model, "quant_step", None), tf.Variable)


def qat_layers(model):
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


def qat_scope():
    """Custom-object scope to deserialize a QAT model's config (TFMOT's `quantize_scope`)."""
    return tfmot.quantization.keras.quantize_scope(
        {
            "QATWrapper": QATWrapper,
            "ConvDenseQuantizeConfig": ConvDenseQuantizeConfig,
            "WeightQuantizer": WeightQuantizer,
            "ActivationQuantizer": ActivationQuantizer,
            "GroupedConv2D": GroupedConv2D,
        }
    )


def _weighted_layers(model):
    return {layer.name: layer for layer in model.layers if layer.weights}


def _float_layer(layer):
    return layer.layer if isinstance(layer, QATWrapper) else layer


def copy_float_weights(source, target, skip=()):
    """Copy every layer's float weights from `source` into `target`, matched by name.

    Either model may be float or QAT: a `QATWrapper` contributes or receives its wrapped
    layer's weights (kernel, bias); quantizer ranges, counters and `quant_step` are left
    alone. Layers named in `skip` are not copied (e.g. a head with another class count).
    Returns the names of the copied layers. Raises ValueError when the layer names or
    weight shapes differ outside `skip`.
    """
    src, dst = _weighted_layers(source), _weighted_layers(target)
    skip = set(skip)
    missing = sorted(set(dst) - set(src) - skip)
    extra = sorted(set(src) - set(dst) - skip)
    if missing or extra:
        raise ValueError(
            f"models differ: layers only in the target {missing[:5]}, "
            f"only in the source {extra[:5]}"
        )
    copied = []
    for name, layer in dst.items():
        if name in skip:
            continue
        to_layer, from_layer = _float_layer(layer), _float_layer(src[name])
        values = from_layer.get_weights()
        shapes = [tuple(w.shape) for w in to_layer.weights]
        if shapes != [tuple(v.shape) for v in values]:
            raise ValueError(
                f"layer {name}: weight shapes {shapes} differ from the source's "
                f"{[tuple(v.shape) for v in values]}"
            )
        to_layer.set_weights(values)
        copied.append(name)
    return copied


def _clone_layer(layer):
    return layer.__class__.from_config(layer.get_config())


def quantize_model(model, symmetric=False, use_qdq=False, quant_delay=0, ema_decay=EMA_DECAY):
    """A QAT copy of the functional Keras `model`, starting from its float weights.

    Every Conv2D, GroupedConv2D and Dense layer is wrapped in a `QATWrapper` (same name);
    all other layers are cloned unchanged. Build it under the mixed-precision policy the
    run uses (the clone takes the float model's per-layer policies). The result has a
    `quant_step` variable; see `set_quant_step` and the module docstring.
    """
    if is_quantized(model) or any(isinstance(layer, QATWrapper) for layer in model.layers):
        raise ValueError(f"model {model.name} is already quantized")
    if not getattr(model, "_is_graph_network", False):
        raise ValueError("quantize_model needs a functional Keras model")
    if quant_delay < 0:
        raise ValueError(f"quant_delay must be >= 0, got {quant_delay}")
    step = _StepRef(tf.Variable(0, dtype=tf.int64, trainable=False, name="quant_step"))
    config = ConvDenseQuantizeConfig(symmetric, use_qdq, ema_decay)

    def clone(layer):
        if isinstance(layer, QUANTIZED_LAYERS):
            return QATWrapper(_clone_layer(layer), config, step=step, quant_delay=quant_delay)
        return _clone_layer(layer)

    qat = tf.keras.models.clone_model(model, clone_function=clone)
    if not qat_layers(qat):
        raise ValueError(f"model {model.name} has no Conv2D, GroupedConv2D or Dense layer")
    qat.quant_step = step.variable  # tracked: in model.variables and in checkpoints
    # Not a tracked attribute (Keras would wrap the dict into the checkpointed state).
    object.__setattr__(
        qat,
        "quant_config",
        {
            "symmetric": bool(symmetric),
            "use_qdq": bool(use_qdq),
            "quant_delay": int(quant_delay),
            "ema_decay": float(ema_decay),
        },
    )
    copy_float_weights(model, qat)
    return qat
