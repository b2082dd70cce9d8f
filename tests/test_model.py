"""The three architectures: sizes, layout equivalence, head options, init, one real step."""

import numpy as np
import pytest
import tensorflow as tf

from model import ARCHITECTURES, build_model
from model.layers.grouped_conv import GroupedConv2D
from model.layers.pooling import MaxPool2D
from model.resnet import IMAGENET_MEAN
from utils.core.tf_compat import keras

PARAMS = {
    ("resnet50", 1000): 25_557_032,
    ("resnext101-32x4d", 1000): 44_177_704,
    ("se-resnext101-32x4d", 1000): 48_955_416,
    ("resnet50", 1001): 25_559_081,
    ("resnext101-32x4d", 1001): 44_179_753,
    ("se-resnext101-32x4d", 1001): 48_957_465,
}


def _trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


@pytest.mark.parametrize(("arch", "classes"), sorted(PARAMS))
def test_trainable_parameter_counts(arch, classes, built_model):
    model = built_model(arch, num_classes=classes)
    assert _trainable_count(model) == PARAMS[(arch, classes)]


def test_resnext_structure_and_layer_names(built_model):
    model = built_model("resnext101-32x4d", num_classes=1000)
    names = [layer.name for layer in model.layers]
    grouped = [layer for layer in model.layers if isinstance(layer, GroupedConv2D)]
    assert len(grouped) == sum(ARCHITECTURES["resnext101-32x4d"].blocks) == 33
    assert all(layer.groups == 32 for layer in grouped)
    # 3x3 grouped kernel layout [3, 3, C/groups, C] and v1.5 stride placement.
    first_of_stage2 = model.get_layer("stage2_block1_3x3_conv")
    assert first_of_stage2.kernel.shape == (3, 3, 8, 256)
    assert first_of_stage2.strides == 2
    assert model.get_layer("stage2_block1_1x1_reduce_conv").strides == (1, 1)
    # The projection shortcut is told apart from the main path's last 1x1 conv.
    assert model.get_layer("stage2_block1_shortcut_conv").kernel.shape == (1, 1, 256, 512)
    assert model.get_layer("stage2_block1_1x1_expand_conv").kernel.shape == (1, 1, 256, 512)
    assert "stage2_block2_shortcut_conv" not in names
    assert model.get_layer("stage4_block3_out").output.shape[-1] == 2048
    assert model.get_layer("logits_dense").kernel.shape == (2048, 1000)


def test_batch_norm_settings_and_bias_free_convs(built_model):
    model = built_model("resnet50", num_classes=1000)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
    # The block's last BN starts at gamma = 1 (not zero-initialised).
    assert np.all(model.get_layer("stage1_block1_1x1_expand_bn").gamma.numpy() == 1.0)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and not any(conv.use_bias for conv in convs)


def test_se_gate_has_ratio_16_and_biases(built_model):
    model = built_model("se-resnext101-32x4d", num_classes=1000)
    reduce = model.get_layer("stage3_block5_se_reduce")
    expand = model.get_layer("stage3_block5_se_expand")
    assert reduce.kernel.shape == (1024, 64) and reduce.bias.shape == (64,)
    assert expand.kernel.shape == (64, 1024) and expand.bias.shape == (1024,)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_weight_init_uses_variance_scaling_with_the_chosen_fan(mode):
    keras.utils.set_random_seed(0)
    model = build_model("resnet50", weight_init=mode)
    kernel = model.get_layer("stage3_block1_1x1_expand_conv").kernel.numpy()  # 1x1, 256 -> 1024
    fan = 256 if mode == "fan_in" else 1024
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan), rel=0.05)
    grouped = build_model("resnext101-32x4d", weight_init=mode).get_layer("stage1_block1_3x3_conv")
    fan = 3 * 3 * 4 if mode == "fan_in" else 3 * 3 * 128
    assert grouped.kernel.numpy().std() == pytest.approx(np.sqrt(2.0 / fan), rel=0.05)


def test_input_is_normalised_inside_the_model(built_model):
    model = built_model("resnet50", num_classes=1000)
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    mean_image = np.broadcast_to(np.array(IMAGENET_MEAN, np.float32), (1, 8, 8, 3))
    np.testing.assert_allclose(normalize(mean_image).numpy(), 0.0, atol=1e-5)
    assert "normalize" not in [layer.name for layer in build_model(normalize_input=False).layers]


def _random_images(batch, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("arch", ["resnet50", "se-resnext101-32x4d"])
def test_nchw_and_nhwc_give_the_same_logits_from_the_same_weights(arch):
    nhwc = build_model(arch, num_classes=10, data_format="NHWC")
    nchw = build_model(arch, num_classes=10, data_format="NCHW")
    nchw.set_weights(nhwc.get_weights())
    images = _random_images(2, 32)
    out_nhwc = nhwc(images, training=False).numpy()
    out_nchw = nchw(images, training=False).numpy()
    assert out_nchw.shape == (2, 10)
    np.testing.assert_allclose(out_nchw, out_nhwc, rtol=1e-4, atol=1e-4)


def test_final_conv_head_matches_the_dense_head_with_the_same_weights():
    dense = build_model("resnet50", num_classes=7)
    conv = build_model("resnet50", num_classes=7, use_final_conv=True)
    assert _trainable_count(conv) == _trainable_count(dense)
    assert conv.get_layer("logits_conv").kernel.shape == (1, 1, 2048, 7)
    weights = dense.get_weights()
    kernel_index = [w.shape for w in weights].index((2048, 7))
    weights[kernel_index] = weights[kernel_index].reshape(1, 1, 2048, 7)
    conv.set_weights(weights)
    images = _random_images(2, 32)
    np.testing.assert_allclose(
        conv(images, training=False).numpy(),
        dense(images, training=False).numpy(),
        rtol=1e-5,
        atol=1e-3,
    )


def test_logits_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("resnet50", num_classes=5)
        logits = model(_random_images(1, 32), training=False)
        assert model.get_layer("stage1_block1_3x3_conv").compute_dtype == "float16"
        assert model.get_layer("stage1_block1_3x3_conv").kernel.dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))


def test_nchw_max_pool_matches_nhwc():
    x = np.random.default_rng(3).normal(size=(2, 9, 10, 5)).astype(np.float32)
    nhwc = keras.layers.MaxPool2D(3, 2, padding="same")(x).numpy()
    nchw = MaxPool2D(3, 2, padding="same", data_format="channels_first")(x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(nchw.numpy().transpose(0, 2, 3, 1), nhwc)


@pytest.mark.parametrize(
    ("arch", "data_format"),
    [(arch, "NHWC") for arch in sorted(ARCHITECTURES)] + [("resnext101-32x4d", "NCHW")],
)
def test_each_architecture_takes_a_real_gradient_step_at_64px(arch, data_format):
    keras.utils.set_random_seed(1)
    model = build_model(arch, num_classes=10, data_format=data_format)
    images = tf.constant(_random_images(4, 64))
    labels = tf.constant([0, 1, 2, 3])
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, grads

    before = [v.numpy() for v in model.trainable_variables]
    loss, grads = step()
    assert np.isfinite(loss.numpy())
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert all(changed), "every trainable variable must receive a gradient update"
