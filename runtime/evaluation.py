"""Evaluation and the inference benchmark, one path as in the original: top-1/top-5,
throughput and per-batch latency over every validation image or a number of batches."""

import time
from typing import Optional

import numpy as np
import tensorflow as tf

from utils.logs.progress import Progress


def make_predict_fn(model, xla):
    @tf.function(jit_compile=xla, reduce_retracing=True)
    def predict(images):
        return model(images, training=False)

    return predict


def latency_stats(batch_times, batch_size):
    """Throughput (img/s) and per-batch latency average and percentiles (ms)."""
    times = np.asarray(batch_times, dtype=np.float64)
    ms = 1000.0 * times
    return {
        "throughput": batch_size * len(times) / times.sum(),
        "latency_avg": float(ms.mean()),
        "latency_p90": float(np.percentile(ms, 90)),
        "latency_p95": float(np.percentile(ms, 95)),
        "latency_p99": float(np.percentile(ms, 99)),
    }


def _top_k_correct(logits, labels):
    """(top-1 hits, top-5 hits, scored images); a label the model has no output for
    (below 0 or not below the number of logits) is not scored."""
    top5 = tf.math.top_k(logits, k=min(5, logits.shape[-1])).indices
    valid = (labels >= 0) & (labels < logits.shape[-1])
    hits = tf.equal(top5, tf.cast(labels[:, None], top5.dtype)) & valid[:, None]
    top1 = tf.reduce_sum(tf.cast(hits[:, 0], tf.int64))
    top5 = tf.reduce_sum(tf.cast(tf.reduce_any(hits, axis=1), tf.int64))
    return top1, top5, tf.reduce_sum(tf.cast(valid, tf.int64))


def timed_batches(batch_sizes: list, warmup_steps: int) -> list:
    """Indices of the batches that count for throughput and latency: the full-size ones
    after the first `warmup_steps` (as the original, the compiling batch among them); if
    that leaves none, the full-size ones after the first, else all.

    Args:
        batch_sizes: the size of every batch run, in order (not empty).
        warmup_steps: --warmup_steps.
    """
    full = [i for i, size in enumerate(batch_sizes) if size == batch_sizes[0]]
    for skip in (warmup_steps, 1):
        timed = [i for i in full if i >= skip]
        if timed:
            return timed
    return list(range(len(batch_sizes)))


def _run_batches(predict, dataset, steps, counts, progress, accuracy):
    """Predict batch after batch (at most `steps`); the wall time of each batch, from
    asking the input for it to its result, and its size."""
    batch_times, batch_sizes = [], []
    iterator = iter(dataset)
    while steps is None or len(batch_times) < steps:
        t0 = time.perf_counter()
        try:
            images, labels = next(iterator)
        except StopIteration:
            break
        logits = predict(images)
        if accuracy:
            top1, top5, scored = (int(c) for c in _top_k_correct(logits, labels))
            counts += [top1, top5, scored, int(labels.shape[0]) - scored]
        else:
            logits.numpy()  # wait for the result
            counts[2] += int(labels.shape[0])
        batch_times.append(time.perf_counter() - t0)
        batch_sizes.append(int(labels.shape[0]))
        progress.update(len(batch_times) if steps else int(counts[2]))
    return batch_times, batch_sizes


def evaluate(
    model,
    dataset,
    dist,
    xla: bool,
    warmup_steps: int = 1,
    steps: Optional[int] = None,
    accuracy: bool = True,
    total: Optional[int] = None,
) -> dict:
    """Top-1/top-5 (`accuracy`), throughput and latency: the one path of `evaluate`,
    `inference_benchmark` and the evaluation after training, as in the original.

    `steps`: stop after that many batches (this rank's), else run `dataset` to its end.
    `total`: images (or with `steps`, batches) to expect, for the progress line. Counts
    are summed over ranks: with shards that partition the validation set and no `steps`,
    every image counts once. Every rank runs the same collectives at the end; a rank
    whose input fails ends every rank there (`dist.check`). Timing: `timed_batches`; a
    batch's time includes waiting for the input. Throughput is the job's (timed images of
    all ranks over the slowest rank's timed seconds); latency figures are rank 0's.

    Args:
        model: the Keras model (logits out).
        dataset: iterable of (images, labels) batches.
        dist: the process group.
        xla: compile the prediction function.
        warmup_steps: batches left out of the timing (see `timed_batches`).
        steps: see above; None runs `dataset` to its end.
        accuracy: count top-1/top-5 (False for synthetic data).
        total: see above, or None for no progress line.
    """
    predict = make_predict_fn(model, xla)
    counts = np.zeros(4, np.int64)  # top-1 hits, top-5 hits, scored images, unscored
    progress = Progress(total or 0, 1, label="eval", enabled=bool(total) and dist.is_chief)
    batch_times, batch_sizes, error = [], [], None
    try:
        batch_times, batch_sizes = _run_batches(predict, dataset, steps, counts, progress, accuracy)
    except Exception as caught:  # this rank's input failed: all ranks end in check()
        error = caught
    progress.close()
    dist.check(error)
    top1, top5, images, unscored = (int(c) for c in np.asarray(dist.sum(counts)))
    timed = timed_batches(batch_sizes, warmup_steps) if batch_sizes else []
    timed_times = [batch_times[i] for i in timed]
    seconds, timed_images = dist.gather(
        [sum(timed_times), sum(batch_sizes[i] for i in timed)], name="eval_seconds"
    ).T
    result = {"eval_images": images}
    if accuracy:
        result["top1_accuracy"] = top1 / images if images else float("nan")
        result["top5_accuracy"] = top5 / images if images else float("nan")
    if unscored:
        result["eval_unscored_labels"] = unscored
        if dist.is_chief:
            print(
                f"warning: {unscored} validation image(s) not scored: their label is outside "
                "the model's classes (check --num_classes against the records)",
                flush=True,
            )
    if seconds.max() > 0:
        result["eval_throughput"] = float(timed_images.sum()) / float(seconds.max())
    if timed_times:
        stats = latency_stats(timed_times, batch_size=1)
        result.update({f"eval_{k}": v for k, v in stats.items() if k != "throughput"})
    return result
