"""Functional building blocks: conv+BN(+ReLU), squeeze-and-excitation, the bottleneck.

Every builder takes a `LayerFactory` that carries the settings shared by the whole
network (data format, initializer, padding), so the blocks only state what differs.
"""

import tensorflow as tf

from model.layers.grouped_conv import GroupedConv2D
from utils.core.tf_compat import keras

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
PADDINGS = ("tf", "symmetric")


class LayerFactory:
    """Makes the layers of one network with its data format, kernel initializer and padding.

    `padding="tf"`: TensorFlow 'SAME' (for an even input a strided conv's extra row and
    column go bottom/right), as the original TF1 model trained. `padding="symmetric"`:
    PyTorch's `padding=(k - 1) // 2` on every side, for weights trained in PyTorch. The two
    differ only for strided layers with k > 1, so only those get an explicit ZeroPadding2D
    ('{name}_pad', no weights) and a 'valid' conv; every variable is the same in both.
    """

    def __init__(self, data_format="channels_last", weight_init="fan_out", padding="tf"):
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.data_format = data_format
        self.weight_init = weight_init
        self.padding = padding
        self.channel_axis = -1 if data_format == "channels_last" else 1

    def explicit_padding(self, kernel_size: int, strides: int) -> int:
        """Pixels to pad on each side before a 'valid' layer, or 0 for TF 'SAME'.

        Args:
            kernel_size: the layer's (square) window.
            strides: its stride.
        """
        if self.padding == "symmetric" and strides > 1 and kernel_size > 1:
            return (kernel_size - 1) // 2
        return 0

    def pad(self, x: tf.Tensor, amount: int, name: str) -> tf.Tensor:
        """`x` zero-padded by `amount` on every spatial side (a weightless layer `name`)."""
        return keras.layers.ZeroPadding2D(amount, data_format=self.data_format, name=name)(x)

    def initializer(self):
        return keras.initializers.VarianceScaling(
            scale=2.0, mode=self.weight_init, distribution="truncated_normal"
        )

    def conv(self, filters, kernel_size, strides=1, groups=1, name=None, padding="same"):
        if groups > 1:
            return GroupedConv2D(
                filters,
                kernel_size,
                groups=groups,
                strides=strides,
                data_format=self.data_format,
                kernel_initializer=self.initializer(),
                padding=padding,
                name=name,
            )
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            data_format=self.data_format,
            kernel_initializer=self.initializer(),
            name=name,
        )

    def batch_norm(self, name):
        return keras.layers.BatchNormalization(
            axis=self.channel_axis, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
        )

    def dense(self, units, name, kernel_initializer=None):
        return keras.layers.Dense(
            units,
            kernel_initializer=kernel_initializer or self.initializer(),
            bias_initializer="zeros",
            name=name,
        )


def conv_bn(x, f, filters, kernel_size, name, strides=1, groups=1, relu=True):
    """conv (bias-free) -> BN [-> ReLU], named `{name}_conv`, `{name}_bn`, `{name}_relu`."""
    pad = f.explicit_padding(kernel_size, strides)
    if pad:
        x = f.pad(x, pad, name=f"{name}_pad")
    conv = f.conv(filters, kernel_size, strides, groups, f"{name}_conv", "valid" if pad else "same")
    x = conv(x)
    x = f.batch_norm(name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def squeeze_excitation(x, f, hidden, name):
    """Scale channels by sigmoid(dense(relu(dense(mean(x))))), the SE-Net gate, with
    `hidden` channels between the two dense layers."""
    channels = x.shape[f.channel_axis]
    gate_shape = (1, 1, channels) if f.data_format == "channels_last" else (channels, 1, 1)
    s = keras.layers.GlobalAveragePooling2D(data_format=f.data_format, name=f"{name}_pool")(x)
    # As the original: variance_scaling_initializer() defaults, whatever --weight_init.
    se_init = keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
    s = f.dense(hidden, name=f"{name}_reduce", kernel_initializer=se_init)(s)
    s = keras.layers.ReLU(name=f"{name}_relu")(s)
    # A fresh instance: Keras repeats an unseeded initializer's values when it is reused.
    se_init = keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
    s = f.dense(channels, name=f"{name}_expand", kernel_initializer=se_init)(s)
    s = keras.layers.Activation("sigmoid", name=f"{name}_sigmoid")(s)
    s = keras.layers.Reshape(gate_shape, name=f"{name}_gate")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def bottleneck(x, f, width, out_channels, strides, groups, se_channels, project, name):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 (grouped for ResNeXt) conv, and
    an SE gate of `se_channels` hidden channels when that is not 0.

    Layer names: `{name}_1x1_reduce`, `{name}_3x3`, `{name}_1x1_expand` on the main path,
    `{name}_shortcut` for the projection, `{name}_se` for the SE gate.
    """
    shortcut = x
    if project:
        shortcut = conv_bn(
            x, f, out_channels, 1, strides=strides, relu=False, name=f"{name}_shortcut"
        )
    x = conv_bn(x, f, width, 1, name=f"{name}_1x1_reduce")
    x = conv_bn(x, f, width, 3, strides=strides, groups=groups, name=f"{name}_3x3")
    x = conv_bn(x, f, out_channels, 1, relu=False, name=f"{name}_1x1_expand")
    if se_channels:
        x = squeeze_excitation(x, f, se_channels, name=f"{name}_se")
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(x)
