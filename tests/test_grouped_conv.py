"""The grouped conv computes the grouped conv: forward and gradients, every implementation.

The reference is an explicit block-diagonal dense conv: `tf.nn.conv2d` with a
`[k, k, C_in, C_out]` kernel built from the grouped kernel with zeros outside the diagonal
blocks, so the same tape gives its gradient w.r.t. the grouped kernel.
"""

import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from model.layers import grouped_conv as gc
from model.layers.grouped_conv import GroupedConv2D, grouped_conv2d
from utils.core import cpu_features, tf_compat
from utils.core.tf_compat import keras

NATIVE_GRADS = gc.native_grads_supported("float32")
# "native" trains on CPU only where oneDNN runs the grouped backprop ops.
IMPLS = ["auto", "cpu", "split", "depthwise"] + (["native"] if NATIVE_GRADS else [])


def block_diagonal_kernel(kernel, groups):
    """[k, k, C_in/G, C_out] -> [k, k, C_in, C_out], zero outside the diagonal blocks."""
    k_h, k_w, cin_g, c_out = kernel.shape
    cout_g = c_out // groups
    mask = np.zeros((k_h, k_w, cin_g * groups, c_out), np.float32)
    for g in range(groups):
        mask[:, :, g * cin_g : (g + 1) * cin_g, g * cout_g : (g + 1) * cout_g] = 1
    return tf.tile(kernel, [1, 1, groups, 1]) * tf.constant(mask, kernel.dtype)


def forward_and_grads(conv, x, kernel, dy):
    """conv(x, kernel) and the gradients of sum(conv * dy) w.r.t. x and kernel."""
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = conv(x, kernel)
    dx, dk = tape.gradient(y, [x, kernel], output_gradients=dy)
    return y, dx, dk


def reference(x, kernel, dy, groups, strides):
    def conv(x, kernel):
        return tf.nn.conv2d(x, block_diagonal_kernel(kernel, groups), strides, "SAME")

    return forward_and_grads(conv, x, kernel, dy)


