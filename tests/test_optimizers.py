"""MomentumSGD's fused update against the separate-ops formulation it replaced, bit for bit."""

import numpy as np
import pytest
import tensorflow as tf

from utils.core.tf_compat import keras
from utils.learning_rate import WarmupDecaySchedule
from utils.optimizers import MomentumSGD

STEPS = 6


class SeparateOpsMomentumSGD(MomentumSGD):
    """The reference: TF1's update as separate ops (accum = m*accum + g; var -= lr*accum)."""

    def update_step(self, gradient, variable):
        lr = tf.cast(self.learning_rate, variable.dtype)
        momentum = tf.cast(self.momentum, variable.dtype)
        accum = self.momentums[self._index_dict[self._var_key(variable)]]
        gradient = tf.convert_to_tensor(gradient)
        accum.assign(momentum * accum + gradient)
        variable.assign_sub(lr * accum)


def plain_variables():
    rng = np.random.default_rng(1)
    return [tf.Variable(rng.normal(size=s).astype(np.float32)) for s in ([3, 3, 4, 8], [8])]


def autocast_variables():
    """Under mixed_float16 the model's weights are AutoCastVariables around float32 ones."""
    keras.utils.set_random_seed(2)
    layer = keras.layers.Dense(8, dtype="mixed_float16")
    layer.build([None, 5])
    assert type(layer.kernel).__name__ == "AutoCastVariable"
    return layer.trainable_variables


def train(optimizer_class, how, variables):
    """`STEPS` updates with fixed random gradients, the learning rate changing at every step
    (warmup, then cosine decay); returns the initial values, then the variables and momentum
    slots after the steps."""
    initial = [v.numpy() for v in variables]
    schedule = WarmupDecaySchedule(0.256, 256, 1, STEPS + 2, 3, cosine=True)
    optimizer = optimizer_class(learning_rate=schedule, momentum=0.9)
    optimizer.build(variables)

    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables))

    if how == "keras_xla":  # Keras' per-variable XLA update (its default on GPUs)
        optimizer.jit_compile = True
    elif how != "eager":
        apply = tf.function(apply, jit_compile=how == "jit_compile")
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        apply([tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in variables])
    assert int(optimizer.iterations) == STEPS
    return initial, [v.numpy() for v in variables] + [m.numpy() for m in optimizer.momentums]


@pytest.mark.parametrize("how", ["eager", "tf_function", "jit_compile", "keras_xla"])
@pytest.mark.parametrize("make_variables", [plain_variables, autocast_variables])
def test_fused_update_is_bit_identical_to_separate_ops(how, make_variables):
    initial, want = train(SeparateOpsMomentumSGD, how, make_variables())
    _, got = train(MomentumSGD, how, make_variables())
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
    for before, after in zip(initial, got):
        assert not np.allclose(before, after)  # the steps did move every variable
