"""Label smoothing, mixup, cross-entropy and weight decay against hand computations."""

import numpy as np
import pytest
import tensorflow as tf

from utils.core.tf_compat import keras
from utils.losses import (
    cross_entropy,
    decayed_variables,
    l2_loss,
    mix_batch,
    mixup,
    sample_mixup_lambda,
    smoothed_one_hot,
)


def test_label_smoothing_targets_for_imagenet():
    targets = smoothed_one_hot(tf.constant([0, 999, 417]), 1000, 0.1).numpy()
    assert targets.dtype == np.float32
    assert targets.shape == (3, 1000)
    on, off = 1 - 0.1 + 0.1 / 1000, 0.1 / 1000
    assert targets[0, 0] == pytest.approx(on)
    assert targets[1, 999] == pytest.approx(on)
    assert targets[2, 417] == pytest.approx(on)
    assert targets[0, 1] == pytest.approx(off)
    assert np.count_nonzero(np.isclose(targets, off)) == 3 * 999
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)


def test_no_smoothing_is_plain_one_hot():
    targets = smoothed_one_hot(tf.constant([2, 0]), 4, 0.0).numpy()
    np.testing.assert_array_equal(targets, [[0, 0, 1, 0], [1, 0, 0, 0]])


def batch(size=6, classes=5):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (size, 4, 4, 3)), tf.float32)
    targets = smoothed_one_hot(tf.constant(rng.integers(0, classes, size)), classes, 0.1)
    return images, targets


def test_mixup_mixes_each_example_with_its_mirror_using_the_same_lambda():
    images, targets = batch()
    seed = tf.constant([7, 3], tf.int64)
    lam = sample_mixup_lambda(6, 0.2, seed).numpy()
    mixed_images, mixed_targets = mixup(images, targets, 0.2, seed=seed)
    x, t = images.numpy(), targets.numpy()
    lam_x, lam_t = lam[:, None, None, None], lam[:, None]
    np.testing.assert_allclose(mixed_images, lam_x * x + (1 - lam_x) * x[::-1], rtol=1e-5)
    np.testing.assert_allclose(mixed_targets, lam_t * t + (1 - lam_t) * t[::-1], rtol=1e-5)
    np.testing.assert_allclose(mixed_targets.numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_mixup_lambda_is_per_example_and_in_unit_interval():
    lam = sample_mixup_lambda(256, 0.2, tf.constant([1, 2])).numpy()
    assert lam.shape == (256,)
    assert np.all((lam >= 0) & (lam <= 1))
    assert np.std(lam) > 0.2  # Beta(0.2, 0.2) piles up near 0 and 1


def test_mixup_with_huge_alpha_averages_each_pair():
    images, targets = batch()
    mixed_images, mixed_targets = mixup(images, targets, 1e6, seed=tf.constant([0, 1]))
    x, t = images.numpy(), targets.numpy()
    np.testing.assert_allclose(mixed_images, (x + x[::-1]) / 2, rtol=1e-2)
    np.testing.assert_allclose(mixed_targets, (t + t[::-1]) / 2, rtol=1e-2)


def test_mixup_seed_is_reproducible_and_stateful_sampling_varies_in_tf_function():
    seed = tf.constant([5, 9])
    first = sample_mixup_lambda(8, 0.2, seed).numpy()
    np.testing.assert_array_equal(first, sample_mixup_lambda(8, 0.2, seed).numpy())
    # Two gamma ops in one graph must not share a seed, or every lambda would be 0.5.
    lam = tf.function(lambda: sample_mixup_lambda(64, 0.2))().numpy()
    assert not np.allclose(lam, 0.5)


def test_mixup_alpha_zero_is_off():
    images, targets = batch()
    out_images, out_targets = mixup(images, targets, 0.0)
    assert out_images is images and out_targets is targets


def test_mix_batch_keeps_image_dtype():
    images = tf.cast(batch()[0], tf.float16)
    mixed, _ = mix_batch(images, batch()[1], tf.fill([6], 0.25))
    assert mixed.dtype == tf.float16


def numpy_cross_entropy(logits, targets):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(np.mean(-(targets * log_softmax).sum(axis=1)))


def test_cross_entropy_matches_numpy_and_is_float32_for_float16_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (8, 10)).astype(np.float16)
    targets = smoothed_one_hot(tf.constant(rng.integers(0, 10, 8)), 10, 0.1).numpy()
    loss = cross_entropy(tf.constant(logits), tf.constant(targets))
    assert loss.dtype == tf.float32
    assert float(loss) == pytest.approx(numpy_cross_entropy(logits, targets), rel=1e-5)


def tiny_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=True, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, name="fc")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(2)
    for v in model.trainable_variables:  # non-zero everywhere, so every term counts
        v.assign(rng.normal(1.0, 0.5, v.shape))
    return model


def test_decayed_variables_leave_out_batch_norm_gamma_and_beta():
    names = sorted(v.name for v in decayed_variables(tiny_model()))
    assert names == ["conv/bias:0", "conv/kernel:0", "fc/bias:0", "fc/kernel:0"]


def test_decayed_variables_find_batch_norm_in_nested_layers_by_ownership():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")
            self.norm = keras.layers.BatchNormalization(name="scale_and_shift")

        def call(self, x):
            return self.norm(self.conv(x))

    model = keras.Sequential([keras.Input((4, 4, 3)), Block(name="block")])
    assert [v.name for v in decayed_variables(model)] == ["block/conv/kernel:0"]


def test_l2_loss_equals_hand_sum_without_batch_norm():
    model = tiny_model()
    weight_decay = 6.103515625e-05
    hand = sum(
        np.sum(v.numpy().astype(np.float64) ** 2) / 2
        for v in model.trainable_variables
        if "/gamma" not in v.name and "/beta" not in v.name
    )
    with_batch_norm = sum(
        np.sum(v.numpy().astype(np.float64) ** 2) / 2 for v in model.trainable_variables
    )
    assert hand < with_batch_norm
    loss = l2_loss(decayed_variables(model), weight_decay)
    assert loss.dtype == tf.float32
    assert float(loss) == pytest.approx(weight_decay * hand, rel=1e-6)
    # The name rule drops the same variables when given everything trainable.
    assert float(l2_loss(model.trainable_variables, weight_decay)) == float(loss)


def test_l2_loss_of_nothing_is_zero():
    assert float(l2_loss([], 1e-4)) == 0.0
