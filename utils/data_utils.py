"""tf.data input pipelines over ImageNet-format TFRecords, plus synthetic data.

`train_dataset` (sharded, shuffled, augmented, repeated; reproducible with a seed),
`eval_dataset` (every validation image of a shard once) and `synthetic_dataset`; labels
come out 0-based. Undecodable images, labels outside 1..num_classes and records lost to a
corrupted byte are skipped, counted (`skipped_images`) and named in a warning, never
trained on or scored. Details: docs/design.md, "Data pipeline".
"""

import logging
import os
import random

import tensorflow as tf

from utils import image_processing
from utils.core.errors import UserError, tf_error_message
from utils.data import schema
from utils.data.files import (
    check_shard,
    count_records,
    list_files,
    record_counts,
    shard_files,
    shard_size,
)
from utils.data.reader import decode_counting_skips, lost_records, read_files, skipped_images

__all__ = ["count_records", "list_files", "lost_records", "record_counts", "skipped_images"]

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
SPLITS = schema.SPLITS
TRAIN_SHUFFLE_BUFFER = 10_000  # records; about 1.1 GB of ImageNet JPEGs per process
PROBE_RECORDS = 8

_TRAIN_FEATURES = {
    schema.ENCODED: tf.io.FixedLenFeature([], tf.string),
    schema.LABEL: tf.io.FixedLenFeature([], tf.int64),
    **{key: tf.io.VarLenFeature(tf.float32) for key in schema.BBOX},
}
_EVAL_FEATURES = {key: _TRAIN_FEATURES[key] for key in (schema.ENCODED, schema.LABEL)}
_ALL_FEATURES = {
    **_TRAIN_FEATURES,
    schema.TEXT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    schema.SYNSET: tf.io.FixedLenFeature([], tf.string, default_value=""),
    schema.FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    schema.HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    schema.WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
}
_RECORD_FIELDS = {
    "text": schema.TEXT,
    "synset": schema.SYNSET,
    "filename": schema.FILENAME,
    "height": schema.HEIGHT,
    "width": schema.WIDTH,
}


# ---------------------------------------------------------------------------------------
# Records


def parse_record(serialized):
    """All fields the pipelines and tests use, from one serialized Example.

    Returns a dict: encoded, label (0-based int32), text, synset, filename, height, width,
    boxes (float32 [num_boxes, 4] as ymin, xmin, ymax, xmax).
    """
    return _parse(serialized, _ALL_FEATURES)


def _parse(serialized, features):
    parsed = tf.io.parse_single_example(serialized, features)
    record = {
        "encoded": parsed[schema.ENCODED],
        "label": tf.cast(parsed[schema.LABEL] - 1, tf.int32),
    }
    if schema.BBOX[0] in parsed:
        xmin, ymin, xmax, ymax = (parsed[key].values for key in schema.BBOX)
        record["boxes"] = tf.stack([ymin, xmin, ymax, xmax], axis=1)
    for field, key in _RECORD_FIELDS.items():
        if key in parsed:
            record[field] = parsed[key]
    return record


def probe_records(files: list, num_classes: int = None) -> None:
    """Decode the first few records eagerly, so wrong data fails now with a clear message
    instead of every image being skipped in the pipeline.

    Args:
      files: TFRecord paths. num_classes: labels must be within 1..num_classes.
    """
    fix = "check that the files were written by utils/tools/build_tfrecords.py"
    records = []  # (file, serialized)
    for path in files:
        read = 0
        try:
            for serialized in tf.data.TFRecordDataset(os.fsencode(path)).take(PROBE_RECORDS):
                records.append((path, serialized))
                read += 1
        except tf.errors.OpError as e:
            raise UserError(
                f"{path}: cannot read record {read} ({tf_error_message(e)}); {fix}"
            ) from None
        if len(records) >= PROBE_RECORDS:
            break
    errors = []
    for path, serialized in records[:PROBE_RECORDS]:
        try:
            record = parse_record(serialized)
            image_processing.preprocess_for_eval(record["encoded"], 32)
        except tf.errors.OpError as e:
            errors.append((path, tf_error_message(e)))
            continue
        label = int(record["label"]) + 1
        if label < 1 or (num_classes is not None and label > num_classes):
            limit = f"1..{num_classes}" if num_classes else "1.."
            raise UserError(
                f"{path}: record label {label} is outside {limit}; labels must be 1-based "
                "(as build_imagenet_data.py writes them) and --num_classes at least the "
                "largest label"
            )
    if errors and len(errors) == len(records[:PROBE_RECORDS]):
        path, message = errors[0]
        raise UserError(
            f"{path}: none of the first {len(errors)} records holds a decodable JPEG image "
            f"({message}); {fix}"
        )


# ---------------------------------------------------------------------------------------
# Datasets


