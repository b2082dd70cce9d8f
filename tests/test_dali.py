"""utils/dali_utils.py, utils/tools/dali_index.py and utils/dali_index.sh, on the CPU.

DALI runs here with device_id=None under tf.device('/cpu:0') (no GPU on this machine).
"""

import collections
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model.resnet import IMAGENET_MEAN, IMAGENET_STD
from tests.support import logged_values, run_main
from utils import dali_utils, data_utils
from utils.core.errors import UserError
from utils.tools import dali_index

# Its module-scoped fixtures are built once: pytest-xdist runs the whole file on one worker.
pytestmark = pytest.mark.xdist_group("dali")

pytest.importorskip("nvidia.dali.plugin.tf")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INDEX_SCRIPT = os.path.join(REPO, "utils", "dali_index.sh")
SIZE = 64  # the sample images' size
BATCH = 32


@pytest.fixture(scope="module")
def data_dir(sample_data):
    return sample_data


@pytest.fixture(scope="module")
def idx_dir(data_dir, tmp_path_factory):
    """Index files written by utils/dali_index.sh (its default, parallel Python path)."""
    out = str(tmp_path_factory.mktemp("idx"))
    result = _run_index_script(data_dir, out)
    assert result.returncode == 0, result.stderr
    return out


def _run_index_script(*args):
    return subprocess.run(
        ["bash", INDEX_SCRIPT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=120,
    )


def _fingerprint(array):
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _record_hashes(files):
    """sha1 of each record's JPEG bytes, in file order (DALI's sharding order)."""
    return [
        _fingerprint(data_utils.parse_record(r)["encoded"].numpy())
        for r in tf.data.TFRecordDataset(files)
    ]


# ---------------------------------------------------------------------------------------
# Training batches


def _batches(dataset, count):
    pairs = [(images.numpy(), labels.numpy()) for images, labels in dataset.take(count)]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def test_train_batches_match_tf_data(data_dir, idx_dir):
    dali = dali_utils.train_dataset(data_dir, idx_dir, BATCH, SIZE, seed=3, normalize=False)
    ref = data_utils.train_dataset(data_dir, BATCH, SIZE, seed=3, num_classes=10)
    assert dali.element_spec == ref.element_spec
    dali_images, dali_labels = _batches(dali, 4)
    ref_images, ref_labels = _batches(ref, 4)
    assert dali_images.shape == ref_images.shape == (4 * BATCH, SIZE, SIZE, 3)
    assert dali_images.dtype == ref_images.dtype == np.float32
    assert dali_labels.dtype == ref_labels.dtype == np.int32
    assert set(dali_labels) == set(ref_labels) == set(range(10))  # 0-based, all classes
    for images in (dali_images, ref_images):
        assert 0.0 <= images.min() < 30.0 and 225.0 < images.max() <= 255.0
    print(f"\ntraining pixel mean: DALI {dali_images.mean():.1f}, tf.data {ref_images.mean():.1f}")
    assert abs(dali_images.mean() - ref_images.mean()) < 10.0


def test_train_normalization_is_the_models(data_dir, idx_dir):
    """Same seed, same crops: normalize=True is exactly (pixels - mean) / std."""
    raw = dali_utils.train_dataset(data_dir, idx_dir, BATCH, SIZE, seed=5, normalize=False)
    normalized = dali_utils.train_dataset(data_dir, idx_dir, BATCH, SIZE, seed=5)
    (raw_images, raw_labels), (images, labels) = next(iter(raw)), next(iter(normalized))
    np.testing.assert_array_equal(raw_labels, labels)
    expected = (raw_images.numpy() - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    np.testing.assert_allclose(images.numpy(), expected, atol=1e-5)
    # The sample digits are dark ink on light paper, so the mean is not 0 here; on the
    # model's ImageNet statistics it is about 0 and the spread about 1.
    print(f"\nnormalized training batch: mean {images.numpy().mean():.2f}")
    assert -3.0 < images.numpy().mean() < 3.0


# ---------------------------------------------------------------------------------------
# Evaluation


def _dali_eval(data_dir, idx_dir, num_shards=1, shard_index=0, batch_size=BATCH, **kw):
    dataset, num_images = dali_utils.eval_dataset(
        data_dir, idx_dir, batch_size, SIZE, num_shards, shard_index, normalize=False, **kw
    )
    batches = list(dali_utils.real_batches(dataset, num_images))
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    return images, labels, num_images, [len(b[1]) for b in batches]


def test_eval_matches_tf_data(data_dir, idx_dir):
    """Every tf.data evaluation image has exactly one DALI twin, equal up to rounding."""
    images, labels, num_images, _ = _dali_eval(data_dir, idx_dir)
    ref = list(data_utils.eval_dataset(data_dir, BATCH, SIZE).as_numpy_iterator())
    ref_images = np.concatenate([batch[0] for batch in ref])
    ref_labels = np.concatenate([batch[1] for batch in ref])
    assert num_images == len(images) == len(ref_images) == 200
    assert images.shape[1:] == ref_images.shape[1:] == (SIZE, SIZE, 3)

    # The two pipelines order the records differently: pair each DALI image with the
    # closest tf.data image, and require the pairing to be one-to-one.
    flat_ref = ref_images.reshape(len(ref_images), -1)
    pairs = [
        int(np.argmin(np.abs(flat_ref - image.reshape(1, -1)).mean(axis=1))) for image in images
    ]
    assert sorted(pairs) == list(range(len(ref_images)))
    np.testing.assert_array_equal(labels, ref_labels[pairs])
    diff = np.abs(images - ref_images[pairs])
    print(
        f"\nDALI vs tf.data evaluation images (0..255): max abs diff {diff.max():.4f}, "
        f"mean abs diff {diff.mean():.6f}"
    )
    # DALI rounds the resized image to uint8; everything else matches.
    assert diff.max() < 0.51 and diff.mean() < 0.3


@pytest.mark.parametrize("num_shards, batch_size", [(2, BATCH), (3, 32), (3, 66)])
def test_eval_shards_visit_every_image_once(data_dir, idx_dir, num_shards, batch_size):
    whole, whole_labels, _, _ = _dali_eval(data_dir, idx_dir)
    seen = collections.Counter()
    total = 0
    for shard in range(num_shards):
        images, labels, num_images, sizes = _dali_eval(
            data_dir, idx_dir, num_shards, shard, batch_size=batch_size
        )
        assert num_images == len(images) == dali_utils.dali_shard_size(200, num_shards, shard)
        assert all(size == batch_size for size in sizes[:-1]) and 0 < sizes[-1] <= batch_size
        seen.update(_fingerprint(image) + str(label) for image, label in zip(images, labels))
        total += num_images
    assert total == 200
    assert seen == collections.Counter(
        _fingerprint(image) + str(label) for image, label in zip(whole, whole_labels)
    )


def test_more_processes_than_records_is_a_user_error(data_dir, idx_dir):
    """DALI would abort the whole process while building such a pipeline."""
    with pytest.raises(UserError, match="200 validation records, fewer than the 201 processes"):
        dali_utils.eval_dataset(data_dir, idx_dir, 8, SIZE, num_shards=201, shard_index=1)
    with pytest.raises(UserError, match="600 train records, fewer than the 601 processes"):
        dali_utils.train_dataset(data_dir, idx_dir, 8, SIZE, num_shards=601, shard_index=0)
    images, labels, num_images, sizes = _dali_eval(data_dir, idx_dir, 200, 7, batch_size=8)
    assert num_images == len(images) == len(labels) == 1 and sizes == [1]


def test_real_batches_cuts_the_padding():
    batches = [(tf.fill([4, 1], i), tf.fill([4], i)) for i in range(5)]
    sizes = [int(labels.shape[0]) for _, labels in dali_utils.real_batches(batches, 10)]
    assert sizes == [4, 4, 2]
    assert list(dali_utils.real_batches(batches, 0)) == []


# ---------------------------------------------------------------------------------------
# Shards


def test_train_shards_are_disjoint_and_cover_everything(data_dir, idx_dir):
    """The training reader of each of 2 shards, as train_dataset configures it."""
    import nvidia.dali.fn as fn
    import nvidia.dali.tfrecord as tfrec
    from nvidia.dali import Pipeline

    files, indexes = dali_utils.index_files(data_dir, idx_dir, "train")
    records = _record_hashes(files)
    assert len(records) == len(set(records)) == 600
    seen = []
    for shard in range(2):
        pipe = Pipeline(batch_size=50, num_threads=1, device_id=None, seed=7)
        with pipe:
            jpegs, _ = dali_utils._read(
                fn, tfrec, files, indexes, 2, shard, training=True, shuffle_buffer=300
            )
            pipe.set_outputs(jpegs)
        pipe.build()
        hashes = set()
        for _ in range(12):  # two epochs of the shard
            batch = pipe.run()[0]
            hashes |= {_fingerprint(batch.at(i)) for i in range(len(batch))}
        seen.append(hashes)
        # DALI's shard: a contiguous range of the records in file order.
        assert hashes == set(records[shard * 300 : (shard + 1) * 300])
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(records)

    # And the full pipeline of shard 1 runs: labels from its records only.
    labels = {int(data_utils.parse_record(r)["label"]) for r in tf.data.TFRecordDataset(files)}
    _, batch_labels = _batches(dali_utils.train_dataset(data_dir, idx_dir, BATCH, SIZE, 2, 1), 2)
    assert set(batch_labels) <= labels


def test_shard_arguments_are_checked(data_dir, idx_dir):
    with pytest.raises(ValueError):
        dali_utils.train_dataset(data_dir, idx_dir, BATCH, SIZE, num_shards=2, shard_index=2)
    assert [dali_utils.dali_shard_size(200, 3, i) for i in range(3)] == [66, 67, 67]
    assert [dali_utils.dali_shard_size(2, 4, i) for i in range(4)] == [0, 1, 0, 1]


def test_device_auto_is_cpu_without_gpu():
    if tf.config.get_visible_devices("GPU"):
        pytest.skip("this machine has a GPU")
    assert dali_utils.resolve_device(None) == ("cpu", "/cpu:0", None)
    with pytest.raises(UserError, match="sees no GPU"):
        dali_utils.resolve_device("gpu")


# ---------------------------------------------------------------------------------------
# Index files


@pytest.fixture
def indexed_copy(data_dir, tmp_path):
    """A private copy of the sample records and their index files."""
    src, idx = tmp_path / "data", tmp_path / "idx"
    shutil.copytree(data_dir, src)
    dali_index.index_dir(str(src), str(idx), jobs=1, log=lambda _: None)
    return str(src), str(idx)


def _expect_index_error(src, idx, name, problem):
    command = f"bash utils/dali_index.sh {src} {idx}"  # the tests run it from the repo
    with pytest.raises(UserError) as error:
        if name.startswith("train"):
            dali_utils.train_dataset(src, idx, BATCH, SIZE)
        else:
            dali_utils.eval_dataset(src, idx, BATCH, SIZE)
    message = str(error.value)
    assert os.path.join(idx, name) in message and problem in message
    assert message.endswith(command), message
    return message


def test_missing_index_is_a_user_error(indexed_copy, monkeypatch):
    src, idx = indexed_copy
    monkeypatch.chdir(REPO)
    os.remove(os.path.join(idx, "validation-00001-of-00002"))
    _expect_index_error(src, idx, "validation-00001-of-00002", "is missing")
    dali_utils.train_dataset(src, idx, BATCH, SIZE)  # the train indexes are fine


def test_stale_index_is_a_user_error(indexed_copy, monkeypatch):
    src, idx = indexed_copy
    monkeypatch.chdir(REPO)
    # A record file rewritten after its index.
    record = os.path.join(src, "train-00002-of-00004")
    mtime = os.stat(record).st_mtime_ns
    os.utime(os.path.join(idx, "train-00002-of-00004"), ns=(mtime, mtime - 10**9))
    _expect_index_error(src, idx, "train-00002-of-00004", "older than its record file")

    # An index that stops short of its record file's end (or has the wrong sizes).
    dali_index.write_index(record, os.path.join(idx, "train-00002-of-00004"))
    index = os.path.join(idx, "validation-00000-of-00002")
    with open(index) as f:
        lines = f.readlines()
    with open(index, "w") as f:
        f.writelines(lines[:-1])
    _expect_index_error(src, idx, "validation-00000-of-00002", "does not match its record file")

    # The command in the message fixes it.
    result = _run_index_script(src, idx)
    assert result.returncode == 0, result.stderr
    assert "indexed 1 file(s)" in result.stdout and "5 already up to date" in result.stdout
    dali_utils.eval_dataset(src, idx, BATCH, SIZE)


def test_index_script_and_python_indexer_match_tfrecord2idx(data_dir, idx_dir, tmp_path):
    """utils/dali_index.sh --tfrecord2idx (DALI's script) and the default Python path
    write byte-identical files, also for an empty record file."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("train-00001-of-00004",):
        shutil.copy(os.path.join(data_dir, name), src / name)
    (src / "train-00009-of-00010").write_bytes(b"")
    by_dali, by_python = tmp_path / "dali", tmp_path / "python"
    result = _run_index_script("-j", "2", "--tfrecord2idx", str(src), str(by_dali))
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run_index_script(str(src), str(by_python))
    assert result.returncode == 0, result.stdout + result.stderr
    names = sorted(os.listdir(src))
    assert sorted(os.listdir(by_dali)) == sorted(os.listdir(by_python)) == names
    for name in names:
        assert (by_dali / name).read_bytes() == (by_python / name).read_bytes(), name
    first = (by_python / "train-00001-of-00004").read_text().splitlines()
    assert first[0].startswith("0 ") and len(first) == 150
    # The module fixture's full index, also written by dali_index.sh, agrees.
    for name in ("train-00001-of-00004",):
        with open(os.path.join(idx_dir, name), "rb") as f:
            assert (by_python / name).read_bytes() == f.read()


@pytest.mark.parametrize("tool", ["python", "tfrecord2idx"])
def test_index_script_refuses_a_truncated_file(data_dir, tmp_path, tool):
    src, dst = tmp_path / "src", tmp_path / "idx"
    src.mkdir()
    with open(os.path.join(data_dir, "validation-00000-of-00002"), "rb") as f:
        data = f.read()
    (src / "validation-00000-of-00001").write_bytes(data[:-100])
    options = ["--tfrecord2idx"] if tool == "tfrecord2idx" else []
    result = _run_index_script(*options, str(src), str(dst))
    assert result.returncode == 1
    assert "validation-00000-of-00001" in result.stderr
    assert not os.path.exists(dst / "validation-00000-of-00001")
    assert not [name for name in os.listdir(dst) if name.endswith(".tmp")]  # cleaned up


def test_index_dir_must_not_be_the_data_dir(indexed_copy):
    src, _ = indexed_copy
    before = sorted((name, os.path.getsize(os.path.join(src, name))) for name in os.listdir(src))
    for options in ([], ["--tfrecord2idx"]):
        result = _run_index_script(*options, src, src + "/.")
        assert result.returncode == 1 and "must not be the data directory" in result.stderr
    after = sorted((name, os.path.getsize(os.path.join(src, name))) for name in os.listdir(src))
    assert after == before
    with pytest.raises(UserError, match="is the data directory"):
        dali_utils.train_dataset(src, src, BATCH, SIZE)


def test_index_script_usage_errors(tmp_path):
    assert _run_index_script().returncode == 2
    assert _run_index_script("-j", "0", str(tmp_path), str(tmp_path)).returncode == 2
    result = _run_index_script(str(tmp_path / "nope"), str(tmp_path / "idx"))
    assert result.returncode == 1 and "no such directory" in result.stderr


# ---------------------------------------------------------------------------------------
# main.py --dali, end to end


def test_train_and_evaluate_with_dali_learns_and_normalizes_once(data_dir, idx_dir, tmp_path):
    """Training and evaluation through DALI learn the sample data; the checkpoint evaluated
    through tf.data (raw pixels, the model normalises) scores the same, and the export
    takes raw pixels: so the images are normalised exactly once on every path."""
    small = ["--arch", "resnet50", "--num_classes", "10", "--image_size", "32"]
    results, export = str(tmp_path / "results"), str(tmp_path / "export")
    run_main(
        *small, "--mode", "train_and_evaluate", "--dali", "--data_dir", data_dir,
        "--data_idx_dir", idx_dir, "--batch_size", "16", "--num_iter", "4",
        "--iter_unit", "epoch", "--lr_init", "0.1", "--lr_warmup_epochs", "1", "--cosine_lr",
        "--label_smoothing", "0.1", "--weight_init", "fan_in", "--display_every", "5",
        "--seed", "1", "--results_dir", results, "--export_dir", export,
    )  # fmt: skip
    losses = logged_values(results, "cross_entropy")
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    dali_top1 = logged_values(results, "top1_accuracy")[-1]
    assert logged_values(results, "eval_images")[-1] == 200
    assert dali_top1 > 0.3, f"top-1 {dali_top1} through DALI is not clearly above chance (0.1)"

    tf_data = str(tmp_path / "eval_tf_data")
    run_main(
        *small, "--mode", "evaluate", "--data_dir", data_dir, "--batch_size", "50",
        "--model_dir", results, "--results_dir", tf_data,
    )  # fmt: skip
    tf_data_top1 = logged_values(tf_data, "top1_accuracy")[-1]
    print(f"\ntop-1 through DALI {dali_top1:.3f}, the same checkpoint through tf.data "
          f"{tf_data_top1:.3f}")  # fmt: skip
    assert abs(tf_data_top1 - dali_top1) <= 0.02  # resize rounding may flip an image or four

    images, labels = next(iter(data_utils.eval_dataset(data_dir, 50, 32)))
    serve = tf.saved_model.load(f"{export}/1").signatures["serving_default"]
    exported = serve(input=images)["classes"].numpy()
    assert np.mean(exported == labels.numpy()) > 0.3  # raw pixels in, normalised inside
