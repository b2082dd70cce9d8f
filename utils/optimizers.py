"""SGD with momentum as the original applies it, optionally wrapped for loss scaling.

`MomentumSGD` is Keras' SGD (same slots, checkpoints, loss-scale wrapper) with TF1's
`MomentumOptimizer` update, `accum = momentum * accum + grad; var -= lr * accum`, computed
by TF1's fused kernel; Keras' own update differs whenever the learning rate changes
(warmup, cosine decay). Why, in full: docs/design.md, "Training math".
"""

import tensorflow as tf

from utils.checks import DYNAMIC_LOSS_SCALE, loss_scale_problem
from utils.core import tf_compat
from utils.core.errors import UserError
from utils.core.tf_compat import keras


@keras.utils.register_keras_serializable(package="resnext")
class MomentumSGD(keras.optimizers.SGD):
    """Keras SGD with TF1 MomentumOptimizer's update (lr applied to the accumulator)."""

    def __init__(self, learning_rate=0.01, momentum=0.9, name="MomentumSGD", **kwargs):
        if kwargs.pop("nesterov", False):
            raise ValueError("MomentumSGD does not implement Nesterov momentum")
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)

    def update_step(self, gradient, variable):
        lr = tf.cast(self.learning_rate, variable.dtype)
        momentum = tf.cast(self.momentum, variable.dtype)
        accum = tf_compat.optimizer_slot(self, self.momentums, variable)
        # Sparse gradients are applied densely; the convnets here never produce them.
        gradient = tf.convert_to_tensor(gradient)
        # TF1's own kernel: one op per variable instead of five, same values bit for bit
        # (tests/test_optimizers.py); XLA compiles it too.
        tf.raw_ops.ResourceApplyMomentum(
            var=variable.handle, accum=accum.handle, lr=lr, grad=gradient, momentum=momentum
        )


def build_optimizer(learning_rate, momentum, amp, static_loss_scale):
    """MomentumSGD; with `amp`, wrapped in a LossScaleOptimizer.

    static_loss_scale -1 selects dynamic loss scaling; any other value is a fixed scale.
    """
    optimizer = MomentumSGD(learning_rate=learning_rate, momentum=momentum)
    if not amp:
        return optimizer
    problem = loss_scale_problem(static_loss_scale)
    if problem:
        raise UserError(problem)
    if static_loss_scale == DYNAMIC_LOSS_SCALE:
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return keras.mixed_precision.LossScaleOptimizer(
        optimizer, dynamic=False, initial_scale=float(static_loss_scale)
    )
