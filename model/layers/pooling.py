"""Max-pooling that is correct in NCHW on CPU too, with optional PyTorch-style padding."""

import tensorflow as tf

from model.layers.device import gpu_available
from utils.core.tf_compat import keras


class MaxPool2D(keras.layers.MaxPool2D):
    """Keras MaxPool2D, except NCHW without a GPU, plus `explicit_padding`.

    TensorFlow 2.15's CPU max-pool returns wrong values for NCHW input without raising
    (tests/test_model.py shows it), so on CPU an NCHW pool runs in NHWC between transposes.
    `explicit_padding=p` pads every spatial side by p with -inf, then pools 'valid': PyTorch's
    `MaxPool2d(k, s, padding=p)` (TF 'SAME' puts the extra row and column bottom/right).
    """

    def __init__(self, *args, explicit_padding: int = 0, **kwargs):
        if explicit_padding:
            kwargs["padding"] = "valid"
        super().__init__(*args, **kwargs)
        self.explicit_padding = int(explicit_padding)

    def _pad(self, inputs):
        p = self.explicit_padding
        spatial = [[p, p], [p, p]]
        pads = [[0, 0], *spatial, [0, 0]]
        if self.data_format == "channels_first":
            pads = [[0, 0], [0, 0], *spatial]
        # -inf: a padded cell never wins the max, as in PyTorch.
        return tf.pad(inputs, pads, constant_values=float("-inf"))

    def call(self, inputs):
        if self.explicit_padding:
            inputs = self._pad(inputs)
        if self.data_format != "channels_first" or gpu_available():
            return super().call(inputs)
        x = tf.transpose(inputs, [0, 2, 3, 1])
        y = tf.nn.max_pool2d(x, self.pool_size, self.strides, self.padding.upper())
        return tf.transpose(y, [0, 3, 1, 2])

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape).as_list()
        spatial = [1, 2] if self.data_format == "channels_last" else [2, 3]
        for axis in spatial:
            if shape[axis] is not None:
                shape[axis] += 2 * self.explicit_padding
        return super().compute_output_shape(tf.TensorShape(shape))

    def get_config(self):
        return {**super().get_config(), "explicit_padding": self.explicit_padding}
