"""runtime/evaluation.py: accuracy counts and which batches are timed (single process)."""

import numpy as np
import tensorflow as tf

from runtime.evaluation import evaluate, timed_batches
from utils.core.tf_compat import keras
from utils.distributed import SingleProcess


def test_timed_batches_leave_out_the_first_and_a_smaller_last():
    # With --warmup_steps 1 (or more than there are batches): the first batch compiles.
    assert timed_batches([4, 4, 4, 2], 1) == [1, 2]
    assert timed_batches([4, 4, 4], 50) == [1, 2]
    assert timed_batches([4], 1) == [0]  # nothing else to time
    assert timed_batches([4, 2], 1) == [0, 1]


def test_evaluate_counts_every_image_and_matches_numpy_top_k():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(14, 6)).astype(np.float32)
    labels = rng.integers(0, 8, size=14).astype(np.int32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)  # 4, 4, 4, 2

    result = evaluate(model, dataset, SingleProcess(), xla=False)

    logits = model(images).numpy()
    ranked = np.argsort(-logits, axis=1)
    assert result["eval_images"] == 14
    assert result["top1_accuracy"] == np.mean(ranked[:, 0] == labels)
    assert result["top5_accuracy"] == np.mean((ranked[:, :5] == labels[:, None]).any(axis=1))
    assert 0 < result["eval_throughput"] < float("inf")
    assert result["eval_latency_avg"] <= result["eval_latency_p99"]
