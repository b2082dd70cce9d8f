"""Data-side faults a hostile but realistic user meets: each is a one-line error, a counted
skip, or correct behaviour (tests/fault_matrix_data.json lists them for the README)."""

import logging
import os
import struct

import pytest
import tensorflow as tf

from tests.test_data_pipeline import example, jpeg, make_split, take_labels, write_records
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


# ---------------------------------------------------------------------------------------
# 7. An interrupted --overwrite conversion; missing shards of an -of-NNNNN set


def test_interrupted_overwrite_keeps_the_old_set_and_missing_shards_are_named(
    tmp_path, monkeypatch
):
    from tests.test_converter import convert, make_tree
    from utils.tools import build_tfrecords

    train_dir, _ = make_tree(tmp_path, per_class=4)  # 12 images
    out = tmp_path / "out"
    convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 12])
    old = {name: (out / name).read_bytes() for name in os.listdir(out) if name[0] != "."}
    assert len(old) == 12

    real_write, calls = build_tfrecords._write_shard, []

    def write_then_crash(*args):
        calls.append(args)
        if len(calls) == 6:
            raise KeyboardInterrupt  # Ctrl-C after 5 of 12 new shards
        return real_write(*args)

    monkeypatch.setattr(build_tfrecords, "_write_shard", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 12,
                 "--overwrite", "--num_workers", 1])  # fmt: skip
    assert sorted(os.listdir(out)) == sorted(old)  # no staging or backup left, old set whole
    assert all((out / name).read_bytes() == data for name, data in old.items())
    assert len(data_utils.list_files(str(out), "train")) == 12

    for name in sorted(old)[5:]:
        os.unlink(out / name)  # what the old converter left behind
    with pytest.raises(
        UserError, match=r"has 5 of the 12 train shards: missing train-00005-of-00012"
    ):
        data_utils.list_files(str(out), "train")


def test_overwrite_swaps_in_the_new_set(tmp_path):
    from tests.test_converter import convert, make_tree

    train_dir, _ = make_tree(tmp_path, per_class=2)
    out = tmp_path / "out"
    convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 3])
    convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 2, "--overwrite"])
    assert sorted(os.listdir(out)) == ["train-00000-of-00002", "train-00001-of-00002"]


def test_mixed_shard_sets_are_one_line(tmp_path):
    data = make_split(tmp_path / "data", "train", [[1], [2]])
    write_records(os.path.join(data, "train-00000-of-00003"), [example(3)])
    with pytest.raises(UserError, match=r"mixes train shard sets \(2 of 2 and 1 of 3\)"):
        data_utils.list_files(data, "train")


# ---------------------------------------------------------------------------------------
# 8. Validation files checked before training


def _args(data_dir):
    import argparse

    return argparse.Namespace(data_dir=str(data_dir), dali=False, num_classes=10)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", r"has 2 of the 3 validation shards: missing validation-00001-of-00003"),
        ("truncate", r"validation-00002-of-00003: truncated record file"),
        ("first_record", r"validation-00002-of-00003: cannot read its first record"),
        ("empty", r"the validation-\* files in .* hold no records"),
        ("absent", r"has no validation-\* files"),
        ("label", r"validation-00000-of-00003: record label 12 is outside 1..10"),
    ],
)
def test_validation_files_are_checked_before_training(tmp_path, damage, message):
    from runtime import inputs

    data = make_split(tmp_path / "data", "validation", [[1, 2], [3], [4, 5]])
    make_split(tmp_path / "data", "train", [[1, 2, 3]])
    last = os.path.join(data, "validation-00002-of-00003")
    assert inputs.check_validation_data(_args(data)) == 5
    if damage == "missing":
        os.unlink(os.path.join(data, "validation-00001-of-00003"))
    elif damage == "truncate":
        os.truncate(last, os.path.getsize(last) - 7)
    elif damage == "label":
        write_records(os.path.join(data, "validation-00000-of-00003"), map(example, [1, 12]))
    elif damage == "first_record":
        corrupt_payload(last, 0)
    elif damage in ("empty", "absent"):
        for name in os.listdir(data):
            if name.startswith("validation-"):
                os.unlink(os.path.join(data, name))
        if damage == "empty":
            write_records(os.path.join(data, "validation-00000-of-00001"), [])
    with pytest.raises(UserError, match=message):
        inputs.check_validation_data(_args(data))


