"""CPU (or GPU) training and inference img/s of each architecture with this project's steps.

    .venv/bin/python -m benchmarks.bench_models --batch_size 8 --image_size 64 [--amp]

Times the same compiled training step and inference function that `main.py` runs, on one
synthetic batch, after warm-up; prints the median of --repeats timed steps per cell.
Inference here runs in the training process, so without the oneDNN frozen weights that
main.py's inference modes use (utils/core/perf_env.py): `benchmarks/bench_vs_timm.py` measures
inference as main.py runs it.
"""

import argparse
import statistics
import time

import tensorflow as tf

from model import ARCHITECTURES, build_model
from runtime.evaluation import make_predict_fn
from runtime.training import make_train_step
from utils.core.tf_compat import keras
from utils.distributed import SingleProcess
from utils.optimizers import build_optimizer


def _median_time(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_arch(arch, batch_size, image_size, amp, warmup, repeats, data_format):
    keras.mixed_precision.set_global_policy("mixed_float16" if amp else "float32")
    model = build_model(arch, num_classes=1000, data_format=data_format)
    optimizer = build_optimizer(0.01, 0.9, amp, -1)
    step = make_train_step(model, optimizer, SingleProcess(), 1e-4, amp, xla=False)
    predict = make_predict_fn(model, xla=False)
    images = tf.random.uniform([batch_size, image_size, image_size, 3], 0, 255)
    targets = tf.one_hot(tf.random.uniform([batch_size], 0, 1000, tf.int32), 1000)
    train_s = _median_time(lambda: step(images, targets)[2].numpy(), warmup, repeats)
    infer_s = _median_time(lambda: predict(images).numpy(), warmup, repeats)
    return batch_size / train_s, batch_size / infer_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=sorted(ARCHITECTURES))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--data_format", choices=("NHWC", "NCHW"), default="NHWC")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    precision = "AMP" if args.amp else "FP32"
    print(
        "| arch | batch | size | format | precision | train img/s | inference img/s |\n"
        "|---|---|---|---|---|---|---|"
    )
    for arch in args.arch:
        train, infer = bench_arch(
            arch,
            args.batch_size,
            args.image_size,
            args.amp,
            args.warmup,
            args.repeats,
            args.data_format,
        )
        print(
            f"| {arch} | {args.batch_size} | {args.image_size} | {args.data_format} | "
            f"{precision} | {train:.2f} | {infer:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
