"""Quantization-aware training: what the quantizers apply, the delay, training, checkpoints,
export, QDQ mode, mixed precision and the grouped conv (CPU, 32 px, 10 classes, batch 4)."""

import numpy as np
import pytest
import tensorflow as tf

from model import build_model
from model import quantization as qat
from model.blocks import LayerFactory, squeeze_excitation
from model.layers.grouped_conv import GroupedConv2D
from model.quantization import tfmot_compat
from model.weights import copy_float_weights
from runtime.export import export_saved_model
from tests.support import FAKE_QUANT_OPS, QDQ_OPS, reachable_op_types
from utils import data_utils
from utils.core.tf_compat import keras
from utils.losses import cross_entropy
from utils.optimizers import MomentumSGD

# Its module-scoped fixtures are built once: pytest-xdist runs the whole file on one worker.
pytestmark = pytest.mark.xdist_group("quantization")

SIZE, CLASSES, BATCH = 32, 10, 4


def resnet50():
    return build_model("resnet50", num_classes=CLASSES, image_size=SIZE)


def images(seed=0, batch=BATCH):
    return tf.random.stateless_uniform([batch, SIZE, SIZE, 3], [seed, 1], 0.0, 255.0)


def traced(model, training):
    """The model's forward pass as a concrete function, and its op types."""
    fn = tf.function(lambda x: model(x, training=training))
    concrete = fn.get_concrete_function(tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32))
    return concrete, reachable_op_types(concrete.graph.as_graph_def())


def distinct_per_channel(kernel):
    flat = np.asarray(kernel).reshape(-1, kernel.shape[-1])
    return np.array([len(np.unique(flat[:, c])) for c in range(flat.shape[1])])


def make_train_step(model, optimizer):
    """The runtime's step, reduced: the QAT hook, then forward, loss, SGD update."""

    @tf.function
    def step(x, labels):
        qat.set_quant_step(model, optimizer.iterations)
        with tf.GradientTape() as tape:
            loss = cross_entropy(model(x, training=True), tf.one_hot(labels, CLASSES))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


@pytest.fixture(scope="module")
def float_model():
    keras.utils.set_random_seed(0)
    return resnet50()


@pytest.fixture(scope="module")
def trained(float_model, sample_data):
    """Asymmetric fake-quant QAT resnet50, delay 2, after 4 SGD steps on the sample data."""
    model = qat.quantize_model(float_model, quant_delay=2)
    optimizer = MomentumSGD(learning_rate=0.01, momentum=0.9)
    step = make_train_step(model, optimizer)
    dataset = data_utils.train_dataset(sample_data, BATCH, SIZE, seed=0, num_classes=CLASSES)
    losses = [float(step(x, y)) for x, y in dataset.take(4)]
    return model, optimizer, losses


def test_every_conv_and_dense_is_wrapped_keeping_names_and_variables(float_model, trained):
    model = trained[0]
    targets = [
        layer.name for layer in float_model.layers if isinstance(layer, qat.QUANTIZED_LAYERS)
    ]
    assert [w.name for w in qat.qat_layers(model)] == targets
    assert len(targets) == 54  # 53 convs (stem, 48 bottleneck, 4 shortcuts) + classifier
    # Same trainable variables (so the same weight decay), same layer names.
    assert [v.shape for v in model.trainable_variables] == [
        v.shape for v in float_model.trainable_variables
    ]
    assert [layer.name for layer in model.layers] == [layer.name for layer in float_model.layers]
    assert qat.is_quantized(model) and not qat.is_quantized(float_model)
    assert any(v is model.quant_step for v in model.non_trainable_variables)


def test_sgd_steps_on_the_sample_data_give_finite_losses_and_feed_the_step(trained):
    model, optimizer, losses = trained
    assert np.all(np.isfinite(losses)), losses
    assert int(optimizer.iterations) == 4
    assert int(model.quant_step) == 3  # the last step ran with optimizer.iterations == 3
    for wrapper in qat.qat_layers(model):
        low, high = (float(v) for v in wrapper.input_range())
        (count,) = [v for v in wrapper.weights if v.name.endswith("input_count:0")]
        assert int(count) == 4
        assert low <= 0.0 <= high and high > low