# ---------------------------------------------------------------------------------------
# 14. predict: unreadable images are listed, the rest predicted


def _tiny_model(x, training=False):
    return tf.stack([tf.reduce_mean(x, axis=[1, 2, 3]), tf.zeros(tf.shape(x)[:1])], axis=1)


def test_predict_skips_and_lists_unreadable_images(tmp_path, capsys):
    from runtime import predict

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(1))
    (folder / "b_truncated.jpg").write_bytes(jpeg(2)[:200])
    (folder / "c.png").write_bytes(b"not a png at all")
    (folder / "d.jpg").write_bytes(jpeg(3))
    (folder / "notes.txt").write_text("not an image, not listed")
    os.symlink("loop.jpg", folder / "loop.jpg")  # a symlink loop
    (folder / "e.JPEG").mkdir()  # a directory named like an image
    paths = predict.list_images(str(folder))
    results = predict.predict(_tiny_model, paths, 16, 2, 2)
    by_name = {os.path.basename(r["file"]): r for r in results}
    assert sorted(by_name) == ["a.jpg", "b_truncated.jpg", "c.png", "d.jpg", "e.JPEG", "loop.jpg"]
    assert {name for name, r in by_name.items() if "top5" in r} == {"a.jpg", "d.jpg"}
    for name in ("b_truncated.jpg", "c.png", "e.JPEG", "loop.jpg"):
        assert by_name[name]["error"].startswith("cannot ")
        assert "\n" not in by_name[name]["error"]
    predict.print_predictions(results)
    assert "warning: 4 of 6 image(s) could not be read" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"none of the 2 image\(s\) could be predicted"):
        predict.predict(_tiny_model, [str(folder / "c.png"), str(folder / "loop.jpg")], 16, 2, 2)


def test_predict_refuses_a_huge_image_without_decoding_it(tmp_path, monkeypatch):
    from runtime import predict

    monkeypatch.setattr(predict, "MAX_PIXELS", 24 * 32 - 1)
    (tmp_path / "big.jpg").write_bytes(jpeg(1))
    (tmp_path / "ok.png").write_bytes(tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy())
    results = predict.predict(
        _tiny_model, [str(tmp_path / "big.jpg"), str(tmp_path / "ok.png")], 16, 4, 2
    )
    assert "32x24 pixels is too large" in results[0]["error"] and "top5" in results[1]


# ---------------------------------------------------------------------------------------
# 15. An empty class folder keeps its label


def test_empty_class_folder_keeps_its_label(tmp_path, capsys):
    from tests.test_converter import CLASSES, convert, make_tree, read_split

    train_dir, _ = make_tree(tmp_path, per_class=1)
    for name in os.listdir(os.path.join(train_dir, CLASSES[1])):
        os.unlink(os.path.join(train_dir, CLASSES[1], name))
    convert(["--train_dir", train_dir, "--output_dir", tmp_path / "out", "--train_shards", 1])
    records = read_split(tmp_path / "out", "train")
    assert {name: int(r["label"]) for name, r in records.items()} == {
        "n001_0.JPEG": 0,
        "n003_0.JPEG": 2,  # 0-based: the third sorted folder, as with the folder full
    }
    assert "class folder 'n002' has no images; it keeps label 2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# 16. --data_dir pointing at a file


def test_data_dir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "train-00000-of-00001").write_bytes(b"")
    with pytest.raises(UserError, match=r"is a file, not a directory"):
        data_utils.list_files(str(tmp_path / "train-00000-of-00001"), "train")


# ---------------------------------------------------------------------------------------
# End to end: a hostile training set trains to the end and says what it skipped


