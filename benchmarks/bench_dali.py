"""Throughput of the DALI input pipelines against the tf.data ones, at 224x224 on this CPU.

Times the training pipelines (random crop, flip, resize; DALI also normalises) and the
evaluation pipelines (resize, central crop) over ImageNet-like records
(`benchmarks/common.py`, indexed with utils/tools/dali_index.py), with no model attached.
DALI and tf.data runs alternate, so load changes hit both alike; each row is the median of
the runs (min and max beside it).

    .venv/bin/python -m benchmarks.bench_dali [--runs 5] [--batches 40] [--batch_size 32]
"""

import os
import statistics
import sys
import tempfile

import numpy as np
import tensorflow as tf

from benchmarks.common import NUM_IMAGES, make_records, parse_args, time_pipeline
from utils import dali_utils, data_utils
from utils.tools import dali_index


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)

    with tempfile.TemporaryDirectory() as work:
        data_dir, mean_bytes = make_records(work, np.random.default_rng(0))
        idx_dir = os.path.join(work, "idx")
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
        print(f"median of {args.runs} alternating runs x {args.batches} batches\n")
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
