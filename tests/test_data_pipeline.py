"""utils/data_utils.py, utils/image_processing.py and utils/tools/sample_data.py."""

import collections
import json
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from utils import data_utils, image_processing
from utils.core.errors import UserError
from utils.core.tf_compat import keras
from utils.data import files as files_module
from utils.tools import sample_data


@pytest.fixture(scope="module")
def sample_data_dir(sample_data):
    return sample_data


def jpeg(seed, size=(24, 32)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def example(label, encoded=None, boxes=()):
    """A serialized Example with the keys the pipelines read; label is 1-based."""
    encoded = jpeg(label) if encoded is None else encoded
    xmin, ymin, xmax, ymax = zip(*boxes) if boxes else ((), (), (), ())

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image/object/bbox/xmin": floats(xmin),
        "image/object/bbox/ymin": floats(ymin),
        "image/object/bbox/xmax": floats(xmax),
        "image/object/bbox/ymax": floats(ymax),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_records(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def make_split(directory, split, labels_per_file):
    """One `split`-0000i-of-N file per list of 1-based labels."""
    os.makedirs(directory, exist_ok=True)
    n = len(labels_per_file)
    for i, labels in enumerate(labels_per_file):
        write_records(os.path.join(directory, f"{split}-{i:05d}-of-{n:05d}"), map(example, labels))
    return str(directory)


def take_labels(ds, batches):
    return [int(y) for _, labels in ds.take(batches) for y in labels.numpy()]


# ---------------------------------------------------------------------------------------
# Files and record counts


def test_list_files_sorted_per_split(sample_data_dir):
    train = data_utils.list_files(sample_data_dir, "train")
    assert [os.path.basename(f) for f in train] == [f"train-0000{i}-of-00004" for i in range(4)]
    assert [os.path.basename(f) for f in data_utils.list_files(sample_data_dir, "validation")] == [
        "validation-00000-of-00002",
        "validation-00001-of-00002",
    ]


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "missing",
            "data directory '{d}' does not exist; --data_dir must hold TFRecord files "
            "named train-00000-of-NNNNN",
        ),
        (
            "empty",
            "data directory '{d}' is empty; --data_dir must hold TFRecord files named "
            "train-00000-of-NNNNN",
        ),
        (
            "misnamed",
            "data directory '{d}' has no train-* files (found: imagenet.tfrecord, "
            "val-00000); expected TFRecord files named train-00000-of-NNNNN",
        ),
    ],
)
def test_list_files_user_errors(tmp_path, case, message):
    directory = tmp_path / "data"
    if case != "missing":
        directory.mkdir()
    if case == "misnamed":
        (directory / "imagenet.tfrecord").write_bytes(b"")
        (directory / "val-00000").write_bytes(b"")
    with pytest.raises(UserError) as raised:
        data_utils.train_dataset(str(directory), 2, 8)
    assert str(raised.value).startswith(message.format(d=directory))
    assert "\n" not in str(raised.value)


def test_count_records_caches_and_invalidates(tmp_path, monkeypatch):
    data = make_split(tmp_path / "data", "train", [[1, 2, 3], [4, 5]])
    files = data_utils.list_files(data, "train")
    assert data_utils.count_records(files) == 5
    cache = json.loads((tmp_path / "data" / ".record_counts.json").read_text())
    assert {name: entry["records"] for name, entry in cache.items()} == {
        "train-00000-of-00002": 3,
        "train-00001-of-00002": 2,
    }

    counted = []
    real_count = files_module._count_file
    monkeypatch.setattr(files_module, "_count_file", lambda p: counted.append(p) or real_count(p))
    assert data_utils.count_records(files) == 5
    assert counted == []  # both from the cache

    write_records(files[1], map(example, [6, 7, 8, 9]))  # a changed file is counted again
    assert data_utils.count_records(files) == 7
    assert counted == [files[1]]


