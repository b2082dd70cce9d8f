"""Throughput of the tf.data input pipeline at 224x224 on this machine.

Times the training pipeline (crop, flip, resize) and the evaluation pipeline (resize 256,
central crop) over ImageNet-like records (`benchmarks/common.py`), with no model attached;
each row is the median of several timed runs after a warm-up.

    .venv/bin/python -m benchmarks.bench_input_pipeline [--runs 5] [--batches 40] [--batch_size 32]
"""

import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

from benchmarks.common import NUM_IMAGES, make_records, parse_args, time_pipeline
from utils import data_utils


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)

    with tempfile.TemporaryDirectory() as work:
        data_dir, mean_bytes = make_records(work, np.random.default_rng(0))
        size, batch = args.image_size, args.batch_size

        def eval_forever():
            return data_utils.eval_dataset(data_dir, batch, size).repeat()

        rows = [
            ("train, seed=None", lambda: data_utils.train_dataset(data_dir, batch, size)),
            ("train, seed=1 (deterministic)",
             lambda: data_utils.train_dataset(data_dir, batch, size, seed=1)),
            ("eval", eval_forever),
        ]  # fmt: skip
        print(
            f"\ninput pipeline, {NUM_IMAGES} JPEGs of 500x375 (mean {mean_bytes / 1024:.0f} KB),"
            f" {size}x{size}, batch {batch}, {os.cpu_count()} CPUs, TF {tf.__version__}"
        )
        print(f"median of {args.runs} runs x {args.batches} batches\n")
        print(f"| {'pipeline':<30} | {'img/s median':>12} | {'min':>6} | {'max':>6} |")
        print(f"|{'-' * 32}|{'-' * 14}|{'-' * 8}|{'-' * 8}|")
        for name, make in rows:
            median, low, high = time_pipeline(make, args.batches, args.runs)
            print(f"| {name:<30} | {median:>12.0f} | {low:>6.0f} | {high:>6.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
