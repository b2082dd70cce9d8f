"""A small, real, learnable dataset in ImageNet TFRecord format, built on demand.

scikit-learn's handwritten digits drawn into 64x64 JPEGs (600 train, 200 validation, 10
classes), converted with utils/tools/build_tfrecords.py into <cache>/sample_data, where
<cache> is the `root` argument, else $RNXT_CACHE_DIR, else <repo>/.cache; built once,
atomically. `.venv/bin/python -m utils.tools.sample_data` builds it and prints its path.
Why the images look as they do: docs/design.md, "Data pipeline".
"""

import argparse
import colorsys
import os
import shutil
import sys
import tempfile

import numpy as np

from utils.core.errors import UserError, run_tool

VERSION = "2"  # bump when the images or layout change, to rebuild existing caches
IMAGE_SIZE = 64
GRID = 3  # copies of the digit per row and column
TRAIN_PER_CLASS = 60
VALIDATION_PER_CLASS = 20
NUM_CLASSES = 10
CLASS_TEXTS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_STAMP = ".sample_data_version"
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cache_root(root=None):
    return root or os.environ.get("RNXT_CACHE_DIR") or os.path.join(_REPO, ".cache")


def ensure_sample_data(root=None):
    """Path of a directory with train-* and validation-* TFRecords; builds it if needed."""
    parent = cache_root(root)
    target = os.path.join(parent, "sample_data")
    if _is_current(target):
        return target
    try:
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".sample_data.tmp-", dir=parent)
    except OSError as e:
        raise UserError(
            f"cannot create the sample data cache in {parent!r} ({e.strerror}); "
            "set RNXT_CACHE_DIR to a writable folder"
        ) from None
    try:
        records = _build(work)
        if _is_current(target):  # another process finished first
            return target
        if os.path.exists(target):  # an older version: swap it out
            os.rename(target, os.path.join(work, "old"))
        os.rename(records, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _is_current(path):
    try:
        with open(os.path.join(path, _STAMP)) as f:
            return f.read().strip() == VERSION
    except OSError:
        return False


def _build(work):
    """Write the image tree under `work`, convert it; returns the records folder."""
    from utils.tools import build_tfrecords

    images = os.path.join(work, "images")
    train, val = _write_image_tree(images)
    records = os.path.join(work, "records")
    build_tfrecords.main([
        "--train_dir", train,
        "--validation_dir", val,
        "--validation_labels", os.path.join(images, "val_labels.txt"),
        "--synset_names", os.path.join(images, "synsets.txt"),
        "--bounding_boxes", os.path.join(images, "boxes.csv"),
        "--output_dir", records,
        "--train_shards", "4",
        "--validation_shards", "2",
        "--num_workers", "2",
    ])  # fmt: skip
    with open(os.path.join(records, _STAMP), "w") as f:
        f.write(VERSION + "\n")
    return records


def class_name(label):
    return f"digit{label}"


def _write_image_tree(root):
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    for label in range(NUM_CLASSES):
        os.makedirs(os.path.join(train_dir, class_name(label)))
    os.makedirs(val_dir)

    taken = [0] * NUM_CLASSES
    boxes, val_labels = [], []
    for index in order:
        label = int(digits.target[index])
        n = taken[label]
        if n >= TRAIN_PER_CLASS + VALIDATION_PER_CLASS:
            continue
        taken[label] += 1
        pixels, box = _render(digits.images[index] / 16.0, label, rng)
        jpeg = tf.io.encode_jpeg(pixels, quality=90).numpy()
        if n < TRAIN_PER_CLASS:
            name = f"{class_name(label)}_{n:04d}.jpg"
            path = os.path.join(train_dir, class_name(label), name)
            boxes.append(f"{name},{box[0]:.4f},{box[1]:.4f},{box[2]:.4f},{box[3]:.4f}")
        else:
            name = f"val_{len(val_labels):05d}.jpg"
            path = os.path.join(val_dir, name)
            val_labels.append(f"{name} {class_name(label)}")
        with open(path, "wb") as f:
            f.write(jpeg)

    _write_lines(os.path.join(root, "boxes.csv"), boxes)
    _write_lines(os.path.join(root, "val_labels.txt"), val_labels)
    _write_lines(
        os.path.join(root, "synsets.txt"),
        [f"{class_name(label)}\t{CLASS_TEXTS[label]}" for label in range(NUM_CLASSES)],
    )
    return train_dir, val_dir


def _render(digit, label, rng):
    """Draw an 8x8 digit (0..1) as a uint8 IMAGE_SIZE RGB image: a GRID x GRID pattern of
    copies, each at a random size and offset in its cell, dark ink on a light background.
    Repeating the glyph keeps it recognisable in the small random crops of training.
    Returns the image and the box around all the ink (xmin, ymin, xmax, ymax), relative."""
    import tensorflow as tf

    cell = IMAGE_SIZE // GRID
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    for row in range(GRID):
        for col in range(GRID):
            size = int(rng.integers(cell * 2 // 3, cell + 1))
            top, left = (int(v) for v in rng.integers(0, cell - size + 1, size=2))
            top, left = top + row * cell, left + col * cell
            ink = tf.image.resize(digit[:, :, None], [size, size], method="bilinear").numpy()
            canvas[top : top + size, left : left + size] = np.clip(ink, 0.0, 1.0)
    background, foreground = _colour_pair(rng, label)
    image = background * (1.0 - canvas) + foreground * canvas
    image += rng.normal(0.0, 0.03, image.shape)
    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rows, cols = np.nonzero(canvas[:, :, 0] > 0.2)
    box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    return pixels, tuple(v / IMAGE_SIZE for v in box)


def _colour_pair(rng, label):
    """A light background of the class's hue (jittered) and a dark, randomly tinted ink."""
    hue = (label / NUM_CLASSES + rng.normal(0.0, 0.015)) % 1.0
    saturation, value = rng.uniform(0.25, 0.45), rng.uniform(0.85, 1.0)
    background = np.array(colorsys.hsv_to_rgb(hue, saturation, value))
    return background, rng.uniform(0.0, 0.25, size=3)


def _write_lines(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m utils.tools.sample_data",
        description="Build (once) the digits sample dataset in ImageNet TFRecord format and "
        "print its folder, for --data_dir.",
    )
    parser.add_argument("--root", help="cache folder (default $RNXT_CACHE_DIR or <repo>/.cache)")
    args = parser.parse_args(argv)
    print(ensure_sample_data(args.root))


if __name__ == "__main__":
    sys.exit(run_tool(main))