def test_after_the_delay_kernels_take_at_most_256_values_per_output_channel(trained):
    model = trained[0]
    big_float_channels = False
    for wrapper in qat.qat_layers(model):
        kernel = wrapper.layer.kernel.numpy()
        quantized = wrapper.quantized_weights(training=True)["kernel"].numpy()
        assert distinct_per_channel(quantized).max() <= 256, wrapper.name
        assert np.max(np.abs(quantized - kernel)) > 0, wrapper.name
        # Asymmetric: each channel's values lie on its grid of 255 steps over [min, max]
        # (min and max nudged so that zero is a grid point).
        low, high = (r.numpy() for r in wrapper.weight_ranges()["kernel"])
        steps = quantized / ((high - low) / 255.0)
        assert np.allclose(steps, np.round(steps), atol=1e-2), wrapper.name
        big_float_channels |= distinct_per_channel(kernel).min() > 256
    assert big_float_channels  # not vacuous: some float kernels have >256 values per channel
    # Post-ReLU inputs have asymmetric ranges [0, max].
    ranges = [tuple(float(v) for v in w.input_range()) for w in qat.qat_layers(model)]
    assert any(low == 0.0 and high > 0 for low, high in ranges)


@pytest.fixture(scope="module")
def symmetric_delayed(float_model):
    """Symmetric fake-quant QAT resnet50 with a delay of 5 steps (tests set the step)."""
    return qat.quantize_model(float_model, symmetric=True, quant_delay=5)


def test_before_the_delay_the_outputs_equal_the_copied_float_model(float_model, symmetric_delayed):
    model = symmetric_delayed
    # quantize_model started from the float model's weights.
    for got, want in zip(model.trainable_variables, float_model.trainable_variables):
        np.testing.assert_array_equal(got, want)
    qat.set_quant_step(model, 0)
    source = keras.models.clone_model(float_model)  # freshly initialised weights
    x = images(1)
    assert not np.allclose(source(x, training=True), model(x, training=True))
    copied = copy_float_weights(source, model)
    assert len(copied) == len([layer for layer in model.layers if layer.weights])
    for _ in range(2):  # training mode: BN batch statistics and range tracking both run
        np.testing.assert_array_equal(model(x, training=True), source(x, training=True))
    kernel = model.get_layer("stage4_block1_1x1_expand_conv").quantized_weights()["kernel"]
    np.testing.assert_array_equal(kernel, source.get_layer("stage4_block1_1x1_expand_conv").kernel)
    qat.set_quant_step(model, 5)
    assert not np.allclose(model(x, training=True), source(x, training=True), atol=1e-3)
    # Inference is always quantized (as TF1's eval graph), whatever the step.
    qat.set_quant_step(model, 0)
    assert not np.allclose(model(x, training=False), source(x, training=False), atol=1e-3)


def test_symmetric_ranges_are_symmetric_around_zero(symmetric_delayed):
    model = symmetric_delayed
    qat.set_quant_step(model, 5)
    model(images(2), training=True)
    for wrapper in qat.qat_layers(model):
        low, high = (float(v) for v in wrapper.input_range())
        assert low == -high and high > 0, wrapper.name
        w_low, w_high = (r.numpy() for r in wrapper.weight_ranges()["kernel"])
        np.testing.assert_array_equal(w_low, -w_high)
        quantized = wrapper.quantized_weights()["kernel"].numpy()
        assert distinct_per_channel(quantized).max() <= 255  # -127..127
        steps = quantized / (w_high / 127.0)
        assert np.allclose(steps, np.round(steps), atol=1e-3), wrapper.name
        assert np.abs(np.round(steps)).max() <= 127


def test_checkpoint_restores_weights_ranges_and_step(trained, float_model, tmp_path):
    model = trained[0]
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "qat"))
    fresh = qat.quantize_model(float_model, quant_delay=2)  # the untrained weights
    tf.train.Checkpoint(model=fresh).restore(path).assert_consumed()
    assert int(fresh.quant_step) == int(model.quant_step)
    for a, b in zip(qat.qat_layers(model), qat.qat_layers(fresh)):
        np.testing.assert_array_equal(a.input_range(), b.input_range())
    x = images(3)
    np.testing.assert_array_equal(model(x, training=False), fresh(x, training=False))


