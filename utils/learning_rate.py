"""The original recipe's learning-rate schedule: linear warmup, then cosine or step decay.

Matches DeepLearningExamples' TF1 `utils/learning_rate.py`:
- base = lr_init * global_batch / 256
- warmup: step < W -> base * step / W, with W = int(steps_per_epoch * lr_warmup_epochs),
  so the first update (step 0) uses lr 0
- cosine: base * 0.5 * (1 + cos(pi * min(step, D) / D)), counted from step 0 (not from the
  end of warmup), D = total_steps
- step: base * [1, 0.1, 0.01, 1e-3, 1e-4] after epochs 30, 60, 80, 90; as in
  `tf.train.piecewise_constant`, a boundary step b still uses the value before it
"""

import math

import tensorflow as tf

from utils.core.errors import UserError
from utils.core.tf_compat import keras

STEP_DECAY_EPOCHS = (30, 60, 80, 90)
STEP_DECAY_FACTORS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)


@keras.utils.register_keras_serializable(package="resnext")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0, then cosine (`cosine=True`) or step decay of the scaled base LR."""

    def __init__(
        self,
        lr_init,
        global_batch_size,
        steps_per_epoch,
        total_steps,
        lr_warmup_epochs,
        cosine,
    ):
        super().__init__()
        if global_batch_size <= 0 or steps_per_epoch <= 0:
            raise UserError(
                f"need a positive batch size and steps per epoch, got global batch "
                f"{global_batch_size} and {steps_per_epoch} steps per epoch"
            )
        if lr_warmup_epochs < 0:
            raise UserError(f"--lr_warmup_epochs must be >= 0, got {lr_warmup_epochs}")
        if cosine and total_steps <= 0:
            raise UserError(f"--cosine_lr needs at least one training step, got {total_steps}")
        self.lr_init = float(lr_init)
        self.global_batch_size = int(global_batch_size)
        # May be fractional: the original derives it as total_steps / epochs.
        self.steps_per_epoch = float(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.lr_warmup_epochs = float(lr_warmup_epochs)
        self.cosine = bool(cosine)

        self.base_lr = self.lr_init * self.global_batch_size / 256.0
        self.warmup_steps = int(self.steps_per_epoch * self.lr_warmup_epochs)
        self.boundaries = [int(self.steps_per_epoch * e) for e in STEP_DECAY_EPOCHS]
        self.step_values = [self.base_lr * f for f in STEP_DECAY_FACTORS]

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        step_f = tf.cast(step, tf.float32)
        base = tf.constant(self.base_lr, tf.float32)

        if self.cosine:
            decay_steps = tf.constant(float(self.total_steps), tf.float32)
            fraction = tf.minimum(step_f, decay_steps) / decay_steps
            decayed = base * (0.5 * (1.0 + tf.cos(math.pi * fraction)))
        else:
            passed = tf.reduce_sum(tf.cast(step > tf.constant(self.boundaries, tf.int64), tf.int32))
            decayed = tf.gather(tf.constant(self.step_values, tf.float32), passed)

        warmup = base * step_f / float(max(self.warmup_steps, 1))
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {
            "lr_init": self.lr_init,
            "global_batch_size": self.global_batch_size,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "lr_warmup_epochs": self.lr_warmup_epochs,
            "cosine": self.cosine,
        }
