"""Max-pooling that is correct in NCHW on CPU too."""

import tensorflow as tf

from model.layers.device import gpu_available
from utils.core.tf_compat import keras


class MaxPool2D(keras.layers.MaxPool2D):
    """Keras MaxPool2D, except NCHW without a GPU.

    TensorFlow 2.15's CPU max-pool returns wrong values for NCHW input without raising
    (tests/test_model.py shows it), so on CPU an NCHW pool runs in NHWC between transposes.
    """

    def call(self, inputs):
        if self.data_format != "channels_first" or gpu_available():
            return super().call(inputs)
        x = tf.transpose(inputs, [0, 2, 3, 1])
        y = tf.nn.max_pool2d(x, self.pool_size, self.strides, self.padding.upper())
        return tf.transpose(y, [0, 3, 1, 2])