def make_problem(seed, size, channels, groups, k, strides, batch=2, width=None):
    rng = np.random.default_rng(seed)
    width = size if width is None else width
    x = tf.constant(rng.standard_normal((batch, size, width, channels)), tf.float32)
    kernel = tf.constant(rng.standard_normal((k, k, channels // groups, channels)), tf.float32)
    out_hw = (-(-size // strides), -(-width // strides))
    dy = tf.constant(rng.standard_normal((batch, *out_hw, channels)), tf.float32)
    return x, kernel, dy


def assert_close(got, want, rel=1e-4, what=""):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, what
    err = np.abs(got - want).max()
    assert err <= rel * np.abs(want).max(), (
        f"{what}: max error {err}, max |ref| {np.abs(want).max()}"
    )


def assert_matches_reference(results, refs, rel=1e-4, what=""):
    for name, got, want in zip(("output", "d/dx", "d/dkernel"), results, refs):
        assert_close(got, want, rel, f"{what} {name}")


@pytest.mark.parametrize(
    "strides,size,groups,k", list(itertools.product((1, 2), (7, 8, 9), (1, 2, 4, 32), (1, 3)))
)
def test_matches_block_diagonal_reference(strides, size, groups, k):
    channels = 64
    x, kernel, dy = make_problem(size * 100 + groups * 10 + k, size, channels, groups, k, strides)
    refs = reference(x, kernel, dy, groups, strides)
    assert refs[0].shape == (2, -(-size // strides), -(-size // strides), channels)
    for impl in IMPLS:

        def conv(x, kernel, impl=impl):
            return grouped_conv2d(x, kernel, groups, strides, implementation=impl)

        assert_matches_reference(forward_and_grads(conv, x, kernel, dy), refs, what=impl)
    # The CPU path as it runs in training: inside a tf.function.
    traced = tf.function(
        lambda x, kernel, dy: forward_and_grads(
            lambda a, b: grouped_conv2d(a, b, groups, strides, implementation="cpu"), x, kernel, dy
        )
    )
    assert_matches_reference(traced(x, kernel, dy), refs, what="cpu in tf.function")


def test_reference_tells_a_wrong_grouping_apart():
    """The comparison can fail: a grouped conv with the groups' kernels swapped differs."""
    groups, strides = 4, 1
    x, kernel, dy = make_problem(1, 8, 16, groups, 3, strides)
    refs = reference(x, kernel, dy, groups, strides)
    swapped = tf.concat(tf.split(kernel, groups, axis=-1)[::-1], axis=-1)
    y = grouped_conv2d(x, swapped, groups, strides, implementation="cpu")
    with pytest.raises(AssertionError):
        assert_close(y, refs[0])


def test_non_square_input_and_stride_3():
    for strides, impl in itertools.product((1, 2, 3), IMPLS):
        x, kernel, dy = make_problem(strides, 9, 32, 8, 3, strides, width=12)
        refs = reference(x, kernel, dy, 8, strides)

        def conv(x, kernel, impl=impl, strides=strides):
            return grouped_conv2d(x, kernel, 8, strides, implementation=impl)

        assert_matches_reference(forward_and_grads(conv, x, kernel, dy), refs, what=impl)


def test_unknown_spatial_size_in_tf_function():
    groups, strides = 4, 2
    x, kernel, dy = make_problem(3, 9, 16, groups, 3, strides)
    refs = reference(x, kernel, dy, groups, strides)
    spec = tf.TensorSpec([None, None, None, 16])

    @tf.function(input_signature=[spec, tf.TensorSpec(kernel.shape), spec])
    def traced(x, kernel, dy):
        conv = lambda a, b: grouped_conv2d(a, b, groups, strides, implementation="cpu")  # noqa: E731
        return forward_and_grads(conv, x, kernel, dy)

    assert_matches_reference(traced(x, kernel, dy), refs)


def test_cpu_path_falls_back_to_split_without_native_gradients(monkeypatch):
    """Where TF's CPU kernels cannot train a grouped conv (oneDNN off), "cpu" still works."""
    monkeypatch.setattr(gc, "native_grads_supported", lambda dtype_name: False)
    monkeypatch.setattr(gc, "split_grouped_conv2d", _counting(gc.split_grouped_conv2d))
    x, kernel, dy = make_problem(4, 9, 32, 8, 3, 2)
    refs = reference(x, kernel, dy, 8, 2)

    def conv(x, kernel):
        return grouped_conv2d(x, kernel, 8, 2, implementation="cpu")

    assert_matches_reference(forward_and_grads(conv, x, kernel, dy), refs)
    assert gc.split_grouped_conv2d.calls == 1


def _counting(fn):
    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        return fn(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


def test_native_grads_probe():
    # TensorFlow's own (non-oneDNN) CPU kernels have no grouped gradient for float16;
    # 2.21's oneDNN computes it on CPUs with float16 instructions (seen on an Intel Xeon
    # with avx512_fp16; an AMD EPYC Zen 4 without them gets TensorFlow's own kernel). The
    # probe checks the values against per-group ops.
    tf_version = tuple(int(part) for part in tf.__version__.split(".")[:2])
    fp16_cpu = bool(cpu_features.cpu_flags() & {"avx512_fp16", "amx_fp16"})
    assert gc.native_grads_supported("float16") is (tf_version >= (2, 21) and fp16_cpu)
    # oneDNN is on by default in TensorFlow's x86 Linux wheels and computes them.
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"
    assert gc.native_grads_supported("float32") is onednn


@pytest.mark.skipif(not NATIVE_GRADS, reason="needs oneDNN's grouped backprop ops")
@pytest.mark.parametrize("dtype", ("float32", "float16", "bfloat16"))
def test_cpu_path_is_one_native_op_per_pass(dtype):
    """Forward, input and kernel gradient are each one grouped op; float16 runs in float32."""
    x, kernel, dy = (tf.cast(t, dtype) for t in make_problem(8, 8, 64, 32, 3, 2))

    @tf.function
    def step(x, kernel, dy):
        conv = lambda a, b: grouped_conv2d(a, b, 32, 2, implementation="cpu")  # noqa: E731
        return forward_and_grads(conv, x, kernel, dy)

    graph = step.get_concrete_function(x, kernel, dy).graph
    ops = [op for op in graph.get_operations() if op.type.startswith("Conv2D")]
    assert sorted(op.type for op in ops) == [
        "Conv2D",
        "Conv2DBackpropFilter",
        "Conv2DBackpropInput",
    ]
    compute = "float32" if dtype == "float16" else dtype
    assert all(op.get_attr("T") == tf.as_dtype(compute) for op in ops)
    assert [op.outputs[0].shape.as_list() for op in ops if op.type == "Conv2DBackpropFilter"] == [
        [3, 3, 2, 64]
    ]


def test_xla_compiled_cpu_path_uses_split_and_is_right(monkeypatch):
    """Under jit_compile the "cpu" path avoids XLA's very slow CPU grouped conv."""
    assert tf_compat.in_xla_context() is False
    seen = []
    monkeypatch.setattr(gc, "split_grouped_conv2d", _counting(gc.split_grouped_conv2d))
    x, kernel, dy = make_problem(5, 8, 16, 4, 3, 2, batch=1)
    refs = reference(x, kernel, dy, 4, 2)

    @tf.function(jit_compile=True)
    def compiled(x, kernel, dy):
        seen.append(tf_compat.in_xla_context())
        conv = lambda a, b: grouped_conv2d(a, b, 4, 2, implementation="cpu")  # noqa: E731
        return forward_and_grads(conv, x, kernel, dy)

    assert_matches_reference(compiled(x, kernel, dy), refs)
    assert seen == [True]
    assert gc.split_grouped_conv2d.calls == 1


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("strides", (1, 2))
def test_nchw_matches_nhwc(impl, strides):
    groups = 8
    x, kernel, dy = make_problem(6, 9, 32, groups, 3, strides)
    nhwc = forward_and_grads(
        lambda a, b: grouped_conv2d(a, b, groups, strides, "NHWC", impl), x, kernel, dy
    )
    to_nchw = lambda t: tf.transpose(t, [0, 3, 1, 2])  # noqa: E731
    nchw = forward_and_grads(
        lambda a, b: grouped_conv2d(a, b, groups, strides, "NCHW", impl),
        to_nchw(x),
        kernel,
        to_nchw(dy),
    )
    assert_close(tf.transpose(nchw[0], [0, 2, 3, 1]), nhwc[0], what="output")
    assert_close(tf.transpose(nchw[1], [0, 2, 3, 1]), nhwc[1], what="d/dx")
    assert_close(nchw[2], nhwc[2], what="d/dkernel")


@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@pytest.mark.parametrize("impl", ("cpu", "split"))
def test_low_precision_runs_and_is_close(dtype, impl):
    groups, strides = 32, 2
    x, kernel, dy = make_problem(7, 9, 64, groups, 3, strides)
    refs = reference(x, kernel, dy, groups, strides)
    low = [tf.cast(t, dtype) for t in (x, kernel, dy)]

    def conv(x, kernel):
        return grouped_conv2d(x, kernel, groups, strides, implementation=impl)

    results = forward_and_grads(conv, *low)
    assert all(t.dtype == dtype for t in results)
    rel = 1e-2 if dtype == "float16" else 5e-2  # bfloat16 has an 8-bit mantissa
    assert_matches_reference([tf.cast(t, tf.float32) for t in results], refs, rel, dtype)


def test_layer_under_mixed_float16_policy():
    layer = GroupedConv2D(64, 3, groups=32, strides=2, dtype="mixed_float16")
    x = tf.random.stateless_normal([2, 8, 8, 64], seed=[1, 2])
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert y.dtype == tf.float16 and layer.kernel.dtype == tf.float32
    assert grad.dtype == tf.float32 and grad.shape == (3, 3, 2, 64)
    ref_y = tf.nn.conv2d(
        x, block_diagonal_kernel(tf.convert_to_tensor(layer.kernel), 32), 2, "SAME"
    )
    assert_close(tf.cast(y, tf.float32), ref_y, rel=1e-2)
    assert np.isfinite(grad.numpy()).all()


@pytest.mark.parametrize("data_format", ("channels_last", "channels_first"))
def test_layer_kernel_layout_and_shape(data_format):
    layer = GroupedConv2D(256, 3, groups=32, strides=2, data_format=data_format)
    shape = (1, 14, 14, 128) if data_format == "channels_last" else (1, 128, 14, 14)
    y = layer(tf.zeros(shape))
    assert layer.kernel.shape == (3, 3, 128 // 32, 256)
    assert layer.kernel.name.endswith("kernel:0")
    assert [w.name for w in layer.weights] == [layer.kernel.name]
    want = (1, 7, 7, 256) if data_format == "channels_last" else (1, 256, 7, 7)
    assert y.shape == want == tuple(layer.compute_output_shape(shape))


def test_checkpoint_moves_between_implementations(tmp_path):
    x = tf.random.stateless_normal([2, 9, 9, 64], seed=[3, 4])
    source = GroupedConv2D(64, 3, groups=32, strides=2, implementation="split")
    want = source(x)
    path = tf.train.Checkpoint(layer=source).write(str(tmp_path / "ckpt"))
    for impl in ("cpu", "depthwise", "auto") + (("native",) if NATIVE_GRADS else ()):
        target = GroupedConv2D(64, 3, groups=32, strides=2, implementation=impl)
        target.build(x.shape)
        assert not np.allclose(target(x), want)  # fresh weights differ
        tf.train.Checkpoint(layer=target).read(path).assert_consumed()
        assert_close(target(x), want, what=impl)


def test_keras_weights_move_between_implementations(tmp_path):
    def model(impl):
        inputs = keras.Input((8, 8, 32))
        outputs = GroupedConv2D(32, 3, groups=4, implementation=impl, name="gconv")(inputs)
        return keras.Model(inputs, outputs)

    x = tf.random.stateless_normal([1, 8, 8, 32], seed=[5, 6])
    source = model("depthwise")
    source.save_weights(str(tmp_path / "w.h5"))
    target = model("cpu")
    target.load_weights(str(tmp_path / "w.h5"))
    assert_close(target(x), source(x))


def test_get_config_round_trip():
    layer = GroupedConv2D(
        128,
        3,
        groups=32,
        strides=2,
        data_format="channels_first",
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(1e-4),
        implementation="split",
        name="g",
    )
    config = layer.get_config()
    clone = GroupedConv2D.from_config(config)
    assert clone.get_config() == config
    assert (clone.filters, clone.kernel_size, clone.groups, clone.strides) == (128, 3, 32, 2)
    assert (clone.data_format, clone.implementation, clone.name) == ("channels_first", "split", "g")
    assert isinstance(clone.kernel_initializer, keras.initializers.HeNormal)
    assert clone.kernel_regularizer.get_config() == {"l2": pytest.approx(1e-4)}


def test_resolved_implementation(monkeypatch):
    monkeypatch.setattr(gc.device, "gpu_available", lambda: False)
    assert GroupedConv2D(64, 3, groups=32)._resolved_implementation() == "cpu"
    assert GroupedConv2D(64, 3, groups=32, implementation="split")._resolved_implementation() == (
        "split"
    )
    assert GroupedConv2D(64, 3, groups=1, implementation="split")._resolved_implementation() == (
        "native"
    )
    monkeypatch.setattr(gc.device, "gpu_available", lambda: True)
    assert GroupedConv2D(64, 3, groups=32)._resolved_implementation() == "native"
    assert GroupedConv2D(64, 3, groups=32, implementation="cpu")._resolved_implementation() == "cpu"


def test_bad_arguments():
    with pytest.raises(ValueError, match="implementation"):
        GroupedConv2D(64, 3, groups=32, implementation="xla")
    with pytest.raises(ValueError, match="divisible"):
        GroupedConv2D(60, 3, groups=32)
    with pytest.raises(ValueError, match="divisible"):
        GroupedConv2D(64, 3, groups=32)(tf.zeros([1, 4, 4, 48]))
