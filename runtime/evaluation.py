"""Evaluation (top-1/top-5 over every validation image) and the inference benchmark."""

import time

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


def _steady_batches(batch_sizes):
    """Indices of the batches to time: not the first, not a smaller last one."""
    steady = [i for i, size in enumerate(batch_sizes) if i > 0 and size == batch_sizes[0]]
    return steady or list(range(len(batch_sizes)))


def evaluate(model, dataset, dist, xla, total_images=None):
    """Top-1/top-5 over this rank's shard, summed over ranks; also throughput and latency.

    The shards partition the validation set, so the sums count every image exactly once.
    Every rank runs the same collectives at the end, whatever its shard size; a rank whose
    input fails ends every rank there (`dist.check`). Throughput and latency leave out the
    first batch (it traces and compiles) and a smaller last batch (it traces again), unless
    nothing else is left. Throughput is the job's: the timed images of all ranks over the
    slowest rank's timed seconds. Latency figures are rank 0's.
    """
    predict = make_predict_fn(model, xla)
    counts = np.zeros(4, np.int64)  # top-1 hits, top-5 hits, scored images, unscored
    batch_times, batch_sizes = [], []
    progress = Progress(
        total_images or 0, 1, label="eval", enabled=bool(total_images) and dist.is_chief
    )
    error = None
    try:
        for images, labels in dataset:
            t0 = time.perf_counter()
            top1, top5, scored = _top_k_correct(predict(images), labels)
            scored = int(scored)
            counts += [int(top1), int(top5), scored, int(labels.shape[0]) - scored]
            batch_times.append(time.perf_counter() - t0)
            batch_sizes.append(int(labels.shape[0]))
            progress.update(int(counts[2]) * dist.size)
    except Exception as caught:  # this rank's input failed: all ranks end in check()
        error = caught
    progress.close()
    dist.check(error)
    top1, top5, images, unscored = (int(c) for c in np.asarray(dist.sum(counts)))
    timed = _steady_batches(batch_sizes)
    timed_times = [batch_times[i] for i in timed]
    seconds, timed_images = dist.gather(
        [sum(timed_times), sum(batch_sizes[i] for i in timed)], name="eval_seconds"
    ).T
    result = {
        "top1_accuracy": top1 / images if images else float("nan"),
        "top5_accuracy": top5 / images if images else float("nan"),
        "eval_images": images,
    }
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


def inference_benchmark(model, dataset, steps, warmup_steps, batch_size, xla):
    """Time `steps` batches one by one (synchronised), leaving out the first `warmup_steps`."""
    predict = make_predict_fn(model, xla)
    iterator = iter(dataset)
    times = []
    progress = Progress(steps, batch_size, label="inference")
    for step in range(steps):
        images, _ = next(iterator)
        t0 = time.perf_counter()
        predict(images).numpy()
        times.append(time.perf_counter() - t0)
        progress.update(step + 1)
    progress.close()
    stats = latency_stats(times[warmup_steps:], batch_size)
    return {
        "infer_throughput": stats["throughput"],
        "infer_latency_avg": stats["latency_avg"],
        "infer_latency_p90": stats["latency_p90"],
        "infer_latency_p95": stats["latency_p95"],
        "infer_latency_p99": stats["latency_p99"],
    }