def test_training_on_mislabelled_and_corrupted_records_finishes_and_says_so(tmp_path):
    from tests.support import run_main

    data = make_split(tmp_path / "data", "train", [[1 + i % 10 for i in range(40)]] * 2)
    labels = [1 + i % 10 for i in range(40)]
    labels[20], labels[30] = 0, 11  # past the probe's first records
    write_records(os.path.join(data, "train-00000-of-00002"), map(example, labels))
    corrupt_payload(os.path.join(data, "train-00001-of-00002"), 35)
    proc = run_main(
        "--arch", "resnet50", "--mode", "train", "--data_dir", data, "--batch_size", "8",
        "--num_iter", "12", "--iter_unit", "batch", "--weight_init", "fan_in",
        "--image_size", "32", "--num_classes", "10", "--seed", "1",
        "--results_dir", tmp_path / "results",
    )  # fmt: skip
    assert tf.train.latest_checkpoint(str(tmp_path / "results")).endswith("ckpt-12")
    assert "Traceback" not in proc.stderr
    assert "label 0 outside 1..10" in proc.stderr and "label 11 outside 1..10" in proc.stderr
    assert "train-00001-of-00002: cannot read record 35" in proc.stderr
    assert "lost the remaining 5 of its 40 records" in proc.stderr


# ---------------------------------------------------------------------------------------
# More probes: names, permissions, caches, empty splits, odd entries


def test_non_utf8_names_read_convert_and_predict(tmp_path, capsys):
    from runtime import predict
    from tests.test_converter import convert, write_jpeg

    root = os.path.join(os.fsencode(tmp_path), b"d\xff")
    os.makedirs(os.path.join(root, b"train", b"n\xe9"))
    write_jpeg(os.fsdecode(os.path.join(root, b"train", b"n\xe9", b"img\xff.jpg")), seed=1)
    out = os.fsdecode(os.path.join(root, b"out"))
    convert(["--train_dir", os.fsdecode(os.path.join(root, b"train")), "--output_dir", out,
             "--train_shards", 1])  # fmt: skip
    (path,) = data_utils.list_files(out, "train")
    (record,) = [data_utils.parse_record(r) for r in tf.data.TFRecordDataset(os.fsencode(path))]
    assert record["filename"].numpy() == b"img\xff.jpg" and record["synset"].numpy() == b"n\xe9"
    ds = data_utils.train_dataset(out, 1, 8, seed=0, num_classes=1)
    assert take_labels(ds, 2) == [0, 0]
    image = os.fsdecode(os.path.join(root, b"train", b"n\xe9", b"img\xff.jpg"))
    results = predict.predict(_tiny_model, [image], 16, 1, 2)
    predict.print_predictions(results)
    assert "img\ufffd.jpg: class" in capsys.readouterr().out
    predict.write_predictions(results, str(tmp_path / "results"))


def test_unlistable_data_dir_is_one_line(tmp_path, monkeypatch):
    data = make_split(tmp_path / "data", "train", [[1]])

    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(UserError, match=r"cannot list it \(Permission denied\)"):
        data_utils.list_files(data, "train")


@pytest.mark.parametrize("cache", ["garbage", "directory", "wrong_type"])
def test_broken_count_cache_is_recounted(tmp_path, cache):
    data = make_split(tmp_path / "data", "train", [[1, 2, 3]])
    path = os.path.join(data, ".record_counts.json")
    if cache == "directory":
        os.mkdir(path)
    else:
        with open(path, "wb") as f:
            f.write(b"\xff{not json" if cache == "garbage" else b'{"train-00000-of-00001": 7}')
    assert data_utils.count_records(data_utils.list_files(data, "train")) == 3


def test_split_entry_that_is_a_directory_is_one_line(tmp_path):
    data = make_split(tmp_path / "data", "train", [[1], [2]])
    os.unlink(os.path.join(data, "train-00001-of-00002"))
    os.mkdir(os.path.join(data, "train-00001-of-00002"))
    with pytest.raises(UserError, match=r"train-00001-of-00002 is not a file"):
        data_utils.list_files(data, "train")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_empty_split_is_one_line(tmp_path, split):
    os.makedirs(tmp_path / "data")
    write_records(tmp_path / "data" / f"{split}-00000-of-00001", [])
    data = str(tmp_path / "data")
    with pytest.raises(UserError, match=r"is empty|hold no records"):
        if split == "train":
            data_utils.train_dataset(data, 2, 8)
        else:
            data_utils.eval_dataset(data, 2, 8)


def test_converter_output_dir_that_is_a_file_is_one_line(tmp_path):
    from tests.test_converter import convert, make_tree

    train_dir, _ = make_tree(tmp_path, per_class=1)
    (tmp_path / "out").write_text("")
    with pytest.raises(UserError, match=r"--output_dir .* is a file, not a directory"):
        convert(["--train_dir", train_dir, "--output_dir", tmp_path / "out"])


