"""Reading TFRecord files into tf.data without losing records silently (uses TensorFlow).

`read_files`: the records of each file; a file whose reader fails part-way (a corrupted
byte fails a payload checksum) ends there for that epoch, with a warning naming the file,
the record and how many of its records were lost. `decode_counting_skips`: a decoding map
that skips undecodable images and records whose label is outside 1..num_classes, counting
both (`skipped_images`) and logging each as a warning. Nothing skipped is ever scored.
"""

import functools
import logging
import os
import threading

import tensorflow as tf

from utils.data import schema

logger = logging.getLogger("utils.data_utils")

AUTOTUNE = tf.data.AUTOTUNE
_END = -1  # index of the sentinel that closes each file's stream

_skipped = {split: 0 for split in schema.SPLITS}
_lost = {split: 0 for split in schema.SPLITS}
_lock = threading.Lock()


def skipped_images(split: str = None) -> int:
    """Records skipped so far in this process (undecodable, mislabelled or lost to a
    corrupted file), for `split` or all splits.

    Args:
      split: "train", "validation" or None for both.
    """
    with _lock:
        return sum(_skipped.values()) if split is None else _skipped[split]


def lost_records(split: str = None) -> int:
    """Records lost so far because a file's reader failed part-way (also in `skipped_images`
    for training; for validation the shard's end count includes them).

    Args:
      split: "train", "validation" or None for both.
    """
    with _lock:
        return sum(_lost.values()) if split is None else _lost[split]


def reset_counts() -> None:
    """Start counting from zero, as a new process does (in-process runs of main.py)."""
    with _lock:
        for counts in (_skipped, _lost):
            counts.update(dict.fromkeys(counts, 0))


def _add(split, count, lost=False):
    with _lock:
        if lost:
            _lost[split] += count
        else:
            _skipped[split] += count
        return _skipped[split]


def _note_undecodable(split, count):
    count = int(count)
    total = _add(split, count)
    logger.warning("skipped %d undecodable %s image(s); %d skipped so far", count, split, total)
    return count


def _note_bad_label(split, num_classes, label):
    total = _add(split, 1)
    limit = f"1..{int(num_classes)}" if int(num_classes) > 0 else "1.."
    logger.warning(
        "skipped a %s record with label %d outside %s (not trained on, not scored); "
        "%d skipped so far",
        split,
        int(label) + 1,
        limit,
        total,
    )
    return 1


def _note_lost(split, count_as_skipped, path, read, expected):
    path = path.numpy().decode(errors="replace")
    lost = int(expected - read)
    _add(split, lost, lost=True)
    if count_as_skipped:
        _add(split, lost)
    logger.warning(
        "%s: cannot read record %d (corrupt data: a checksum fails, or the file changed); "
        "lost the remaining %d of its %d records this epoch (%s); re-create the file "
        "with utils/tools/build_tfrecords.py",
        path,
        int(read),
        lost,
        int(expected),
        split,
    )
    return lost


def read_files(files, counts, split, count_as_skipped=True, deterministic=True, shuffle=None):
    """Interleaved records of `files` (expected `counts` records each), checked per file.

    Args:
      files: TFRecord paths. counts: their record counts (`files.record_counts`).
      split: for the counters and messages.
      count_as_skipped: add lost records to `skipped_images` (False when the caller counts
        the gap itself, as the validation pipeline does).
      deterministic: interleave order. shuffle: None, or a seed to shuffle the file order.
    """
    note = functools.partial(_note_lost, split, count_as_skipped)

    def read(path, expected):
        records = tf.data.TFRecordDataset(path).ignore_errors(log_warning=False).enumerate()
        end = tf.data.Dataset.from_tensors((tf.constant(_END, tf.int64), tf.constant(b"")))

        def check(read_so_far, element):
            index, serialized = element
            missing = (index == _END) & (read_so_far < expected)
            noted = tf.cond(
                missing,
                lambda: tf.py_function(note, [path, read_so_far, expected], tf.int64),
                lambda: tf.constant(0, tf.int64),
            )
            with tf.control_dependencies([noted]):
                return read_so_far + 1, (tf.identity(index), serialized)

        checked = records.concatenate(end).scan(tf.constant(0, tf.int64), check)
        return checked.filter(lambda index, serialized: index != _END).map(lambda i, s: s)

    sources = tf.data.Dataset.from_tensor_slices(
        ([os.fsencode(f) for f in files], tf.constant([int(c) for c in counts], tf.int64))
    )
    if shuffle is not None:
        sources = sources.shuffle(len(files), seed=shuffle)
    return sources.interleave(
        read,
        cycle_length=min(len(files), 10),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def decode_counting_skips(
    records, preprocess, split, end_index=None, num_classes=None, first_index=0
):
    """Map `preprocess` over (index, serialized) pairs, skipping elements that fail.

    The map keeps order, so a skipped element shows up as a gap in the indices that pass;
    the gaps are counted into `skipped_images`. For a finite stream, `end_index` (its
    length) closes the last gap with a sentinel element that is dropped afterwards. A label
    below 0 (0 in the record) or, with `num_classes`, not below it is skipped and counted.

    Args:
      records: dataset of (int64 index, serialized Example).
      preprocess: (index, serialized) -> (image, int32 0-based label).
      split: for the counters and messages.
      end_index: the stream's length if finite. num_classes: the model's outputs.
      first_index: the first element's index.
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
    note_gap = functools.partial(_note_undecodable, split)
    note_label = functools.partial(_note_bad_label, split, num_classes or 0)
    limit = tf.constant(num_classes if num_classes else 2**31 - 1, tf.int32)

    def count_gaps(previous_index, element):
        index, image, label = element
        gap = index - previous_index - 1
        noted = tf.cond(gap > 0, lambda: tf.py_function(note_gap, [gap], tf.int64), lambda: gap)
        bad = (label < 0) | (label >= limit)
        flagged = tf.cond(
            bad,
            lambda: tf.py_function(note_label, [label], tf.int64),
            lambda: tf.constant(0, tf.int64),
        )
        with tf.control_dependencies([noted, flagged]):
            return tf.identity(index), (index, image, label, tf.logical_not(bad))

    ds = ds.scan(tf.constant(first_index - 1, tf.int64), count_gaps)
    if end_index is not None:
        ds = ds.filter(lambda index, image, label, good: index < end_index)
    ds = ds.filter(lambda index, image, label, good: good)
    return ds.map(lambda index, image, label, good: (image, label))
