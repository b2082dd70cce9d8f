"""The LR schedule against the recipe's formulas, and the optimizer's update rule."""

import math

import numpy as np
import pytest
import tensorflow as tf

from utils.core.errors import UserError
from utils.core.tf_compat import keras
from utils.learning_rate import WarmupDecaySchedule
from utils.optimizers import MomentumSGD, build_optimizer


def lr_at(schedule, step):
    return float(schedule(tf.constant(step, tf.int64)))


def cosine_schedule(**overrides):
    # base = 0.256 * 1024 / 256 = 1.024; warmup 8 epochs of 100 steps; 90 epochs in all.
    args = dict(
        lr_init=0.256,
        global_batch_size=1024,
        steps_per_epoch=100,
        total_steps=9000,
        lr_warmup_epochs=8,
        cosine=True,
    )
    args.update(overrides)
    return WarmupDecaySchedule(**args)


def step_schedule(**overrides):
    return cosine_schedule(cosine=False, lr_warmup_epochs=5, **overrides)


BASE = 1.024


def test_warmup_is_linear_from_zero_using_the_step_itself():
    schedule = cosine_schedule()
    assert schedule.warmup_steps == 800
    assert lr_at(schedule, 0) == 0.0
    assert lr_at(schedule, 400) == pytest.approx(BASE * 400 / 800, rel=1e-6)
    assert lr_at(schedule, 799) == pytest.approx(BASE * 799 / 800, rel=1e-6)


def test_cosine_counts_from_step_zero_not_from_warmup_end():
    schedule = cosine_schedule()
    expected = BASE * 0.5 * (1 + math.cos(math.pi * 800 / 9000))
    assert lr_at(schedule, 800) == pytest.approx(expected, rel=1e-6)
    assert lr_at(schedule, 800) < BASE


def test_cosine_midpoint_end_and_beyond():
    schedule = cosine_schedule()
    assert lr_at(schedule, 4500) == pytest.approx(BASE / 2, rel=1e-6)
    assert lr_at(schedule, 6000) == pytest.approx(
        BASE * 0.5 * (1 + math.cos(math.pi * 6000 / 9000)), rel=1e-5
    )
    assert lr_at(schedule, 9000) == pytest.approx(0.0, abs=1e-7)
    assert lr_at(schedule, 20000) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_divides_by_ten_after_each_boundary_epoch():
    schedule = step_schedule()
    assert schedule.warmup_steps == 500
    expected = {
        500: BASE,
        2999: BASE,
        3000: BASE,  # piecewise_constant: the boundary step keeps the earlier value
        3001: BASE * 0.1,
        6000: BASE * 0.1,
        6001: BASE * 0.01,
        8001: BASE * 1e-3,
        9001: BASE * 1e-4,
        50000: BASE * 1e-4,
    }
    for step, value in expected.items():
        assert lr_at(schedule, step) == pytest.approx(value, rel=1e-6), step


def test_base_scales_with_global_batch():
    for batch, base in [(256, 0.1), (1024, 0.4), (2048, 0.8)]:
        schedule = WarmupDecaySchedule(0.1, batch, 10, 900, 1, cosine=False)
        assert lr_at(schedule, 10) == pytest.approx(base, rel=1e-6)


def test_fractional_steps_per_epoch_and_no_warmup():
    assert cosine_schedule(steps_per_epoch=12.5).warmup_steps == 100
    schedule = cosine_schedule(lr_warmup_epochs=0)
    assert schedule.warmup_steps == 0
    assert lr_at(schedule, 0) == pytest.approx(BASE, rel=1e-6)


def test_works_on_an_int64_variable_inside_tf_function():
    schedule = cosine_schedule()
    step = tf.Variable(400, dtype=tf.int64)
    value = tf.function(lambda: schedule(step))()
    assert value.dtype == tf.float32
    assert float(value) == pytest.approx(BASE / 2, rel=1e-6)


def test_config_round_trip_and_keras_serialisation():
    schedule = cosine_schedule(steps_per_epoch=12.5)
    copy = WarmupDecaySchedule.from_config(schedule.get_config())
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    for other in (copy, restored):
        assert isinstance(other, WarmupDecaySchedule)
        for step in (0, 50, 100, 700):
            assert lr_at(other, step) == lr_at(schedule, step)


