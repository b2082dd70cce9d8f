"""What the input-pipeline benchmarks share: their flags, ImageNet-like records, a timer.

`bench_input_pipeline.py` (tf.data) and `bench_dali.py` (DALI vs tf.data) both time
pipelines over the same synthetic set: NUM_IMAGES JPEGs cut from the two photos
scikit-learn ships, converted with utils/tools/build_tfrecords.py.
"""

import argparse
import os
import statistics
import time

import tensorflow as tf

from utils.tools import build_tfrecords

NUM_IMAGES = 256
NUM_CLASSES = 4
NOISE_STDDEV = 18.0


def parse_args(description, argv=None):
    """The flags both pipeline benchmarks take: --runs, --batches, --batch_size, --image_size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    return parser.parse_args(argv)


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


def make_records(work, rng):
    """Write the images under `work`/images and convert them to 8 + 8 record files in
    `work`/records; returns (records directory, mean JPEG size in bytes)."""
    mean_bytes = make_images(os.path.join(work, "images"), rng)
    data_dir = os.path.join(work, "records")
    build_tfrecords.main([
        "--train_dir", os.path.join(work, "images", "train"),
        "--validation_dir", os.path.join(work, "images", "validation"),
        "--output_dir", data_dir,
        "--train_shards", "8",
        "--validation_shards", "8",
    ])  # fmt: skip
    return data_dir, mean_bytes


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
