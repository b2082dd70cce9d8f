"""Throughput of the DALI input pipelines against the tf.data ones, at 224x224 on this CPU.

Uses the ImageNet-like JPEGs of benchmarks/bench_input_pipeline.py (500x375 / 375x500,
about ImageNet's file size), converted with utils/tools/build_tfrecords.py and indexed with
utils/tools/dali_index.py. Times the training pipelines (random crop, flip, resize; DALI also
normalises) and the evaluation pipelines (resize, central crop) with no model attached.
DALI and tf.data runs alternate, so load changes on this shared machine hit both alike;
each row is the median of the runs (min and max beside it).

    python -m benchmarks.bench_dali [--runs 5] [--batches 40] [--batch_size 32]

Reference: ../shared/STACK.md measured DALI at about 460-500 img/s and tf.data at about
170-360 img/s here (batch 32, 2 threads).
"""

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np
import tensorflow as tf

from benchmarks.bench_input_pipeline import NUM_IMAGES, make_images, time_pipeline
from utils import dali_utils, data_utils
from utils.tools import build_tfrecords, dali_index

REFERENCE = "DALI 460-500, tf.data 170-360"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as work:
        mean_bytes = make_images(os.path.join(work, "images"), np.random.default_rng(0))
        data_dir, idx_dir = os.path.join(work, "records"), os.path.join(work, "idx")
        build_tfrecords.main([
            "--train_dir", os.path.join(work, "images", "train"),
            "--validation_dir", os.path.join(work, "images", "validation"),
            "--output_dir", data_dir,
            "--train_shards", "8",
            "--validation_shards", "8",
        ])  # fmt: skip
        dali_index.index_dir(data_dir, idx_dir, log=lambda _: None)
        size, batch = args.image_size, args.batch_size

        def dali_eval():  # infinite already; NUM_IMAGES is a multiple of 32: no padding
            return dali_utils.eval_dataset(data_dir, idx_dir, batch, size)[0]

        pairs = [
            (
                "train",
                lambda: dali_utils.train_dataset(data_dir, idx_dir, batch, size),
                lambda: data_utils.train_dataset(data_dir, batch, size),
            ),
            (
                "eval",
                dali_eval,
                lambda: data_utils.eval_dataset(data_dir, batch, size).repeat(),
            ),
        ]
        print(
            f"\nDALI vs tf.data, {NUM_IMAGES} JPEGs of 500x375 (mean {mean_bytes / 1024:.0f} KB),"
            f" {size}x{size}, batch {batch}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
            f"DALI threads {dali_utils._num_threads()}"
        )
        print(
            f"median of {args.runs} alternating runs x {args.batches} batches; "
            f"STACK.md reference: {REFERENCE} img/s\n"
        )
        print(f"| {'pipeline':<16} | {'img/s median':>12} | {'min':>6} | {'max':>6} |")
        print(f"|{'-' * 18}|{'-' * 14}|{'-' * 8}|{'-' * 8}|")
        for name, make_dali, make_tf in pairs:
            rates = {"DALI": [], "tf.data": []}
            for _ in range(args.runs):
                for label, make in (("DALI", make_dali), ("tf.data", make_tf)):
                    rates[label].append(time_pipeline(make, args.batches, 1)[0])
            for label, values in rates.items():
                row = f"{name}, {label}"
                print(
                    f"| {row:<16} | {statistics.median(values):>12.0f} | {min(values):>6.0f} "
                    f"| {max(values):>6.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
