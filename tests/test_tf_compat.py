"""Each TensorFlow/Keras internal behind utils/core/tf_compat.py, on the installed stack."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from utils.core import tf_compat
from utils.core.tf_compat import keras
from utils.optimizers import build_optimizer


def test_keras_is_keras_2():
    assert not hasattr(keras, "ops"), "Keras 3 has keras.ops; this project uses the Keras 2 API"
    assert hasattr(keras.optimizers, "SGD") and hasattr(keras, "mixed_precision")


REPO = Path(__file__).resolve().parents[1]
# Run before tf_compat in a fresh interpreter: hide the tf_keras package from imports.
_HIDE_TF_KERAS = "import sys; sys.modules['tf_keras'] = None\n"  # not found, not importable


def _fresh(code, hide_tf_keras=False):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = (_HIDE_TF_KERAS if hide_tf_keras else "") + code
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env
    )


def test_an_inherited_legacy_keras_switch_does_not_break_keras():
    """TF_USE_LEGACY_KERAS=1 from a shell made for the current venv: on 2.15 without
    tf_keras, tf.keras would fail to import ("Keras cannot be imported")."""
    code = (
        "from utils.core.tf_compat import keras; import tensorflow as tf; "
        "assert tf.keras.layers.Dense is keras.layers.Dense; print(keras.__name__)"
    )
    proc = _fresh(code, hide_tf_keras=tf_compat.TF_VERSION < (2, 16))
    assert proc.returncode == 0, proc.stderr


def test_missing_tf_keras_on_a_new_tensorflow_is_one_line():
    if tf_compat.TF_VERSION < (2, 16):
        pytest.skip("TF 2.15's tf.keras is Keras 2: tf_keras is not needed")
    proc = _fresh("import utils.core.tf_compat", hide_tf_keras=True)
    assert proc.returncode == 1, proc.stderr
    assert "UserError: TensorFlow 2." in proc.stderr and "needs the tf_keras package" in proc.stderr


def test_loss_scale_state_is_the_scale_and_its_counter():
    optimizer = build_optimizer(0.1, 0.9, amp=True, static_loss_scale=-1)
    scale, counter = tf_compat.loss_scale_state(optimizer)
    assert float(scale) == float(optimizer.loss_scale) == 2.0**15
    assert int(counter) == 0 and isinstance(counter, tf.Variable)


def test_optimizer_slot_finds_each_variables_momentum():
    variables = [tf.Variable([1.0, 2.0]), tf.Variable([3.0])]
    optimizer = build_optimizer(0.1, 0.9, amp=False, static_loss_scale=-1)
    optimizer.build(variables)
    slots = [tf_compat.optimizer_slot(optimizer, optimizer.momentums, v) for v in variables]
    assert [s.shape for s in slots] == [v.shape for v in variables]
    assert slots[0] is not slots[1]


def test_in_xla_context_only_inside_a_jit_compiled_function():
    seen = {}

    @tf.function(jit_compile=True)
    def compiled(x):
        seen["jit"] = tf_compat.in_xla_context()
        return x + 1

    @tf.function
    def plain(x):
        seen["plain"] = tf_compat.in_xla_context()
        return x + 1

    compiled(tf.constant(1.0))
    plain(tf.constant(1.0))
    assert seen == {"jit": True, "plain": False}
    assert tf_compat.in_xla_context() is False  # eager


def test_is_functional():
    inputs = keras.Input((3,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert tf_compat.is_functional(functional)
    assert not tf_compat.is_functional(Subclassed())
    np.testing.assert_equal(functional(np.zeros((1, 3), np.float32)).shape, (1, 2))