def test_export_holds_the_quantize_ops_and_reproduces_predictions(trained, tmp_path):
    model = trained[0]
    path = export_saved_model(model, str(tmp_path / "export"), SIZE)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    ops = reachable_op_types(serve.graph.as_graph_def())
    assert ops >= FAKE_QUANT_OPS
    assert not ops & QDQ_OPS
    # Against the in-memory model run as a graph, as evaluation runs it. (Eager execution
    # differs from any graph by float rounding, the float model's too, and a fake-quant
    # rounding flip can then move a logit by a quantization step.)
    x = images(4)
    got = serve(input=x)
    want = tf.nn.softmax(tf.function(lambda t: model(t, training=False))(x))
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
    np.testing.assert_array_equal(got["classes"], np.argmax(want, axis=1))


def test_qdq_mode_uses_quantize_and_dequantize_ops_only(float_model):
    model = qat.quantize_model(float_model, symmetric=True, use_qdq=True, quant_delay=1)
    qat.set_quant_step(model, 1)
    for training in (True, False):
        forward, ops = traced(model, training)
        assert "QuantizeAndDequantizeV4" in ops
        assert not ops & FAKE_QUANT_OPS
        assert np.all(np.isfinite(forward(images(5))))
    for wrapper in qat.qat_layers(model):
        quantized = wrapper.quantized_weights()["kernel"].numpy()
        assert distinct_per_channel(quantized).max() <= 255, wrapper.name


