"""ResNet50 v1.5, ResNeXt101-32x4d and SE-ResNeXt101-32x4d from one table and one builder.

The model takes raw 0..255 RGB pixels in NHWC (the layout of every input pipeline and of
exported models), normalises them itself and, for `data_format="NCHW"`, transposes once
after normalising. Logits are float32 whatever the mixed-precision policy.
"""

from typing import Optional

import tensorflow as tf

from model.blocks import LayerFactory, bottleneck, conv_bn
from model.config import ARCHITECTURES, DATA_FORMATS, IMAGENET_MEAN, IMAGENET_STD
from model.layers.pooling import MaxPool2D
from utils.core.tf_compat import keras

DATA_FORMAT_NAMES = {"NHWC": "channels_last", "NCHW": "channels_first"}


def normalize_images(x):
    """Raw 0..255 RGB pixels -> the normalised input the network expects."""
    mean = tf.constant(IMAGENET_MEAN, dtype=x.dtype)
    std = tf.constant(IMAGENET_STD, dtype=x.dtype)
    return (x - mean) / std


def _stem(x, f):
    x = conv_bn(x, f, 64, 7, strides=2, name="stem")
    return MaxPool2D(
        3,
        2,
        padding="same",
        explicit_padding=f.explicit_padding(3, 2),
        data_format=f.data_format,
        name="stem_pool",
    )(x)


def _head(x, f, num_classes, use_final_conv):
    if use_final_conv:
        x = keras.layers.GlobalAveragePooling2D(
            data_format=f.data_format, keepdims=True, name="avg_pool"
        )(x)
        x = keras.layers.Conv2D(
            num_classes,
            1,
            use_bias=True,
            data_format=f.data_format,
            kernel_initializer=f.initializer(),
            name="logits_conv",
        )(x)
        x = keras.layers.Flatten(data_format=f.data_format, name="logits_flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(data_format=f.data_format, name="avg_pool")(x)
        x = f.dense(num_classes, name="logits_dense")(x)
    return keras.layers.Activation("linear", dtype="float32", name="logits")(x)


def build_model(
    arch: str = "resnext101-32x4d",
    num_classes: int = 1000,
    data_format: str = "NHWC",
    weight_init: str = "fan_out",
    use_final_conv: bool = False,
    normalize_input: bool = True,
    image_size: Optional[int] = None,
    padding: str = "tf",
    se_width: int = 0,
) -> keras.Model:
    """Build `arch` as a Keras model mapping [N, H, W, 3] pixels to [N, num_classes] logits.

    The current `keras.mixed_precision` global policy sets the compute dtype.

    Args:
        arch: a key of `model.config.ARCHITECTURES`.
        num_classes: the classifier's outputs.
        data_format: "NHWC" or "NCHW", the layout inside the network (the input is NHWC).
        weight_init: "fan_out" or "fan_in", the variance-scaling mode of the kernels.
        use_final_conv: a 1x1 conv classifier head instead of a dense one.
        normalize_input: False for pipelines that already normalise (DALI).
        image_size: fixes H and W in the input signature; None accepts any size.
        padding: "tf" ('SAME', the original's) or "symmetric" (PyTorch's, for imported
            PyTorch weights); both have the same variables.
        se_width: SE hidden channels in every block; 0: the block's channels over the
            arch's SE ratio (the original's); NVIDIA PyTorch's SE-ResNeXt uses 16.

    Raises:
        ValueError: an unknown `arch` or `data_format`, or `se_width` without SE.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHITECTURES)}")
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be NHWC or NCHW, got {data_format!r}")
    spec = ARCHITECTURES[arch]
    if se_width and not spec.se_ratio:
        raise ValueError(f"se_width needs an arch with SE, not {arch!r}")
    f = LayerFactory(DATA_FORMAT_NAMES[data_format], weight_init, padding)

    inputs = keras.Input(shape=(image_size, image_size, 3), name="input_tensor")
    x = inputs
    if normalize_input:
        x = keras.layers.Lambda(normalize_images, name="normalize")(x)
    if data_format == "NCHW":
        x = keras.layers.Permute((3, 1, 2), name="to_nchw")(x)

    x = _stem(x, f)
    for stage, (blocks, width) in enumerate(zip(spec.blocks, spec.widths), start=1):
        for block in range(blocks):
            x = bottleneck(
                x,
                f,
                width=width,
                out_channels=width * spec.expansion,
                strides=2 if stage > 1 and block == 0 else 1,
                groups=spec.groups,
                se_channels=(se_width or width * spec.expansion // spec.se_ratio)
                if spec.se_ratio
                else 0,
                project=block == 0,
                name=f"stage{stage}_block{block + 1}",
            )
    logits = _head(x, f, num_classes, use_final_conv)
    return keras.Model(inputs, logits, name=arch.replace("-", "_"))