def train_dataset(
    data_dir,
    batch_size,
    image_size,
    num_shards=1,
    shard_index=0,
    seed=None,
    num_classes=1000,
    dtype=tf.float32,
    start_batch=0,
):
    """Infinite dataset of augmented training batches: (images [B, S, S, 3] `dtype`
    0..255 RGB, labels int32 [B] 0-based). See the module docstring.

    `start_batch`: begin at that batch of the stream (a resumed run). With a seed the
    batches are exactly those an uninterrupted run sees from there; only the records of
    the current epoch before that point are read again, and none is decoded.
    """
    files = list_files(data_dir, "train")
    check_shard(num_shards, shard_index)
    deterministic = seed is not None
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)

    by_file = len(files) >= num_shards
    my_files = shard_files(files, num_shards, shard_index) if by_file else files
    probe_records(my_files, num_classes)
    counts = record_counts(my_files)
    epoch_size = sum(counts) if by_file else shard_size(sum(counts), num_shards, shard_index)
    if epoch_size < 1:
        raise UserError(f"training shard {shard_index} of {num_shards} in {data_dir} is empty")

    def epoch_records(epoch):
        # Every epoch is its own seeded stream, so a resumed run can start at any epoch.
        # The epoch seed is a tensor; fixing this function graph's own seed makes it alone
        # decide the shuffles (TF compares a graph seed of 0 with the op seed as a bool).
        tf.random.set_seed(1)
        epoch_seed = tf.cast(epoch, tf.int64) * 1_000_003 + seed
        if by_file:
            records = read_files(
                my_files, counts, "train", deterministic=deterministic, shuffle=epoch_seed
            )
        else:  # fewer files than processes: every process reads all files, keeps its records
            records = read_files(files, counts, "train")
            records = records.shard(num_shards, shard_index)
        return records.shuffle(TRAIN_SHUFFLE_BUFFER, seed=epoch_seed)

    first_record = start_batch * batch_size
    first_epoch, offset = divmod(first_record, epoch_size)
    records = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_records)
    records = records.skip(offset).enumerate(start=first_record)

    base_seed = tf.constant([seed, shard_index], tf.int64)

    def augment(index, serialized):
        record = _parse(serialized, _TRAIN_FEATURES)
        element_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
        image = image_processing.preprocess_for_train(
            record["encoded"], record["boxes"], image_size, element_seed
        )
        return image, record["label"]

    ds = decode_counting_skips(
        records, augment, "train", num_classes=num_classes, first_index=first_record
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    return _finish(ds, dtype)


def eval_dataset(
    data_dir,
    batch_size,
    image_size,
    num_shards=1,
    shard_index=0,
    dtype=tf.float32,
    num_classes=None,
    drop_remainder=False,
):
    """Finite dataset of this shard's validation images, each exactly once, centrally
    cropped: (images [<=B, S, S, 3] `dtype` 0..255 RGB, labels int32 [<=B] 0-based);
    with `drop_remainder`, full batches only (a smaller last one is left out).

    All validation files are read in one fixed interleaved order, the same in every
    process; the i-th record of that stream belongs to shard i % num_shards, so the shard
    holds `shard_size(count_records(files), num_shards, shard_index)` images. With
    `num_classes`, records labelled outside 1..num_classes are skipped and counted.
    """
    files = list_files(data_dir, "validation")
    counts = record_counts(files)
    if not sum(counts):
        raise UserError(f"the validation-* files in {data_dir} hold no records")
    size = shard_size(sum(counts), num_shards, shard_index)
    probe_records(files, num_classes)
    # Every process must see the same record order. Records lost to a corrupted file are
    # counted by the gap they leave at the end of the shard, not again by the reader.
    records = read_files(files, counts, "validation", count_as_skipped=False)
    records = records.shard(num_shards, shard_index).enumerate()

    def preprocess(index, serialized):
        record = _parse(serialized, _EVAL_FEATURES)
        return image_processing.preprocess_for_eval(record["encoded"], image_size), record["label"]

    ds = decode_counting_skips(
        records, preprocess, "validation", end_index=size, num_classes=num_classes
    )
    return _finish(ds.batch(batch_size, drop_remainder=drop_remainder), dtype)


def synthetic_dataset(batch_size, image_size, num_classes=1000, dtype=tf.float32, seed=None):
    """One batch of truncated-normal(127, 60) images (within 7..247, as the original's
    tf.truncated_normal) and uniform labels, generated once and repeated forever."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    image_seed, label_seed = [seed, 0], [seed, 1]
    images = tf.random.stateless_truncated_normal(
        [batch_size, image_size, image_size, 3], seed=image_seed, mean=127.0, stddev=60.0
    )
    labels = tf.random.stateless_uniform(
        [batch_size], seed=label_seed, minval=0, maxval=num_classes, dtype=tf.int32
    )
    return tf.data.Dataset.from_tensors((tf.cast(images, dtype), labels)).repeat()


def _finish(ds, dtype):
    if dtype != tf.float32:
        ds = ds.map(lambda images, labels: (tf.cast(images, dtype), labels))
    return ds.prefetch(AUTOTUNE)
