"""The one door to Keras and to the TensorFlow/Keras internals this project relies on.

`keras` is `tf.keras` (Keras 2) on TensorFlow 2.15 and `tf_keras` (Keras 2, the legacy
package) on 2.16+, where `tf.keras` would be Keras 3. Each internal used elsewhere goes
through one function here, with the versions it was checked against; tests/test_tf_compat.py
exercises each of them on the installed stack.
"""

import functools
import importlib.util
import os

from utils.core.errors import UserError

_LEGACY_KERAS = "TF_USE_LEGACY_KERAS"

# TensorFlow picks tf.keras at its first use from TF_USE_LEGACY_KERAS. Where tf_keras is
# installed (2.16+), ask for it, so TFMOT and DALI's plugin see the Keras 2 this program
# builds with. Without tf_keras the switch only breaks tf.keras (TF 2.15 would look for the
# absent package, though its tf.keras is Keras 2 already), so a value inherited from a
# shell set up for another venv is dropped.
if importlib.util.find_spec("tf_keras") is not None:
    os.environ.setdefault(_LEGACY_KERAS, "1")
elif os.environ.get(_LEGACY_KERAS) in ("true", "True", "1"):
    del os.environ[_LEGACY_KERAS]

import tensorflow as tf  # noqa: E402

TF_VERSION = tuple(int(part) for part in tf.__version__.split(".")[:2])

if TF_VERSION >= (2, 16):
    try:
        import tf_keras as keras  # noqa: F401  (the Keras 2 API)
    except ImportError:
        raise UserError(
            f"TensorFlow {tf.__version__} needs the tf_keras package (Keras 2): "
            f"pip install 'tf_keras~={tf.__version__.rsplit('.', 1)[0]}.0', "
            "or make the venv with scripts/setup_env.sh"
        ) from None
else:
    keras = tf.keras


def loss_scale_state(optimizer) -> list:
    """The dynamic loss scale and its counter of a `LossScaleOptimizer`, which it keeps
    outside `optimizer.variables`. Checked on Keras 2.15 (and tf_keras 2.21)."""
    return [optimizer._loss_scale.current_loss_scale, optimizer.dynamic_counter]


def optimizer_slot(optimizer, slots: list, variable):
    """`slots[i]` for the slot list `slots` (e.g. `optimizer.momentums`) of an optimizer of
    Keras 2's `optimizer.Optimizer` and `variable`. Checked on Keras 2.15 (and tf_keras)."""
    return slots[optimizer._index_dict[optimizer._var_key(variable)]]


def in_xla_context() -> bool:
    """Whether ops built now will be compiled by XLA (e.g. in `tf.function(jit_compile=True)`).
    Checked on TensorFlow 2.15 (and 2.21)."""
    if tf.executing_eagerly():
        return False
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def is_functional(model) -> bool:
    """Whether `model` is a functional Keras model (layers on a graph of inputs), which
    `clone_model` can rebuild layer by layer. Checked on Keras 2.15 (and tf_keras)."""
    return bool(getattr(model, "_is_graph_network", False))


@functools.cache
def _qdq_takes_per_channel_ranges() -> bool:
    """Whether QuantizeAndDequantizeV4 takes per-channel ranges: TensorFlow 2.15's does,
    2.21's CPU kernel rejects them ("input_min must be a scalar", also with `axis`)."""
    with tf.init_scope(), tf.device("/CPU:0"):
        try:
            tf.quantization.quantize_and_dequantize_v2(
                tf.zeros([1, 2]), [-1.0, -1.0], [1.0, 1.0], range_given=True, axis=1
            )
        except tf.errors.InvalidArgumentError:
            return False
    return True


def quantize_and_dequantize(x, min_value, max_value, num_bits: int, narrow_range: bool, axis=None):
    """Signed QDQ of `x` over given ranges (per tensor, or per slice along `axis`): the V4
    op, or V3 (the same math) where V4 refuses per-channel ranges. Checked on TF 2.15/2.21."""
    if axis is not None and not _qdq_takes_per_channel_ranges():
        return tf.raw_ops.QuantizeAndDequantizeV3(
            input=x,
            input_min=min_value,
            input_max=max_value,
            num_bits=tf.constant(num_bits),
            signed_input=True,
            range_given=True,
            narrow_range=narrow_range,
            axis=axis,
        )
    return tf.quantization.quantize_and_dequantize_v2(
        x,
        min_value,
        max_value,
        signed_input=True,
        num_bits=num_bits,
        range_given=True,
        narrow_range=narrow_range,
        axis=axis,
    )