def test_count_cache_falls_back_to_cache_dir(tmp_path):
    data = make_split(tmp_path / "data", "train", [[1, 2]])
    (tmp_path / "data" / ".record_counts.json").mkdir()  # the data directory cannot take it
    files = data_utils.list_files(data, "train")
    assert data_utils.count_records(files, cache_dir=str(tmp_path / "cache")) == 2
    [cache_file] = os.listdir(tmp_path / "cache")
    assert (
        json.loads((tmp_path / "cache" / cache_file).read_text())["train-00000-of-00001"]["records"]
        == 2
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "truncated record file (record 2 runs past the end of the file)"),
        ("header", "not a TFRecord file or corrupt (bad record header at byte"),
        ("jpeg_file", "not a TFRecord file or corrupt (bad record header at byte 0)"),
    ],
)
def test_corrupt_record_files_are_user_errors(tmp_path, damage, message):
    data = make_split(tmp_path / "data", "validation", [[1, 2, 3], [4]])
    path = os.path.join(data, "validation-00000-of-00002")
    with open(path, "rb") as f:
        content = f.read()
    if damage == "truncate":
        content = content[:-10]
    elif damage == "header":  # flip a bit in the second record's length field
        second = 12 + struct.unpack("<Q", content[:8])[0] + 4
        content = content[:second] + bytes([content[second] ^ 1]) + content[second + 1 :]
    else:
        content = jpeg(0)
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(UserError) as raised:
        data_utils.eval_dataset(data, 2, 8)
    assert str(raised.value).startswith(f"{path}: {message}")


def test_non_image_payload_is_a_user_error(tmp_path):
    os.makedirs(tmp_path / "data")
    bad = [example(1, encoded=b"<html>not an image</html>") for _ in range(3)]
    write_records(tmp_path / "data" / "train-00000-of-00001", bad)
    with pytest.raises(UserError, match="none of the first 3 records holds a decodable JPEG"):
        data_utils.train_dataset(str(tmp_path / "data"), 2, 8)


def test_labels_beyond_num_classes_are_a_user_error(tmp_path):
    data = make_split(tmp_path / "data", "train", [[3, 12]])
    with pytest.raises(UserError, match="label 12 is outside 1..10"):
        data_utils.train_dataset(data, 2, 8, num_classes=10)


# ---------------------------------------------------------------------------------------
# Training pipeline


def test_train_batches_shape_dtype_and_range(sample_data_dir):
    for dtype in (tf.float32, tf.float16):
        ds = data_utils.train_dataset(sample_data_dir, 16, 40, seed=1, num_classes=10, dtype=dtype)
        images, labels = next(iter(ds))
        assert images.shape == (16, 40, 40, 3) and images.dtype == dtype
        assert labels.shape == (16,) and labels.dtype == tf.int32
        assert set(labels.numpy()) <= set(range(10))
        pixels = images.numpy().astype(np.float32)
        assert pixels.min() >= 0.0 and pixels.max() <= 255.0 and pixels.std() > 20.0


def test_sample_data_labels_and_class_texts(sample_data_dir):
    counts = collections.Counter()
    for path in data_utils.list_files(sample_data_dir, "train"):
        for serialized in tf.data.TFRecordDataset(path):
            record = data_utils.parse_record(serialized)
            label = int(record["label"])
            counts[label] += 1
            assert record["text"].numpy().decode() == sample_data.CLASS_TEXTS[label]
            assert record["synset"].numpy().decode() == f"digit{label}"
            boxes = record["boxes"].numpy()
            assert boxes.shape == (1, 4) and (boxes >= 0).all() and (boxes <= 1).all()
    assert counts == {label: sample_data.TRAIN_PER_CLASS for label in range(10)}


