"""utils/tools/build_tfrecords.py: image folders -> ImageNet-format TFRecord shards."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from utils import data_utils
from utils.core.errors import UserError
from utils.tools import build_tfrecords

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("n001", "n002", "n003")


def write_jpeg(path, seed, size=(12, 16)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(tf.io.encode_jpeg(pixels, quality=95).numpy())


def make_tree(root, per_class=2):
    """train/<class>/ with `per_class` images each and a flat val/ with one per class."""
    for c, cls in enumerate(CLASSES):
        for i in range(per_class):
            write_jpeg(os.path.join(root, "train", cls, f"{cls}_{i}.JPEG"), seed=10 * c + i)
        write_jpeg(os.path.join(root, "val", f"val_{c}.JPEG"), seed=100 + c, size=(20, 10))
    return os.path.join(root, "train"), os.path.join(root, "val")


def read_split(directory, split):
    records = []
    for path in data_utils.list_files(directory, split):
        for serialized in tf.data.TFRecordDataset(path):
            record = data_utils.parse_record(serialized)
            records.append({key: value.numpy() for key, value in record.items()})
    return {r["filename"].decode(): r for r in records}


def convert(args):
    return build_tfrecords.main([str(a) for a in args])


def test_round_trip_labels_texts_boxes_and_shard_names(tmp_path):
    train_dir, val_dir = make_tree(tmp_path)
    (tmp_path / "val.txt").write_text(
        "".join(f"val_{c}.JPEG {cls}\n" for c, cls in enumerate(CLASSES))
    )
    (tmp_path / "names.txt").write_text("n001\tfirst class\nn003\tthird, class\n")
    (tmp_path / "boxes.csv").write_text(
        "n001_0.JPEG,0.1,0.2,0.5,0.6\nn001_0.JPEG,0.0,0.0,1.0,1.0\nn002_1.JPEG,0.25,0.3,0.75,0.9\n"
    )
    out = tmp_path / "out"
    summary = convert([
        "--train_dir", train_dir, "--validation_dir", val_dir,
        "--validation_labels", tmp_path / "val.txt", "--synset_names", tmp_path / "names.txt",
        "--bounding_boxes", tmp_path / "boxes.csv", "--output_dir", out,
        "--train_shards", 2, "--validation_shards", 5, "--num_workers", 2,
    ])  # fmt: skip

    # Named like build_imagenet_data.py; 5 validation shards for 3 images become 3.
    assert sorted(os.listdir(out)) == [
        "train-00000-of-00002",
        "train-00001-of-00002",
        "validation-00000-of-00003",
        "validation-00001-of-00003",
        "validation-00002-of-00003",
    ]
    assert summary["train"] == {"images": 6, "shards": 2, "skipped": []}

    train = read_split(out, "train")
    assert set(train) == {f"{cls}_{i}.JPEG" for cls in CLASSES for i in range(2)}
    for name, record in train.items():
        c = CLASSES.index(name[:4])
        assert record["label"] == c  # 1-based c + 1 in the file
        assert record["synset"].decode() == CLASSES[c]
        assert (record["height"], record["width"]) == (12, 16)
    assert [train[f"n00{c}_0.JPEG"]["text"].decode() for c in (1, 2, 3)] == [
        "first class",
        "n002",
        "third, class",
    ]
    # (ymin, xmin, ymax, xmax) as the pipeline reads them, from xmin,ymin,xmax,ymax lines.
    np.testing.assert_allclose(train["n001_0.JPEG"]["boxes"], [[0.2, 0.1, 0.6, 0.5], [0, 0, 1, 1]])
    np.testing.assert_allclose(train["n002_1.JPEG"]["boxes"], [[0.3, 0.25, 0.9, 0.75]])
    assert train["n003_1.JPEG"]["boxes"].shape == (0, 4)

    # Stored unchanged: the bytes of an RGB JPEG are not re-encoded.
    original = (tmp_path / "train" / "n002" / "n002_1.JPEG").read_bytes()
    assert train["n002_1.JPEG"]["encoded"] == original

    validation = read_split(out, "validation")
    assert {name: r["label"] for name, r in validation.items()} == {
        "val_0.JPEG": 0,
        "val_1.JPEG": 1,
        "val_2.JPEG": 2,
    }
    assert (validation["val_0.JPEG"]["height"], validation["val_0.JPEG"]["width"]) == (20, 10)


def test_all_build_imagenet_data_keys_are_written(tmp_path):
    train_dir, _ = make_tree(tmp_path, per_class=1)
    convert(["--train_dir", train_dir, "--output_dir", tmp_path / "out", "--train_shards", 1])
    serialized = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" / "train-00000-of-00001"))))
    example = tf.train.Example.FromString(serialized.numpy())
    assert set(example.features.feature) == {
        "image/height",
        "image/width",
        "image/colorspace",
        "image/channels",
        "image/class/label",
        "image/class/synset",
        "image/class/text",
        "image/object/bbox/xmin",
        "image/object/bbox/xmax",
        "image/object/bbox/ymin",
        "image/object/bbox/ymax",
        "image/object/bbox/label",
        "image/format",
        "image/filename",
        "image/encoded",
    }
    feature = example.features.feature
    assert feature["image/colorspace"].bytes_list.value == [b"RGB"]
    assert feature["image/format"].bytes_list.value == [b"JPEG"]
    assert feature["image/channels"].int64_list.value == [3]


@pytest.mark.parametrize("form", ["pairs", "class_per_line", "json_names", "json_indices"])
def test_flat_validation_label_files(tmp_path, form):
    train_dir, val_dir = make_tree(tmp_path, per_class=1)
    truth = {"val_0.JPEG": "n001", "val_1.JPEG": "n002", "val_2.JPEG": "n003"}
    if form == "pairs":
        labels = tmp_path / "labels.txt"
        labels.write_text("".join(f"{name},{cls}\n" for name, cls in reversed(truth.items())))
    elif form == "class_per_line":  # line i labels the i-th file in sorted order
        labels = tmp_path / "labels.txt"
        labels.write_text("n001\nn002\nn003\n")
    else:
        labels = tmp_path / "labels.json"
        values = {n: CLASSES.index(c) if form == "json_indices" else c for n, c in truth.items()}
        labels.write_text(json.dumps(values))
    out = tmp_path / "out"
    convert(["--train_dir", train_dir, "--validation_dir", val_dir, "--validation_labels", labels,
             "--output_dir", out, "--train_shards", 1, "--validation_shards", 1])  # fmt: skip
    validation = read_split(out, "validation")
    assert {n: CLASSES[r["label"]] for n, r in validation.items()} == truth


def test_imagenet_keyword_uses_packaged_validation_labels_and_names(tmp_path):
    for c, wnid in enumerate(("n01440764", "n01751748")):  # labels 0 and 65 in ImageNet-1k
        write_jpeg(str(tmp_path / "train" / wnid / f"{wnid}_1.JPEG"), seed=c)
    write_jpeg(str(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG"), seed=5)  # a sea snake
    out = tmp_path / "out"
    convert(["--train_dir", tmp_path / "train", "--validation_dir", tmp_path / "val",
             "--validation_labels", "imagenet", "--synset_names", "imagenet",
             "--output_dir", out, "--train_shards", 1, "--validation_shards", 1])  # fmt: skip
    [record] = read_split(out, "validation").values()
    assert (record["label"], record["synset"], record["text"]) == (1, b"n01751748", b"sea snake")
    texts = {r["synset"]: r["text"] for r in read_split(out, "train").values()}
    assert texts[b"n01440764"] == b"tench, Tinca tinca"


def test_validation_in_class_folders_and_labels_file_order(tmp_path):
    """--labels_file fixes the numbering; validation/<class>/ needs no label file."""
    for c, cls in enumerate(CLASSES):
        write_jpeg(str(tmp_path / "val" / cls / f"v{c}.JPEG"), seed=c)
    (tmp_path / "classes.txt").write_text("n003\nn001\nn002\nn004\n")
    out = tmp_path / "out"
    convert(["--validation_dir", tmp_path / "val", "--labels_file", tmp_path / "classes.txt",
             "--output_dir", out, "--validation_shards", 1])  # fmt: skip
    validation = read_split(out, "validation")
    assert {n: int(r["label"]) for n, r in validation.items()} == {
        "v0.JPEG": 1,
        "v1.JPEG": 2,
        "v2.JPEG": 0,
    }


def cmyk_jpeg(blocks):
    """A baseline 4-component (Adobe CMYK) JPEG in which each 8x8 block is flat.

    blocks: uint8 [rows, cols, 4]. Only DC coefficients are coded (quantiser 1, the
    standard DC Huffman table, an AC table holding just end-of-block), which is enough
    for libjpeg to decode it as CMYK.
    """
    dc_bits = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    codes, code = [], 0
    for length, count in enumerate(dc_bits, 1):
        for _ in range(count):
            codes.append(format(code, f"0{length}b"))
            code += 1
        code <<= 1

    def segment(marker, payload):
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

    rows, cols, _ = blocks.shape
    header = b"\xff\xd8" + segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))
    header += segment(0xDB, b"\x00" + bytes([1] * 64))
    header += segment(
        0xC0,
        struct.pack(">BHHB", 8, rows * 8, cols * 8, 4)
        + b"".join(bytes([c + 1, 0x11, 0]) for c in range(4)),
    )
    header += segment(0xC4, b"\x00" + bytes(dc_bits) + bytes(range(12)))
    header += segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00")
    header += segment(
        0xDA, b"\x04" + b"".join(bytes([c + 1, 0]) for c in range(4)) + b"\x00\x3f\x00"
    )
    bits, previous = [], [0] * 4
    for y in range(rows):
        for x in range(cols):
            for c in range(4):
                dc = 8 * (int(blocks[y, x, c]) - 128)
                diff, previous[c] = dc - previous[c], dc
                size = abs(diff).bit_length()
                bits.append(codes[size])
                if size:
                    bits.append(format(diff if diff > 0 else diff + (1 << size) - 1, f"0{size}b"))
                bits.append("0")  # end of block
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        data.append(int(stream[i : i + 8], 2))
        if data[-1] == 0xFF:
            data.append(0)  # byte stuffing
    return header + bytes(data) + b"\xff\xd9"


def test_cmyk_and_png_saved_as_jpeg_become_rgb_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    cmyk = cmyk_jpeg(rng.integers(100, 256, (2, 3, 4), dtype=np.uint8))
    assert build_tfrecords.jpeg_components(cmyk) == 4
    y, x = np.mgrid[0:16, 0:24]
    png_pixels = np.stack([y * 15, x * 10, 255 - y * 8 - x * 4], axis=-1).astype(np.uint8)
    os.makedirs(tmp_path / "train" / "a")
    (tmp_path / "train" / "a" / "cmyk.JPEG").write_bytes(cmyk)
    (tmp_path / "train" / "a" / "png.JPEG").write_bytes(tf.io.encode_png(png_pixels).numpy())
    out = tmp_path / "out"
    convert(["--train_dir", tmp_path / "train", "--output_dir", out, "--train_shards", 1])

    records = read_split(out, "train")
    for name, expected in [
        ("cmyk.JPEG", tf.io.decode_jpeg(cmyk, channels=3).numpy()),
        ("png.JPEG", png_pixels),
    ]:
        encoded = records[name]["encoded"]
        assert encoded.startswith(b"\xff\xd8\xff"), name
        assert build_tfrecords.jpeg_components(encoded) == 3, name
        decoded = tf.io.decode_jpeg(encoded).numpy()
        assert decoded.shape == expected.shape
        assert (records[name]["height"], records[name]["width"]) == expected.shape[:2]
        # Re-encoded at quality 100: close to the source pixels, not bit-exact.
        error = np.abs(decoded.astype(int) - expected.astype(int)).mean()
        assert error < 4.0, (name, error)


def test_undecodable_file_is_reported_and_left_out(tmp_path, capsys):
    train_dir, _ = make_tree(tmp_path, per_class=1)
    bad = os.path.join(train_dir, "n002", "broken.JPEG")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    summary = convert(["--train_dir", train_dir, "--output_dir", tmp_path / "out",
                       "--train_shards", 2])  # fmt: skip
    assert summary["train"]["images"] == 3
    assert summary["train"]["skipped"] == [bad]
    assert f"skipping {bad}" in capsys.readouterr().err
    assert "broken.JPEG" not in read_split(tmp_path / "out", "train")


def test_failed_shard_leaves_no_partial_file(tmp_path, monkeypatch):
    train_dir, _ = make_tree(tmp_path, per_class=2)
    real_encode, calls = build_tfrecords.encode_image, []

    def encode_then_crash(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C while a shard is half written
        return real_encode(path)

    monkeypatch.setattr(build_tfrecords, "encode_image", encode_then_crash)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 1,
                 "--num_workers", 1])  # fmt: skip
    assert os.listdir(out) == []


def test_existing_output_needs_overwrite(tmp_path):
    train_dir, _ = make_tree(tmp_path, per_class=1)
    out = tmp_path / "out"
    convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 3])
    with pytest.raises(UserError, match=r"already has train-\* files; pass --overwrite"):
        convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 1])
    convert(["--train_dir", train_dir, "--output_dir", out, "--train_shards", 1, "--overwrite"])
    assert sorted(os.listdir(out)) == ["train-00000-of-00001"]


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["--train_dir", "{tmp}/nope"], "--train_dir '{tmp}/nope' is not a directory"),
        (
            "tree",
            ["--validation_dir", "{tmp}/val"],
            "is flat (no class folders); pass --validation_labels",
        ),
        (
            "tree",
            ["--validation_dir", "{tmp}/val", "--validation_labels", "{tmp}/short.txt"],
            "has 1 class lines for 3 images",
        ),
        (
            "tree",
            [
                "--train_dir",
                "{tmp}/train",
                "--validation_dir",
                "{tmp}/val",
                "--validation_labels",
                "{tmp}/unknown.txt",
            ],
            "class 'n999' is not among",
        ),
        (
            "tree",
            ["--validation_dir", "{tmp}/val", "--validation_labels", "{tmp}/list.json"],
            "--validation_labels '{tmp}/list.json': cannot read JSON (not a JSON object)",
        ),
        (
            "tree",
            ["--validation_dir", "{tmp}/val", "--validation_labels", "{tmp}/none.json"],
            "--validation_labels '{tmp}/none.json': no such file",
        ),
        (
            "tree",
            ["--train_dir", "{tmp}/train", "--bounding_boxes", "{tmp}/short.txt"],
            "line 1: expected '<file name>,xmin,ymin,xmax,ymax'",
        ),
    ],
)
def test_user_errors(tmp_path, setup, args, message):
    if setup:
        make_tree(tmp_path, per_class=1)
        (tmp_path / "short.txt").write_text("n001\n")
        (tmp_path / "unknown.txt").write_text("n001\nn002\nn999\n")
        (tmp_path / "list.json").write_text("[1, 2]")
    args = [a.format(tmp=tmp_path) for a in args]
    with pytest.raises(UserError) as raised:
        convert([*args, "--output_dir", tmp_path / "out"])
    assert message.format(tmp=tmp_path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_command_line_help_and_one_line_error(tmp_path):
    run = [sys.executable, "-m", "utils.tools.build_tfrecords"]
    helped = subprocess.run([*run, "--help"], cwd=REPO, capture_output=True, text=True)
    assert helped.returncode == 0
    for flag in ("--train_dir", "--validation_labels", "--bounding_boxes", "--train_shards"):
        assert flag in helped.stdout
    failed = subprocess.run(
        [*run, "--train_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        f"error: --train_dir '{tmp_path / 'missing'}' is not a directory"
    )
    assert "Traceback" not in failed.stderr