def test_mixed_float16_quantizes_in_float32_and_trains():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(1)
        float_amp = resnet50()
        model = qat.quantize_model(float_amp, quant_delay=1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x, targets = images(6), tf.one_hot([0, 1, 2, 3], CLASSES)

    def forward_backward(net):
        with tf.GradientTape() as tape:
            logits = net(x, training=True)
            # Scaled down as loss scaling would: keeps the float16 gradients of this random
            # net (batch-4 BN statistics) in range.
            loss = cross_entropy(logits, targets) / 64.0
        return logits, loss, tape.gradient(loss, net.trainable_variables)

    # Before the delay: the float AMP model's forward and backward, exactly.
    logits, _, grads = forward_backward(model)
    want_logits, _, want_grads = forward_backward(float_amp)
    np.testing.assert_array_equal(logits, want_logits)
    for got, want in zip(grads, want_grads):
        np.testing.assert_array_equal(got, want)
    qat.set_quant_step(model, 1)
    logits, loss, grads = forward_backward(model)
    assert logits.dtype == tf.float32 and np.isfinite(float(loss))
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    assert all(v.dtype == tf.float32 for v in model.variables if v.dtype.is_floating)
    # The quantizers ran in float32 (FakeQuant* kernels take nothing else), the convs in
    # float16.
    wrapper = model.get_layer("stage4_block1_1x1_expand_conv")
    assert wrapper.compute_dtype == "float32" and wrapper.layer.compute_dtype == "float16"


def test_resnext_grouped_convs_and_the_final_conv_head_are_quantized(float_model):
    keras.utils.set_random_seed(2)
    float_rnxt = build_model(
        "resnext101-32x4d", num_classes=CLASSES, image_size=SIZE, use_final_conv=True
    )
    model = qat.quantize_model(float_rnxt)
    wrapped = {w.name: w for w in qat.qat_layers(model)}
    grouped = [layer.name for layer in float_rnxt.layers if isinstance(layer, GroupedConv2D)]
    convs = [
        layer.name
        for layer in float_rnxt.layers
        if isinstance(layer, (keras.layers.Conv2D, GroupedConv2D))
    ]
    assert len(grouped) == 33 and set(convs) == set(wrapped) and "logits_conv" in wrapped
    assert isinstance(wrapped[grouped[0]].layer, GroupedConv2D)
    x = images(7, batch=2)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
    kernel = wrapped[grouped[-1]].layer.kernel
    grad = tape.gradient(logits, kernel)
    assert np.all(np.isfinite(logits)) and np.any(grad.numpy() != 0)
    for name in (grouped[0], grouped[-1], "logits_conv"):
        quantized = wrapped[name].quantized_weights()["kernel"].numpy()
        assert distinct_per_channel(quantized).max() <= 256, name
        assert np.max(np.abs(quantized - wrapped[name].layer.kernel.numpy())) > 0
    # The last grouped kernel [3, 3, 32, 1024] has 288 float values per channel.
    assert distinct_per_channel(kernel.numpy()).min() > 256
    with pytest.raises(ValueError, match="already quantized"):
        qat.quantize_model(model)
    with pytest.raises(ValueError, match="models differ"):
        copy_float_weights(float_model, model)


def test_squeeze_excitation_dense_layers_are_quantized():
    inputs = keras.Input((4, 4, 64))
    outputs = squeeze_excitation(inputs, LayerFactory(), hidden=4, name="se")  # 64 / 16
    float_se = keras.Model(inputs, outputs)
    model = qat.quantize_model(float_se)
    assert [w.name for w in qat.qat_layers(model)] == ["se_reduce", "se_expand"]
    assert qat.set_quant_step(float_se, 3) is None  # the hook is a no-op on float models
    x = tf.random.stateless_normal([BATCH, 4, 4, 64], [8, 1])
    model(x, training=True)
    np.testing.assert_allclose(model(x, training=False), float_se(x), atol=0.05)
    for wrapper in qat.qat_layers(model):
        quantized = wrapper.quantized_weights()["kernel"].numpy()
        assert distinct_per_channel(quantized).max() <= 256
        assert float(wrapper.input_range()[1]) > 0


def dense_qat():
    """A QAT model of one Dense layer on 6 inputs, and its wrapper."""
    inputs = keras.Input((6,))
    model = qat.quantize_model(keras.Model(inputs, LayerFactory().dense(3, name="fc")(inputs)))
    (wrapper,) = qat.qat_layers(model)
    return model, wrapper


def test_input_ranges_are_a_bias_corrected_moving_average_frozen_in_inference():
    model, wrapper = dense_qat()
    assert [float(v) for v in wrapper.input_range()] == [-qat.INIT_RANGE, qat.INIT_RANGE]
    x1 = tf.constant([[-1.0, 0.5, 2.0, 0.0, 0.0, 0.0]])
    x2 = tf.constant([[-3.0, 1.0, 4.0, 0.0, 0.0, 0.0]])
    model(x1, training=True)
    np.testing.assert_allclose(wrapper.input_range(), [-1.0, 2.0], rtol=1e-5)  # first batch
    model(x2, training=True)
    d = qat.EMA_DECAY
    want = [(d * -1.0 + -3.0) / (1 + d), (d * 2.0 + 4.0) / (1 + d)]
    np.testing.assert_allclose(wrapper.input_range(), want, rtol=1e-5)
    model(10.0 * x2, training=False)  # inference does not move the range
    np.testing.assert_allclose(wrapper.input_range(), want, rtol=1e-5)


def test_tfmot_compat_reaches_the_tfmot_internals_it_names():
    """Each function of tfmot_compat works on the installed TFMOT (its docstring names the
    version checked)."""
    wrapper = dense_qat()[1]
    assert isinstance(wrapper, tfmot_compat.QuantizeWrapper)
    assert tfmot_compat.weight_name(wrapper, wrapper.layer.kernel) == "kernel"
    ((name, quantizer, state),) = tfmot_compat.weight_vars(wrapper)
    assert name == "kernel" and isinstance(quantizer, tfmot_compat.Quantizer) and not state
    assert isinstance(wrapper.quantize_config, tfmot_compat.QuantizeConfig)
    # TFMOT's own fields, read by its QuantizeWrapper.call (which QATWrapper replaces).
    assert list(wrapper._quantize_activations) == [] and list(wrapper._output_quantizers) == []
    # build_wrapper skipped QuantizeWrapper.build: no optimizer_step variable.
    assert wrapper.built and wrapper.layer.built
    assert not any("optimizer_step" in w.name for w in wrapper.weights)