def test_same_seed_same_batches_other_seed_differs(sample_data_dir):
    def batches(seed):
        ds = data_utils.train_dataset(sample_data_dir, 8, 16, seed=seed, num_classes=10)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(3)]

    first, again, other = batches(7), batches(7), batches(8)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_each_epoch_sees_every_image_with_new_augmentation(tmp_path):
    """8 records, batch 8: each batch is one epoch, in a new order with new crops."""
    data = make_split(tmp_path / "data", "train", [[1, 2, 3, 4], [5, 6, 7, 8]])
    epochs = list(data_utils.train_dataset(data, 8, 16, seed=3).take(3))
    by_label = []
    for images, labels in epochs:
        assert sorted(labels.numpy()) == list(range(8))
        by_label.append(images.numpy()[np.argsort(labels.numpy())])
    assert not np.array_equal(by_label[0], by_label[1])
    assert not np.array_equal(by_label[1], by_label[2])
    orders = [tuple(labels.numpy()) for _, labels in epochs]
    assert len(set(orders)) > 1


@pytest.mark.parametrize("num_shards", [1, 3])
def test_start_batch_continues_the_uninterrupted_stream(tmp_path, num_shards):
    """Resuming at batch k (here across epoch boundaries) gives the same batches as the
    uninterrupted stream from k on: 10 records of 2 files, batch 3."""
    data = make_split(tmp_path / "data", "train", [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])

    def batches(start, count):
        ds = data_utils.train_dataset(
            data, 3, 16, seed=5, start_batch=start, num_shards=num_shards, shard_index=0
        )
        return [(x.numpy(), y.numpy()) for x, y in ds.take(count)]

    whole = batches(0, 9)
    for start in (2, 4, 7):
        for (x1, y1), (x2, y2) in zip(batches(start, 9 - start), whole[start:]):
            np.testing.assert_array_equal(y1, y2)
            np.testing.assert_array_equal(x1, x2)


