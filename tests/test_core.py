"""The small shared pieces: atomic writes, the TFRecord walker, ModelConfig, the mode table."""

import os
import stat

import pytest

from model.config import ARCHITECTURES, ModelConfig
from utils import modes
from utils.cmdline_helper import ARCHS, parse_cmdline
from utils.core import fileio
from utils.core.errors import tf_error_message
from utils.data import schema, tfrecord


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), fileio.atomic_write(str(path)) as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]  # no temp left
    fileio.write_json(str(path), {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'


def test_new_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o027)
    try:
        fileio.write_json(str(tmp_path / "x.json"), {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == 0o640


def test_read_json_object_names_what_is_wrong(tmp_path):
    path = tmp_path / "c.json"
    assert fileio.read_json_object(str(path)) is None
    fileio.write_json(str(path), {"arch": "resnet50"})
    assert fileio.read_json_object(str(path)) == {"arch": "resnet50"}
    cases = [(b'{"arch": "res', "Unterminated"), (b"[1]", "not a JSON object")]
    cases.append((b"[" * 100_000, "nested too deeply"))
    for content, reason in cases:
        path.write_bytes(content)
        with pytest.raises(ValueError, match=reason):
            fileio.read_json_object(str(path))
    path.write_bytes(b'{"\xff": 1}')
    with pytest.raises(ValueError, match="UTF-8"):
        fileio.read_json_object(str(path))


def _records(payloads):
    import struct

    out = b""
    for payload in payloads:
        length = struct.pack("<Q", len(payload))
        out += length + struct.pack("<I", tfrecord.masked_crc32c(length)) + payload + b"\0" * 4
    return out


def test_walker_gives_offsets_and_sizes_and_names_a_cut(tmp_path):
    path = tmp_path / "train-00000-of-00001"
    path.write_bytes(_records([b"ab", b"cdef"]))
    assert list(tfrecord.walk_records(str(path))) == [(0, 18), (18, 20)]
    assert tfrecord.index_text(str(path)) == "0 18\n18 20\n"
    path.write_bytes(_records([b"ab", b"cdef"])[:-3])
    with pytest.raises(tfrecord.RecordFileError, match="record 1 runs past the end"):
        list(tfrecord.walk_records(str(path)))


def test_masked_crc32c_matches_tensorflow():
    import tensorflow as tf

    path = "/tmp/rnxt-crc-check.tfrecord"
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(b"payload")
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    assert data == _records([b"payload"])[:-4] + data[-4:]  # same length header and CRC


def test_schema_names():
    assert schema.shard_name("validation", 3, 128) == "validation-00003-of-00128"
    assert schema.is_split_file("train-00000-of-00001", "train")
    assert not schema.is_split_file("train-00000-of-00001", "validation")
    with pytest.raises(ValueError, match="split must be one of"):
        schema.shard_name("test", 0, 1)


def test_model_config_round_trip_and_legacy_sidecar():
    args = parse_cmdline(
        ["--batch_size", "8", "--mode", "train", "--arch", "resnext101-32x4d", "--quantize"]
    )
    config = ModelConfig.from_args(args)
    assert config.saved() == {
        "arch": "resnext101-32x4d",
        "num_classes": 1000,
        "use_final_conv": False,
        "quantize": True,
        "symmetric": False,
        "use_qdq": False,
        "padding": "tf",
        "se_width": 0,
    }
    assert config.describe() == "--arch resnext101-32x4d --num_classes 1000 --quantize"
    legacy = config.with_saved({"arch": "resnext101-32x4d", "num_classes": 10})
    assert (legacy.quantize, legacy.num_classes, legacy.data_format) == (False, 10, "NHWC")
    assert (legacy.padding, legacy.se_width) == ("tf", 0)
    with pytest.raises(ValueError, match="unknown arch"):
        ModelConfig(arch="resnet18")


def test_parser_archs_are_the_model_table():
    assert tuple(ARCHITECTURES) == ARCHS


def test_mode_table():
    assert [m for m, mode in modes.MODES.items() if mode.trains] == [
        "train",
        "train_and_evaluate",
        "training_benchmark",
    ]
    assert modes.benchmark_too_short(50, 50, "training_benchmark")
    assert modes.benchmark_too_short(51, 50, "training_benchmark") is None


def test_tf_error_message_is_one_short_line():
    error = ValueError("{{function_node __inference_f_12}} bad thing [Op:Foo] more\nsecond")
    assert tf_error_message(error) == "bad thing"
    assert len(tf_error_message(ValueError("x" * 999), limit=50)) == 50


def test_whole_set_scored_once_after_training_and_by_plain_evaluate():
    from runtime.inputs import counts_whole_set

    def whole(*argv):
        return counts_whole_set(parse_cmdline(["--data_dir", "d", "--batch_size", "8", *argv]))

    assert whole("--mode", "train_and_evaluate") and whole("--mode", "evaluate")
    assert not whole("--mode", "evaluate", "--iter_unit", "batch", "--num_iter", "5")
    assert not whole("--mode", "evaluate", "--num_iter", "2")
    assert not whole("--mode", "inference_benchmark", "--num_iter", "60")
    assert not whole("--mode", "training_benchmark", "--num_iter", "60")
