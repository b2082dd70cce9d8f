"""Input pipelines over ImageNet-format TFRecords, plus synthetic data (RECIPE section 4).

Data layout: `train-*` and `validation-*` TFRecord files in one directory, as written by
TF's `build_imagenet_data.py` or `utils/tools/build_tfrecords.py`. Labels in the records are
1-based (`image/class/label`); the datasets here yield 0-based int32 labels.

Pipelines:
- `train_dataset`: files sharded over processes, interleaved, shuffled, repeated forever,
  augmented (`image_processing.preprocess_for_train`) in a parallel map, batched with
  `drop_remainder`, prefetched. With a seed, the batch sequence is reproducible: shuffles
  are seeded and each image's crop/flip uses a stateless seed derived from its position in
  the stream, so it changes from epoch to epoch but not from run to run.
- `eval_dataset`: every validation image of one shard exactly once, in a fixed order; the
  last batch may be smaller. Sharding is by record, so the shards partition the whole
  validation set for any number of processes and files.
- `synthetic_dataset`: one random batch, made once, repeated.

Undecodable images: an image that fails to decode (or a record that fails to parse) is
skipped instead of stopping the run. Each skip is counted and logged as a warning;
`skipped_images(split)` returns the count so far in this process. A record whose payload
fails its checksum while reading is counted the same way (TF's reader then drops the rest
of that file for the epoch, and TF logs the reader's message). Before a pipeline is
built, a few records are decoded eagerly, so a directory of wrong or broken data still
fails at once with a `UserError` rather than being skipped record by record.

Record counts: `count_records` walks the TFRecord framing (checking each header's CRC and
that the file ends on a record boundary) without reading the payloads, and caches the
counts in `.record_counts.json` next to the data, or in `cache_dir` if the data directory
is read-only. A cached entry is reused while the file's size and mtime are unchanged.
"""

import functools
import logging
import random
import threading

import tensorflow as tf

from utils import image_processing
from utils.core.errors import UserError, tf_error_message
from utils.data import schema
from utils.data.files import check_shard, count_records, list_files, shard_files, shard_size

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
SPLITS = schema.SPLITS
TRAIN_SHUFFLE_BUFFER = 10_000  # records; about 1.1 GB of ImageNet JPEGs per process
INTERLEAVE_CYCLE = 10
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


def _probe(files, num_classes=None):
    """Decode the first few records eagerly, so wrong data fails now with a clear message
    instead of every image being skipped in the pipeline."""
    fix = "check that the files were written by utils/tools/build_tfrecords.py"
    records = []  # (file, serialized)
    for path in files:
        try:
            records += [(path, r) for r in tf.data.TFRecordDataset(path).take(PROBE_RECORDS)]
        except tf.errors.OpError as e:
            raise UserError(
                f"{path}: cannot read TFRecords ({tf_error_message(e)}); {fix}"
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
# Skipped images

_skipped = {split: 0 for split in SPLITS}
_skipped_lock = threading.Lock()


def skipped_images(split=None):
    """Images skipped as undecodable so far in this process, for `split` or all splits."""
    with _skipped_lock:
        return sum(_skipped.values()) if split is None else _skipped[split]


def _note_skipped(split, count):
    count = int(count)
    with _skipped_lock:
        _skipped[split] += count
        total = _skipped[split]
    logger.warning("skipped %d undecodable %s image(s); %d so far", count, split, total)
    return count


def _decode_counting_skips(
    records, preprocess, split, end_index=None, num_classes=None, first_index=0
):
    """Map `preprocess` over (index, serialized) pairs, skipping elements that fail.

    The map keeps order, so a skipped element shows up as a gap in the indices that pass;
    the gaps are counted into `skipped_images`. For a finite stream, `end_index` (its
    length) closes the last gap with a sentinel element that is dropped afterwards.
    """
    ds = records.map(
        lambda index, serialized: (index, *preprocess(index, serialized)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    ds = ds.ignore_errors(log_warning=True)
    if end_index is not None:
        image_spec, label_spec = ds.element_spec[1:]
        sentinel = (
            tf.constant(end_index, tf.int64),
            tf.zeros(image_spec.shape, image_spec.dtype),
            tf.zeros(label_spec.shape, label_spec.dtype),
        )
        ds = ds.concatenate(tf.data.Dataset.from_tensors(sentinel))
    note = functools.partial(_note_skipped, split)

    def count_gaps(previous_index, element):
        index, image, label = element
        gap = index - previous_index - 1
        noted = tf.cond(gap > 0, lambda: tf.py_function(note, [gap], tf.int64), lambda: gap)
        checks = [noted]
        if num_classes is not None:
            checks.append(
                tf.debugging.assert_less(label, num_classes, message="label >= num_classes")
            )
            checks.append(tf.debugging.assert_non_negative(label, message="label < 1 in a record"))
        with tf.control_dependencies(checks):
            return tf.identity(index), element

    ds = ds.scan(tf.constant(first_index - 1, tf.int64), count_gaps)
    if end_index is not None:
        ds = ds.filter(lambda index, image, label: index < end_index)
    return ds.map(lambda index, image, label: (image, label))


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
    _probe(my_files, num_classes)
    if by_file:
        epoch_size = count_records(my_files)
    else:
        epoch_size = shard_size(count_records(files), num_shards, shard_index)
    if epoch_size < 1:
        raise UserError(f"training shard {shard_index} of {num_shards} in {data_dir} is empty")

    def epoch_records(epoch):
        # Every epoch is its own seeded stream, so a resumed run can start at any epoch.
        # The epoch seed is a tensor; fixing this function graph's own seed makes it alone
        # decide the shuffles (TF compares a graph seed of 0 with the op seed as a bool).
        tf.random.set_seed(1)
        epoch_seed = tf.cast(epoch, tf.int64) * 1_000_003 + seed
        if by_file:
            records = tf.data.Dataset.from_tensor_slices(my_files).shuffle(
                len(my_files), seed=epoch_seed
            )
            records = records.interleave(
                tf.data.TFRecordDataset,
                cycle_length=min(len(my_files), INTERLEAVE_CYCLE),
                num_parallel_calls=AUTOTUNE,
                deterministic=deterministic,
            )
        else:  # fewer files than processes: every process reads all files, keeps its records
            records = tf.data.TFRecordDataset(files).shard(num_shards, shard_index)
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

    ds = _decode_counting_skips(
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
    drop_remainder=False,
):
    """Finite dataset of this shard's validation images, each exactly once, centrally
    cropped: (images [<=B, S, S, 3] `dtype` 0..255 RGB, labels int32 [<=B] 0-based);
    with `drop_remainder`, full batches only (a smaller last one is left out).

    All validation files are read in one fixed interleaved order, the same in every
    process; the i-th record of that stream belongs to shard i % num_shards, so the shard
    holds `shard_size(count_records(files), num_shards, shard_index)` images.
    """
    files = list_files(data_dir, "validation")
    size = shard_size(count_records(files), num_shards, shard_index)
    _probe(files)
    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), INTERLEAVE_CYCLE),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,  # every process must see the same record order
    )
    records = records.shard(num_shards, shard_index).enumerate()

    def preprocess(index, serialized):
        record = _parse(serialized, _EVAL_FEATURES)
        return image_processing.preprocess_for_eval(record["encoded"], image_size), record["label"]

    ds = _decode_counting_skips(records, preprocess, "validation", end_index=size)
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
