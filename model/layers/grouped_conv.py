"""A grouped 2-D convolution that trains on CPU and on GPU with one kernel layout.

The kernel is always `[k, k, C_in / groups, C_out]` (the layout `tf.nn.conv2d` takes for
a grouped convolution), so a checkpoint moves between devices and implementations
unchanged. Padding is 'SAME', or 'VALID' after an explicit pad (PyTorch's symmetric
padding); there is no bias. `implementation` picks how it is
computed: "native" (`tf.nn.conv2d`; cuDNN on GPU), "cpu" (native where TensorFlow's CPU
kernels have the grouped gradients, else "split"), "split" (one conv per group),
"depthwise" (a depthwise conv and a per-group sum), or "auto" (default: "native" on a
GPU, else "cpu"). docs/design.md ("Grouped convolution") has the measurements.
"""

import functools

import numpy as np
import tensorflow as tf

from model.layers import device
from utils.core import tf_compat
from utils.core.tf_compat import keras

IMPLEMENTATIONS = ("auto", "native", "cpu", "split", "depthwise")


def resolve_implementation(implementation, groups):
    """The implementation actually used for `implementation` ("auto" resolved)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if groups == 1:
        return "native"
    if implementation == "auto":
        return "native" if device.gpu_available() else "cpu"
    return implementation


# --------------------------------------------------------------------------------------
# Formulations. All take NHWC `x` and a `[k, k, C_in/G, C_out]` kernel of x's dtype.


def grouped_to_depthwise_kernel(kernel, groups):
    """[k, k, C_in/G, C_out] grouped kernel -> [k, k, C_in, C_out/G] depthwise kernel.

    Depthwise channel c = g * cin_g + i, multiplier o maps to grouped (i, g * cout_g + o).
    """
    k_h, k_w, cin_g, c_out = kernel.shape
    cout_g = c_out // groups
    kernel = tf.reshape(kernel, [k_h, k_w, cin_g, groups, cout_g])
    kernel = tf.transpose(kernel, [0, 1, 3, 2, 4])
    return tf.reshape(kernel, [k_h, k_w, groups * cin_g, cout_g])


def depthwise_grouped_conv2d(x, kernel, groups, strides, padding="SAME"):
    """Grouped conv of NHWC `x` computed with a depthwise conv and a per-group sum."""
    cin_g, c_out = kernel.shape[2], kernel.shape[3]
    cout_g = c_out // groups
    y = tf.nn.depthwise_conv2d(
        x,
        grouped_to_depthwise_kernel(kernel, groups),
        strides=[1, strides, strides, 1],
        padding=padding,
    )
    shape = tf.shape(y)
    y = tf.reshape(y, [shape[0], shape[1], shape[2], groups, cin_g, cout_g])
    y = tf.reduce_sum(y, axis=4)
    return tf.reshape(y, [shape[0], shape[1], shape[2], c_out])


def split_grouped_conv2d(x, kernel, groups, strides, padding="SAME"):
    """Grouped conv of NHWC `x` as one conv per group and a concat."""
    xs = tf.split(x, groups, axis=-1)
    ks = tf.split(kernel, groups, axis=-1)
    ys = [tf.nn.conv2d(xg, kg, strides, padding) for xg, kg in zip(xs, ks)]
    return tf.concat(ys, axis=-1)


def _per_group_backprops(x, kernel, dy, groups, strides):
    """Input and kernel gradients with one non-grouped backprop op per group (NHWC)."""
    n, h, w, _ = x.shape
    k_h, k_w, cin_g, c_out = kernel.shape
    strides4 = [1, strides, strides, 1]
    dxs, dks = [], []
    for xg, kg, dyg in zip(
        tf.split(x, groups, axis=-1), tf.split(kernel, groups, axis=-1), tf.split(dy, groups, -1)
    ):
        dxs.append(
            tf.raw_ops.Conv2DBackpropInput(
                input_sizes=[n, h, w, cin_g],
                filter=kg,
                out_backprop=dyg,
                strides=strides4,
                padding="SAME",
            )
        )
        dks.append(
            tf.raw_ops.Conv2DBackpropFilter(
                input=xg,
                filter_sizes=[k_h, k_w, cin_g, c_out // groups],
                out_backprop=dyg,
                strides=strides4,
                padding="SAME",
            )
        )
    return tf.concat(dxs, axis=-1), tf.concat(dks, axis=-1)


@functools.cache
def native_grads_supported(dtype_name):
    """Whether TensorFlow's CPU kernels compute a grouped conv's gradients for this dtype.

    oneDNN (on by default in TensorFlow's x86 Linux builds) runs `Conv2DBackpropInput` and
    `Conv2DBackpropFilter` with a grouped filter for float32 and bfloat16. TensorFlow's own
    CPU kernels (float16, or any dtype with TF_ENABLE_ONEDNN_OPTS=0) reject it ("Gradients
    for grouped convolutions are not supported on CPU"). Checked once per process and dtype
    on a tiny problem against one non-grouped backprop op per group.
    """
    dtype = tf.as_dtype(dtype_name)
    rng = np.random.default_rng(0)
    groups, cin_g, cout_g, stride = 2, 2, 3, 2
    x = rng.standard_normal((1, 5, 6, groups * cin_g)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, cin_g, groups * cout_g)).astype(np.float32)
    dy = rng.standard_normal((1, 3, 3, groups * cout_g)).astype(np.float32)
    tol = 1e-4 if dtype == tf.float32 else 5e-2
    with tf.init_scope(), tf.device("/CPU:0"):
        wants = _per_group_backprops(x, kernel, dy, groups, stride)
        xc, kc, dyc = (tf.cast(a, dtype) for a in (x, kernel, dy))
        try:
            gots = (
                tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=x.shape,
                    filter=kc,
                    out_backprop=dyc,
                    strides=[1, stride, stride, 1],
                    padding="SAME",
                ),
                tf.raw_ops.Conv2DBackpropFilter(
                    input=xc,
                    filter_sizes=kernel.shape,
                    out_backprop=dyc,
                    strides=[1, stride, stride, 1],
                    padding="SAME",
                ),
            )
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            return False
        for got, want in zip(gots, wants):
            got, want = tf.cast(got, tf.float32).numpy(), want.numpy()
            if not np.allclose(got, want, rtol=tol, atol=tol * np.abs(want).max()):
                return False
    return True


def cpu_grouped_conv2d(x, kernel, groups, strides, padding="SAME"):
    """The CPU path: the native grouped conv where TensorFlow's CPU kernels can train it.

    float16 is computed in float32 and cast back (no float16 oneDNN kernels on CPU). Where
    the native gradients are unavailable (see `native_grads_supported`), or when XLA
    compiles the graph (XLA's CPU grouped conv backward is ~50x slower than "split"), the
    split formulation is used.
    """
    if tf_compat.in_xla_context():
        return split_grouped_conv2d(x, kernel, groups, strides, padding)
    if x.dtype == tf.float16:
        x32, k32 = tf.cast(x, tf.float32), tf.cast(kernel, tf.float32)
        return tf.cast(cpu_grouped_conv2d(x32, k32, groups, strides, padding), tf.float16)
    if native_grads_supported(x.dtype.name):
        return tf.nn.conv2d(x, kernel, strides, padding)
    return split_grouped_conv2d(x, kernel, groups, strides, padding)


def native_grouped_conv2d(x, kernel, groups, strides, data_format="NHWC", padding="SAME"):
    del groups  # implied by the kernel's shape
    return tf.nn.conv2d(x, kernel, strides, padding, data_format=data_format)


_NHWC_FORMULATIONS = {
    "cpu": cpu_grouped_conv2d,
    "split": split_grouped_conv2d,
    "depthwise": depthwise_grouped_conv2d,
}


def grouped_conv2d(
    x, kernel, groups, strides=1, data_format="NHWC", implementation="auto", padding="SAME"
):
    """Grouped conv of `x` with a `[k, k, C_in/groups, C_out]` kernel.

    `data_format` is "NHWC" or "NCHW"; `implementation` as in the module docstring;
    `padding` "SAME" or "VALID".
    """
    implementation = resolve_implementation(implementation, groups)
    kernel = tf.cast(kernel, x.dtype)
    if implementation == "native":
        return native_grouped_conv2d(x, kernel, groups, strides, data_format, padding)
    fn = _NHWC_FORMULATIONS[implementation]
    if data_format == "NCHW":
        y = fn(tf.transpose(x, [0, 2, 3, 1]), kernel, groups, strides, padding)
        return tf.transpose(y, [0, 3, 1, 2])
    return fn(x, kernel, groups, strides, padding)


class GroupedConv2D(keras.layers.Layer):
    """Bias-free grouped convolution; `padding` "same" (default) or "valid".

    Args:
        filters: output channels, a multiple of `groups`.
        kernel_size: the square kernel's side.
        groups: number of groups; the input channels must be a multiple of it.
        strides: the stride in both spatial dimensions.
        data_format: "channels_last" (NHWC) or "channels_first" (NCHW).
        kernel_initializer: a Keras initializer or its name.
        kernel_regularizer: a Keras regularizer, its name, or None.
        implementation: one of `IMPLEMENTATIONS` (see the module docstring), resolved
            when the layer is called, so a model built on one device and restored on
            another uses the right path.
        padding: "same" or "valid" (after an explicit pad, for PyTorch's padding).
        **kwargs: Keras `Layer` arguments (name, dtype, ...).
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        groups: int,
        strides: int = 1,
        data_format: str = "channels_last",
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        implementation: str = "auto",
        padding: str = "same",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}")
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if filters % groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups})")
        self.filters = filters
        self.kernel_size = kernel_size
        self.groups = groups
        self.strides = strides
        self.data_format = data_format
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.implementation = implementation
        self.padding = padding

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        in_channels = int(input_shape[self._channel_axis])
        if in_channels % self.groups:
            raise ValueError(f"input channels ({in_channels}) not divisible by groups")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, in_channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            trainable=True,
        )
        super().build(input_shape)

    def _resolved_implementation(self):
        return resolve_implementation(self.implementation, self.groups)

    def call(self, inputs):
        return grouped_conv2d(
            inputs,
            self.kernel,
            self.groups,
            self.strides,
            data_format="NHWC" if self.data_format == "channels_last" else "NCHW",
            implementation=self._resolved_implementation(),
            padding=self.padding.upper(),
        )

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape).as_list()
        spatial = [1, 2] if self.data_format == "channels_last" else [2, 3]
        out = list(input_shape)
        for axis in spatial:
            if out[axis] is not None and self.padding == "valid":
                out[axis] = (out[axis] - self.kernel_size) // self.strides + 1
            elif out[axis] is not None:
                out[axis] = -(-out[axis] // self.strides)
        out[self._channel_axis] = self.filters
        return tf.TensorShape(out)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            groups=self.groups,
            strides=self.strides,
            data_format=self.data_format,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            implementation=self.implementation,
            padding=self.padding,
        )
        return config