def test_two_shards_partition_the_files(sample_data_dir, tmp_path):
    files = data_utils.list_files(sample_data_dir, "train")
    shards = [data_utils.shard_files(files, 2, i) for i in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == files

    # End to end: file i holds only label i, so labels show which files a shard read.
    data = make_split(tmp_path / "data", "train", [[1, 1], [2, 2], [3, 3], [4, 4]])
    seen = [set(take_labels(data_utils.train_dataset(data, 4, 8, 2, i, seed=0), 6)) for i in (0, 1)]
    assert seen == [{0, 2}, {1, 3}]


def test_fewer_files_than_shards_shards_records(tmp_path):
    data = make_split(tmp_path / "data", "train", [[1, 2, 3, 4, 5, 6]])
    seen = [
        set(take_labels(data_utils.train_dataset(data, 2, 8, 3, i, seed=0), 4)) for i in range(3)
    ]
    assert seen == [{0, 3}, {1, 4}, {2, 5}]


def test_undecodable_images_are_skipped_and_counted(tmp_path):
    os.makedirs(tmp_path / "data")
    records = [example(label) for label in (1, 2, 3, 4, 5, 6)]
    records.insert(3, example(9, encoded=b"GIF89a, not a JPEG"))
    write_records(tmp_path / "data" / "train-00000-of-00001", records)
    write_records(tmp_path / "data" / "validation-00000-of-00001", records)
    data = str(tmp_path / "data")

    before = data_utils.skipped_images("validation")
    labels = take_labels(data_utils.eval_dataset(data, 4, 8), 10)
    assert sorted(labels) == [0, 1, 2, 3, 4, 5]
    assert data_utils.skipped_images("validation") - before == 1

    before = data_utils.skipped_images("train")
    labels = take_labels(data_utils.train_dataset(data, 6, 8, seed=0), 4)  # 24 of 7 per epoch
    assert set(labels) == {0, 1, 2, 3, 4, 5}
    assert data_utils.skipped_images("train") - before >= 3


def test_skip_at_the_end_of_an_eval_shard_is_counted(tmp_path):
    os.makedirs(tmp_path / "data")
    records = [example(1), example(2), example(3, encoded=b"broken")]
    write_records(tmp_path / "data" / "validation-00000-of-00001", records)
    before = data_utils.skipped_images("validation")
    assert take_labels(data_utils.eval_dataset(str(tmp_path / "data"), 2, 8), 5) == [0, 1]
    assert data_utils.skipped_images("validation") - before == 1


# ---------------------------------------------------------------------------------------
# Evaluation pipeline


def bilinear_reference(image, height, width):
    """tf.image.resize's bilinear (half-pixel centres, no antialias), written out in numpy."""

    def taps(out_size, in_size):
        position = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        low = np.floor(position)
        fraction = position - low
        return (
            np.clip(low, 0, in_size - 1).astype(int),
            np.clip(low + 1, 0, in_size - 1).astype(int),
            fraction,
        )

    y0, y1, fy = taps(height, image.shape[0])
    x0, x1, fx = taps(width, image.shape[1])
    image = image.astype(np.float64)
    fx = fx[None, :, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy[:, None, None]) + bottom * fy[:, None, None]


@pytest.mark.parametrize(
    "shape, resized, offset",
    [
        ((50, 80), (37, 59), (2, 13)),  # 37 = round(32 * 256 / 224); 59 = round(80 * 37 / 50)
        ((90, 60), (56, 37), (12, 2)),  # 90 * 37 / 60 = 55.5 rounds up
        ((37, 37), (37, 37), (2, 2)),
    ],
)
def test_eval_crop_matches_hand_computed_reference(tmp_path, shape, resized, offset):
    assert image_processing.eval_resize_size(224) == 256
    assert image_processing.eval_resize_size(32) == 37
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    pixels = np.stack([y * 255 // shape[0], x * 255 // shape[1], (x * y) % 256], -1)
    encoded = tf.io.encode_jpeg(pixels.astype(np.uint8), quality=90).numpy()
    decoded = tf.io.decode_jpeg(encoded, channels=3).numpy()
    top, left = offset
    expected = bilinear_reference(decoded, *resized)[top : top + 32, left : left + 32]

    actual = image_processing.preprocess_for_eval(encoded, 32).numpy()
    np.testing.assert_allclose(actual, expected, atol=2e-3)

    os.makedirs(tmp_path / "data")
    write_records(tmp_path / "data" / "validation-00000-of-00001", [example(5, encoded=encoded)])
    [(images, labels)] = list(data_utils.eval_dataset(str(tmp_path / "data"), 4, 32))
    assert labels.numpy().tolist() == [4]
    np.testing.assert_allclose(images.numpy()[0], expected, atol=2e-3)


def test_eval_over_three_shards_visits_every_image_once(tmp_path):
    """11 records in 2 files, 3 processes: each image in exactly one shard, none dropped."""
    data = make_split(tmp_path / "data", "validation", [list(range(1, 8)), list(range(8, 12))])
    total = data_utils.count_records(data_utils.list_files(data, "validation"))
    per_shard = []
    for index in range(3):
        ds = data_utils.eval_dataset(data, 2, 8, num_shards=3, shard_index=index)
        batch_sizes = [int(labels.shape[0]) for _, labels in ds]
        labels = take_labels(ds, 100)
        assert len(labels) == data_utils.shard_size(total, 3, index) == sum(batch_sizes)
        assert batch_sizes[:-1] == [2] * (len(batch_sizes) - 1)  # only the last is short
        per_shard.append(labels)
    assert [len(labels) for labels in per_shard] == [4, 4, 3]
    assert sorted(sum(per_shard, [])) == list(range(11))


def test_eval_on_sample_data_covers_the_split(sample_data_dir):
    labels = take_labels(data_utils.eval_dataset(sample_data_dir, 64, 32), 10)
    assert len(labels) == 10 * sample_data.VALIDATION_PER_CLASS
    assert collections.Counter(labels) == {c: sample_data.VALIDATION_PER_CLASS for c in range(10)}


# ---------------------------------------------------------------------------------------
# Training augmentation


def test_train_crop_honours_the_bounding_box(tmp_path):
    """With a box in one corner, every crop keeps at least 10% of it in view."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:16, :16] = 255  # the "object": top-left quarter by side
    encoded = tf.io.encode_jpeg(pixels, quality=100).numpy()
    boxes = tf.constant([[0.0, 0.0, 0.25, 0.25]])
    for i in range(40):
        image = image_processing.preprocess_for_train(encoded, boxes, 16, tf.constant([i, 1]))
        assert image.shape == (16, 16, 3)
        assert float(tf.reduce_max(image)) > 128.0, i  # some of the white box is in view


# ---------------------------------------------------------------------------------------
# Synthetic data and sample data


def test_synthetic_dataset_is_one_fixed_batch():
    ds = data_utils.synthetic_dataset(4, 16, num_classes=5, dtype=tf.bfloat16, seed=2)
    (x1, y1), (x2, y2) = list(ds.take(2))
    assert x1.shape == (4, 16, 16, 3) and x1.dtype == tf.bfloat16 and y1.dtype == tf.int32
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    pixels = x1.numpy().astype(np.float32)
    assert 120 < pixels.mean() < 134 and 45 < pixels.std() < 60
    assert pixels.min() >= 7 - 1 and pixels.max() <= 247 + 1  # truncated at 2 sigma
    assert set(y1.numpy()) <= set(range(5))
    again = data_utils.synthetic_dataset(4, 16, num_classes=5, dtype=tf.bfloat16, seed=2)
    np.testing.assert_array_equal(next(iter(again))[0].numpy(), x1.numpy())


def test_sample_data_is_learnable(sample_data_dir):
    """A small CNN, 4 short epochs at 32 px with the real augmentation: far above 10%."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    blocks = [
        layer
        for width in (32, 64, 128)
        for layer in (
            layers.Conv2D(width, 3, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.9),
            layers.ReLU(),
            layers.MaxPool2D(),
        )
    ]
    model = keras.Sequential(
        [layers.Rescaling(1 / 127.5, -1, input_shape=(32, 32, 3)), *blocks]
        + [layers.GlobalAveragePooling2D(), layers.Dense(10)]
    )
    model.compile(
        keras.optimizers.Adam(0.003),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train = data_utils.train_dataset(sample_data_dir, 32, 32, seed=0, num_classes=10)
    steps = 10 * sample_data.TRAIN_PER_CLASS // 32
    model.fit(train, epochs=4, steps_per_epoch=steps, verbose=0)
    _, accuracy = model.evaluate(data_utils.eval_dataset(sample_data_dir, 100, 32), verbose=0)
    assert accuracy > 0.25


def test_ensure_sample_data_is_idempotent_and_atomic(tmp_path, monkeypatch):
    builds = []

    def fake_build(work):
        builds.append(work)
        records = os.path.join(work, "records")
        os.makedirs(records)
        with open(os.path.join(records, sample_data._STAMP), "w") as f:
            f.write(sample_data.VERSION)
        return records

    monkeypatch.setattr(sample_data, "_build", fake_build)
    monkeypatch.setenv("RNXT_CACHE_DIR", str(tmp_path / "env"))
    path = sample_data.ensure_sample_data()
    assert path == str(tmp_path / "env" / "sample_data")
    assert sample_data.ensure_sample_data() == path and len(builds) == 1
    assert os.listdir(tmp_path / "env") == ["sample_data"]  # no temporary folders left

    with open(os.path.join(path, sample_data._STAMP), "w") as f:
        f.write("0")  # an older version is rebuilt and replaced
    assert sample_data.ensure_sample_data() == path and len(builds) == 2
    assert sample_data._is_current(path)
    assert os.listdir(tmp_path / "env") == ["sample_data"]


def test_sample_data_build_failure_leaves_nothing(tmp_path, monkeypatch):
    def failing_build(work):
        os.makedirs(os.path.join(work, "records"))
        raise RuntimeError("disk full")

    monkeypatch.setattr(sample_data, "_build", failing_build)
    with pytest.raises(RuntimeError):
        sample_data.ensure_sample_data(str(tmp_path))
    assert os.listdir(tmp_path) == []
