"""Training targets and losses: label smoothing, mixup, cross-entropy and weight decay.

Everything is computed in float32, whatever the compute dtype of the model. Weight decay
covers every trainable variable but batch-norm gamma and beta, found by layer ownership
(`decayed_variables`) or by name (`l2_loss`), with the same sum either way
(docs/design.md, "Training math").
"""

import tensorflow as tf

from utils.core.tf_compat import keras

_BATCH_NORM_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.experimental.SyncBatchNormalization,
)
_BATCH_NORM_WEIGHT_NAMES = ("gamma", "beta")


def smoothed_one_hot(labels, num_classes, label_smoothing):
    """One-hot float32 targets: on = 1 - eps + eps/K, off = eps/K."""
    off = label_smoothing / num_classes
    on = 1.0 - label_smoothing + off
    return tf.one_hot(labels, num_classes, on_value=on, off_value=off, dtype=tf.float32)


def sample_mixup_lambda(batch_size, alpha, seed=None):
    """Per-example lambda ~ Beta(alpha, alpha), float32 of shape [batch_size].

    `seed`: None samples statefully; a shape-[2] integer seed (e.g. (run_seed, step))
    samples statelessly, so the same seed always gives the same lambdas.
    """
    shape = tf.reshape(tf.cast(batch_size, tf.int32), [1])
    if seed is None:
        gamma_a = tf.random.gamma(shape, alpha, dtype=tf.float32)
        gamma_b = tf.random.gamma(shape, alpha, dtype=tf.float32)
    else:
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
        gamma_a = tf.random.stateless_gamma(shape, seeds[0], alpha, dtype=tf.float32)
        gamma_b = tf.random.stateless_gamma(shape, seeds[1], alpha, dtype=tf.float32)
    # With small alpha both gammas can underflow to 0; lambda 0 is still a valid weight.
    return tf.math.divide_no_nan(gamma_a, gamma_a + gamma_b)


def mix_batch(images, targets, lam):
    """x = lam*x + (1-lam)*reverse(x) along the batch axis, for images and targets alike."""
    lam_images = tf.reshape(tf.cast(lam, images.dtype), [-1, 1, 1, 1])
    lam_targets = tf.reshape(tf.cast(lam, targets.dtype), [-1, 1])
    mixed_images = lam_images * images + (1 - lam_images) * tf.reverse(images, axis=[0])
    mixed_targets = lam_targets * targets + (1 - lam_targets) * tf.reverse(targets, axis=[0])
    return mixed_images, mixed_targets


def mixup(images, targets, alpha, seed=None):
    """Mixup of a batch of NHWC images and [batch, classes] targets; alpha 0 means off.

    Returns (images, targets). `seed` is as in `sample_mixup_lambda`. Gamma sampling has
    no XLA kernel: call this outside a `jit_compile=True` function (e.g. in tf.data after
    batching).
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return images, targets
    lam = sample_mixup_lambda(tf.shape(images)[0], alpha, seed)
    return mix_batch(images, targets, lam)


def cross_entropy(logits, targets):
    """Mean softmax cross-entropy over the batch, in float32."""
    per_example = tf.nn.softmax_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.float32), logits=tf.cast(logits, tf.float32)
    )
    return tf.reduce_mean(per_example)


def is_batch_norm_name(variable):
    """True when the variable's name ends in /gamma or /beta (Keras BN weight names)."""
    leaf = variable.name.split(":")[0].rsplit("/", 1)[-1]
    return leaf in _BATCH_NORM_WEIGHT_NAMES


def l2_loss(variables, weight_decay):
    """weight_decay * sum(sum(v^2) / 2) over `variables`, skipping BN gamma/beta by name."""
    terms = [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables if not is_batch_norm_name(v)]
    if not terms:
        return tf.constant(0.0, tf.float32)
    return tf.add_n(terms) * tf.constant(weight_decay, tf.float32)


def decayed_variables(model):
    """The model's trainable variables that get weight decay: all but BN layers' weights."""
    batch_norm_ids = {
        id(weight)
        for layer in model.submodules
        if isinstance(layer, _BATCH_NORM_LAYERS)
        for weight in layer.trainable_weights
    }
    return [v for v in model.trainable_variables if id(v) not in batch_norm_ids]