def test_converter_skips_and_reports_unreadable_images(tmp_path, capsys):
    from tests.test_converter import convert, make_tree

    train_dir, _ = make_tree(tmp_path, per_class=2)
    os.mkdir(os.path.join(train_dir, "n001", "folder.JPEG"))
    with open(os.path.join(train_dir, "n002", "cut.JPEG"), "wb") as f:
        f.write(jpeg(5)[:100])
    summary = convert(["--train_dir", train_dir, "--output_dir", tmp_path / "out",
                       "--train_shards", 1])  # fmt: skip
    assert summary["train"]["images"] == 6 and len(summary["train"]["skipped"]) == 2
    assert "skipped 2 undecodable" in capsys.readouterr().err


def test_predict_folder_of_non_images_is_one_line(tmp_path):
    from runtime import predict

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"no images"):
        predict.list_images(str(tmp_path))


def test_truncated_jpeg_in_a_record_is_a_counted_skip(tmp_path):
    records = [example(1 + i % 3) for i in range(9)] + [example(2, encoded=jpeg(7)[:300])]
    os.makedirs(tmp_path / "data")
    write_records(tmp_path / "data" / "validation-00000-of-00001", records)
    before = data_utils.skipped_images("validation")
    assert len(take_labels(data_utils.eval_dataset(str(tmp_path / "data"), 4, 8), 5)) == 9
    assert data_utils.skipped_images("validation") - before == 1


def test_corrupted_record_among_the_first_is_one_line_naming_it(tmp_path):
    data = make_split(tmp_path / "data", "validation", [[1] * 10])
    path = os.path.join(data, "validation-00000-of-00001")
    corrupt_payload(path, 3)
    with pytest.raises(UserError, match=rf"^{path}: cannot read record 3 \(corrupted record"):
        data_utils.eval_dataset(data, 2, 8)


def test_interrupted_swap_leaves_a_backup_that_is_named(tmp_path):
    from tests.test_converter import convert, make_tree
    from utils.tools import shard_output

    train_dir, _ = make_tree(tmp_path, per_class=1)
    out = tmp_path / "out"
    convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 1])
    (out / shard_output.STAGING).mkdir()  # a kill -9 while writing: removed next time
    (out / shard_output.STAGING / "train-00000-of-00009").write_bytes(b"junk")
    convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 1, "--overwrite"])
    assert sorted(os.listdir(out)) == ["train-00000-of-00001"]
    (out / shard_output.BACKUP).mkdir()  # a kill -9 during the swap: never deleted
    (out / shard_output.BACKUP / "train-00000-of-00003").write_bytes(b"old")
    with pytest.raises(UserError, match=r"holds the files an interrupted conversion replaced"):
        convert(["--train_dir", train_dir, "--output_dir", out, "--overwrite"])


def test_fault_matrix_names_tests_that_exist():
    import json
    import pathlib

    matrix = json.loads(pathlib.Path(__file__).with_name("fault_matrix_data.json").read_text())
    assert len({entry["id"] for entry in matrix}) == len(matrix)
    names = set(globals())
    for entry in matrix:
        assert set(entry) == {"id", "fault", "command", "expected", "test"}, entry
        assert entry["expected"] in ("one-line error", "counted skip", "correct"), entry
        path, name = entry["test"].split("::")
        assert path == "tests/test_faults_data.py" and name.split("[")[0] in names, entry


@pytest.mark.parametrize("case", ["broken_link", "link_loop", "shard_beyond_the_set"])
def test_odd_data_dir_entries_are_one_line(tmp_path, case):
    data = make_split(tmp_path / "data", "train", [[1], [2]])
    if case == "broken_link":
        os.symlink(tmp_path / "nowhere", tmp_path / "link")
        data, message = str(tmp_path / "link"), r"is a symbolic link to nothing"
    elif case == "link_loop":
        os.symlink(tmp_path / "loop", tmp_path / "loop")
        data, message = str(tmp_path / "loop"), r"is a symbolic link to nothing"
    else:
        write_records(os.path.join(data, "train-00002-of-00002"), [example(3)])
        message = r"has train-00002-of-00002: shard 2 of a set of 2 \(numbered 0..1\)"
    with pytest.raises(UserError, match=message):
        data_utils.list_files(data, "train")
