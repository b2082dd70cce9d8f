"""Data-side faults a hostile but realistic user meets: each is a one-line error, a counted
skip, or correct behaviour (tests/fault_matrix_data.json lists them for the README)."""

import logging
import os
import struct

import pytest
import tensorflow as tf

from tests.test_data_pipeline import example, make_split, take_labels, write_records
from utils import data_utils
from utils.core.errors import UserError


def corrupt_payload(path, record):
    """Flip one byte inside the payload of record `record` (0-based) of a TFRecord file."""
    with open(path, "rb") as f:
        content = bytearray(f.read())
    offset = 0
    for _ in range(record):
        offset += 12 + struct.unpack("<Q", content[offset : offset + 8])[0] + 4
    content[offset + 12 + 20] ^= 0xFF
    with open(path, "wb") as f:
        f.write(content)


# ---------------------------------------------------------------------------------------
# 5. Labels outside 1..num_classes


def test_out_of_range_train_labels_are_counted_skips_not_a_traceback(tmp_path, caplog):
    labels = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 12, 3]  # the probe sees only the first 8
    data = make_split(tmp_path / "data", "train", [labels])
    before = data_utils.skipped_images("train")
    with caplog.at_level(logging.WARNING):
        got = take_labels(data_utils.train_dataset(data, 5, 8, seed=0, num_classes=10), 4)
    assert set(got) <= set(range(10)) and len(got) == 20
    assert data_utils.skipped_images("train") - before >= 2
    assert "label 12 outside 1..10" in caplog.text and "label 0 outside 1..10" in caplog.text


def test_out_of_range_validation_labels_are_never_scored(tmp_path):
    from runtime import evaluation
    from utils.distributed.group import SingleProcess

    data = make_split(tmp_path / "data", "validation", [[1, 2, 3, 4, 5, 6, 7, 8, 0, 11, 12]])
    before = data_utils.skipped_images("validation")
    ds = data_utils.eval_dataset(data, 4, 8, num_classes=10)
    assert sorted(take_labels(ds, 10)) == list(range(8))  # label 0 skipped; >10 skipped
    assert data_utils.skipped_images("validation") - before == 3

    # evaluate() itself never scores a label the model has no output for
    images = tf.zeros([3, 8, 8, 3])
    labels = tf.constant([0, 1, 7], tf.int32)

    def model(x, training=False):
        return tf.one_hot(tf.constant([0, 1, 2]), 3) * 10.0 + 0.0 * tf.reduce_sum(x)

    result = evaluation.evaluate(
        model, tf.data.Dataset.from_tensors((images, labels)), SingleProcess(), xla=False
    )
    assert result["eval_images"] == 2 and result["top1_accuracy"] == 1.0
    assert result["eval_unscored_labels"] == 1


def test_out_of_range_label_in_the_first_batch_is_one_line(tmp_path):
    data = make_split(tmp_path / "data", "validation", [[3, 0]])
    with pytest.raises(UserError, match=r"validation-00000-of-00001: record label 0 is outside"):
        data_utils.eval_dataset(data, 2, 8, num_classes=10)


# ---------------------------------------------------------------------------------------
# 6. A corrupted byte inside a record's payload


def test_corrupted_record_loses_no_records_silently(tmp_path, caplog):
    os.makedirs(tmp_path / "data")
    path = tmp_path / "data" / "train-00000-of-00001"
    write_records(path, [example(1 + i % 10) for i in range(150)])
    corrupt_payload(path, 64)
    before = data_utils.skipped_images("train")
    lost_before = data_utils.lost_records("train")
    with caplog.at_level(logging.WARNING):
        ds = data_utils.train_dataset(str(tmp_path / "data"), 16, 8, seed=0, num_classes=10)
        take_labels(ds, 8)  # 128 images: needs the second epoch
    assert data_utils.lost_records("train") - lost_before >= 86 * 1
    assert data_utils.skipped_images("train") - before >= 86
    assert f"{path}: cannot read record 64" in caplog.text
    assert "lost the remaining 86 of its 150 records" in caplog.text


def test_corrupted_validation_record_is_reported_and_counted(tmp_path, caplog):
    data = make_split(tmp_path / "data", "validation", [[1] * 10, [2] * 10])
    path = os.path.join(data, "validation-00000-of-00002")
    corrupt_payload(path, 8)  # past the records the probe reads
    before = data_utils.skipped_images("validation")
    with caplog.at_level(logging.WARNING):
        got = take_labels(data_utils.eval_dataset(data, 4, 8), 10)
    assert sorted(got) == [0] * 8 + [1] * 10
    assert data_utils.skipped_images("validation") - before == 2  # counted once
    assert f"{path}: cannot read record 8" in caplog.text