def test_cosine_without_steps_is_a_user_error():
    with pytest.raises(UserError):
        cosine_schedule(total_steps=0)


# --- optimizer ---------------------------------------------------------------------------


def run_quadratic(optimizer, w0, steps):
    """Minimises 0.5 * sum(w^2) (gradient = w) for `steps` updates; returns w per step."""
    w = tf.Variable(w0, dtype=tf.float32)
    history = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(w * w)
        optimizer.apply_gradients([(tape.gradient(loss, w), w)])
        history.append(w.numpy().copy())
    return history


def tf1_momentum_reference(w0, lrs, momentum):
    """accum = m * accum + g; w -= lr * accum (TF1 MomentumOptimizer), g = w."""
    w = np.array(w0, np.float64)
    accum = np.zeros_like(w)
    history = []
    for lr in lrs:
        accum = momentum * accum + w
        w = w - lr * accum
        history.append(w.copy())
    return history


def test_momentum_update_matches_hand_computation_with_constant_lr():
    w0 = [1.0, -2.0, 0.5]
    got = run_quadratic(MomentumSGD(learning_rate=0.1, momentum=0.875), w0, 5)
    want = tf1_momentum_reference(w0, [0.1] * 5, 0.875)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_momentum_update_applies_the_current_lr_to_the_accumulator():
    # lr per step: warmup 0, 0.064, 0.128, 0.192, then cosine over 10 steps.
    schedule = WarmupDecaySchedule(0.256, 256, 1, 10, 4, cosine=True)
    lrs = [lr_at(schedule, s) for s in range(8)]
    assert lrs[:4] == pytest.approx([0.0, 0.064, 0.128, 0.192], rel=1e-6)
    w0 = [1.0, -3.0]
    got = run_quadratic(MomentumSGD(learning_rate=schedule, momentum=0.9), w0, 8)
    want = tf1_momentum_reference(w0, lrs, 0.9)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Keras' own SGD folds past learning rates into its velocity: a different result.
    keras_sgd = run_quadratic(keras.optimizers.SGD(learning_rate=schedule, momentum=0.9), w0, 8)
    assert not np.allclose(keras_sgd[-1], want[-1], rtol=1e-3)


def test_momentum_sgd_config_round_trip():
    optimizer = MomentumSGD(learning_rate=cosine_schedule(), momentum=0.875)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, MomentumSGD)
    assert restored.momentum == 0.875
    assert isinstance(restored._learning_rate, WarmupDecaySchedule)


def test_build_optimizer_without_amp_is_plain_momentum_sgd():
    optimizer = build_optimizer(0.1, 0.9, amp=False, static_loss_scale=128)
    assert type(optimizer) is MomentumSGD
    assert optimizer.momentum == 0.9
    assert not optimizer.nesterov


def apply_gradient(optimizer, variable, gradient):
    optimizer.apply_gradients([(tf.constant(gradient, tf.float32), variable)])
    return float(optimizer.loss_scale)


def test_dynamic_loss_scale_halves_on_overflow():
    optimizer = build_optimizer(0.1, 0.9, amp=True, static_loss_scale=-1)
    assert isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    assert isinstance(optimizer.inner_optimizer, MomentumSGD)
    assert optimizer.dynamic
    start = float(optimizer.loss_scale)
    w = tf.Variable([1.0, 2.0])
    assert apply_gradient(optimizer, w, [np.inf, 1.0]) == start / 2


def test_static_loss_scale_stays_fixed():
    optimizer = build_optimizer(0.1, 0.9, amp=True, static_loss_scale=128)
    assert not optimizer.dynamic
    assert float(optimizer.loss_scale) == 128.0
    w = tf.Variable([1.0, 2.0])
    assert apply_gradient(optimizer, w, [1.0, 1.0]) == 128.0
    assert apply_gradient(optimizer, w, [np.inf, 1.0]) == 128.0
    assert float(optimizer.get_scaled_loss(tf.constant(2.0))) == 256.0


def test_invalid_static_loss_scale_is_a_user_error():
    with pytest.raises(UserError):
        build_optimizer(0.1, 0.9, amp=True, static_loss_scale=0)
