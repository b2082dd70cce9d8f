"""Throughput of the tf.data input pipeline at 224x224 on this machine.

Builds an ImageNet-like TFRecord set with utils/tools/build_tfrecords.py from the two real
photos scikit-learn ships (china.jpg, flower.jpg), cut into varied 500x375 / 375x500
JPEGs of about ImageNet's size and quality, then times the training pipeline (crop,
flip, resize) and the evaluation pipeline (resize 256, central crop). Each row is the
median of several timed runs after a warm-up; images are consumed as fast as possible,
with no model attached.

    python -m benchmarks.bench_input_pipeline [--runs 5] [--batches 40] [--batch_size 32]

Reference: ../shared/STACK.md measured tf.data at about 170-360 img/s here (batch 32).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from utils import data_utils
from utils.tools import build_tfrecords

REFERENCE = "170-360"
NUM_IMAGES = 256
NUM_CLASSES = 4
NOISE_STDDEV = 18.0


def make_images(root, rng):
    """Write NUM_IMAGES JPEGs as train/<class>/ and validation/<class>/ under `root`."""
    import sklearn

    photo_dir = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    photos = []
    for name in ("china.jpg", "flower.jpg"):
        with open(os.path.join(photo_dir, name), "rb") as f:
            photos.append(tf.io.decode_jpeg(f.read(), channels=3))
    sizes = []
    for i in range(NUM_IMAGES):
        photo = photos[i % len(photos)]
        crop_h, crop_w = int(rng.integers(280, 420)), int(rng.integers(380, 630))
        top = int(rng.integers(0, photo.shape[0] - crop_h + 1))
        left = int(rng.integers(0, photo.shape[1] - crop_w + 1))
        image = photo[top : top + crop_h, left : left + crop_w]
        if rng.random() < 0.5:
            image = tf.image.flip_left_right(image)
        out_size = [375, 500] if rng.random() < 0.75 else [500, 375]
        image = tf.image.resize(image, out_size)
        # Sensor-like noise brings the files to ImageNet's typical ~110 KB; the smooth
        # source photos alone compress to half that and decode faster than real data.
        image += rng.normal(0.0, NOISE_STDDEV, image.shape)
        image = tf.cast(tf.clip_by_value(image + 0.5, 0.0, 255.0), tf.uint8)
        jpeg = tf.io.encode_jpeg(image, quality=int(rng.integers(85, 96))).numpy()
        sizes.append(len(jpeg))
        for split in ("train", "validation"):
            folder = os.path.join(root, split, f"class{i % NUM_CLASSES}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"img{i:04d}.JPEG"), "wb") as f:
                f.write(jpeg)
    return statistics.mean(sizes)


def time_pipeline(make_dataset, batches, runs):
    """Median, min and max img/s over `runs` runs of `batches` batches after warm-up."""
    rates = []
    for _ in range(runs):
        iterator = iter(make_dataset())
        for _ in range(3):  # warm-up: fills buffers, lets AUTOTUNE settle
            next(iterator)
        images, start = 0, time.perf_counter()
        for _ in range(batches):
            images += int(next(iterator)[0].shape[0])
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as work:
        mean_bytes = make_images(os.path.join(work, "images"), np.random.default_rng(0))
        data_dir = os.path.join(work, "records")
        build_tfrecords.main([
            "--train_dir", os.path.join(work, "images", "train"),
            "--validation_dir", os.path.join(work, "images", "validation"),
            "--output_dir", data_dir,
            "--train_shards", "8",
            "--validation_shards", "8",
        ])  # fmt: skip
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
        print(
            f"median of {args.runs} runs x {args.batches} batches; STACK.md reference: "
            f"tf.data {REFERENCE} img/s\n"
        )
        print(f"| {'pipeline':<30} | {'img/s median':>12} | {'min':>6} | {'max':>6} |")
        print(f"|{'-' * 32}|{'-' * 14}|{'-' * 8}|{'-' * 8}|")
        for name, make in rows:
            median, low, high = time_pipeline(make, args.batches, args.runs)
            print(f"| {name:<30} | {median:>12.0f} | {low:>6.0f} | {high:>6.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
