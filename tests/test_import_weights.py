"""utils.import_weights: TF1 and PyTorch sources (random weights) give the logits of an
independent NumPy forward pass of the source model; bad sources fail with one line.

The references below read the source's own names and layouts (TF1: HWIO, TF 'SAME'
padding; PyTorch: OIHW, symmetric padding) and share no code with the importer. Logits
must agree to 1e-4 of the largest reference logit (float32 model vs float64 reference).
"""

import csv
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model import ARCHITECTURES, ModelConfig, build, build_model
from model.resnet import IMAGENET_MEAN, IMAGENET_STD
from runtime import checkpoints
from tests.support import REPO, run_main
from utils.tools import import_weights, torch_reader

# Its module-scoped fixtures are built once: pytest-xdist runs the whole file on one worker.
pytestmark = pytest.mark.xdist_group("import_weights")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOL = 1e-4
SIZE = 32


# --------------------------------------------------------------------------------------
# NumPy reference pieces (NCHW, float64).


def _conv(x, w, stride, pads, groups=1):
    """x [N, C, H, W], w [O, C/groups, kh, kw], pads (top, bottom, left, right)."""
    top, bottom, left, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    s = x.strides
    patches = np.lib.stride_tricks.as_strided(
        x, (n, c, kh, kw, ho, wo), (s[0], s[1], s[2], s[3], s[2] * stride, s[3] * stride)
    ).reshape(n, groups, cg, kh, kw, ho, wo)
    y = np.einsum(
        "ngckluv,gockl->ngouv", patches, w.reshape(groups, o // groups, cg, kh, kw), optimize=True
    )
    return y.reshape(n, o, ho, wo)


def _max_pool(x, pads):
    top, bottom, left, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=-np.inf)
    ho, wo = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    return np.max(
        [x[:, :, i : i + 2 * ho : 2, j : j + 2 * wo : 2] for i in range(3) for j in range(3)],
        axis=0,
    )


def _same_pads(size, k, stride):
    """TensorFlow 'SAME': the odd pixel of padding goes bottom/right."""
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _tf_pads(x, k, stride):
    return _same_pads(x.shape[2], k, stride) + _same_pads(x.shape[3], k, stride)


def _bn(x, gamma, beta, mean, var, eps=1e-5):
    scale = gamma / np.sqrt(var + eps)
    return x * scale[None, :, None, None] + (beta - mean * scale)[None, :, None, None]


def _relu(x):
    return np.maximum(x, 0)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _normalized_nchw(images):
    x = (images.astype(np.float64) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return x.transpose(0, 3, 1, 2)


def tf1_forward(v, arch, images):
    """The original TF1 graph from its variable names: HWIO kernels, TF 'SAME' padding."""
    spec = ARCHITECTURES[arch]

    def conv_bn(x, scope, kernel, stride, relu=True):
        w = v[kernel].transpose(3, 2, 0, 1)  # HWIO -> OIHW for _conv
        x = _conv(x, w, stride, _tf_pads(x, w.shape[2], stride), x.shape[1] // w.shape[1])
        bn = [
            v[f"{scope}/BatchNorm/{p}"] for p in ("gamma", "beta", "moving_mean", "moving_variance")
        ]
        x = _bn(x, *bn)
        return _relu(x) if relu else x

    x = conv_bn(_normalized_nchw(images), f"{arch}/conv2d", f"{arch}/conv2d/conv2d/kernel", 2)
    x = _max_pool(x, _tf_pads(x, 3, 2))
    for s, blocks in enumerate(spec.blocks):
        for b in range(blocks):
            sc = f"{arch}/btlnck_block_{s}_{b}"
            stride = 2 if s > 0 and b == 0 else 1
            short = x
            if b == 0:
                short = conv_bn(
                    x,
                    f"{sc}/shortcut/conv2d",
                    f"{sc}/shortcut/conv2d/conv2d/kernel",
                    stride,
                    relu=False,
                )
            y = conv_bn(x, f"{sc}/bottleneck_1", f"{sc}/bottleneck_1/conv2d/kernel", 1)
            k2 = f"{sc}/bottleneck_2/bottleneck_2group_filter"
            k2 = k2 if k2 in v else f"{sc}/bottleneck_2/conv2d/kernel"
            y = conv_bn(y, f"{sc}/bottleneck_2", k2, stride)
            y = conv_bn(y, f"{sc}/bottleneck_3", f"{sc}/bottleneck_3/conv2d/kernel", 1, relu=False)
            se = f"{sc}/bottleneck_se_layer"
            if f"{se}/dense/kernel" in v:
                g = _relu(y.mean((2, 3)) @ v[f"{se}/dense/kernel"] + v[f"{se}/dense/bias"])
                g = _sigmoid(g @ v[f"{se}/dense_1/kernel"] + v[f"{se}/dense_1/bias"])
                y = y * g[:, :, None, None]
            x = _relu(y + short)
    return x.mean((2, 3)) @ v[f"{arch}/output/dense/kernel"] + v[f"{arch}/output/dense/bias"]


def torch_forward(sd, arch, images, prefix, block_name, se_names=("se.fc1", "se.fc2")):
    """The PyTorch ResNet from its state_dict: OIHW weights, symmetric padding."""
    spec = ARCHITECTURES[arch]

    def conv_bn(x, conv, bn, stride, relu=True):
        w = sd[f"{prefix}{conv}.weight"]
        p = (w.shape[2] - 1) // 2
        x = _conv(x, w, stride, (p, p, p, p), x.shape[1] // w.shape[1])
        x = _bn(
            x, *[sd[f"{prefix}{bn}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")]
        )
        return _relu(x) if relu else x

    x = conv_bn(_normalized_nchw(images), "conv1", "bn1", 2)
    x = _max_pool(x, (1, 1, 1, 1))
    for s, blocks in enumerate(spec.blocks):
        for b in range(blocks):
            m = block_name(s, b)
            stride = 2 if s > 0 and b == 0 else 1
            short = x
            if b == 0:
                short = conv_bn(x, f"{m}.downsample.0", f"{m}.downsample.1", stride, relu=False)
            y = conv_bn(x, f"{m}.conv1", f"{m}.bn1", 1)
            y = conv_bn(y, f"{m}.conv2", f"{m}.bn2", stride)
            y = conv_bn(y, f"{m}.conv3", f"{m}.bn3", 1, relu=False)
            if spec.se_ratio:
                w1, w2 = (sd[f"{prefix}{m}.{n}.weight"] for n in se_names)
                b1, b2 = (sd[f"{prefix}{m}.{n}.bias"] for n in se_names)
                g = _relu(y.mean((2, 3)) @ w1.reshape(w1.shape[0], -1).T + b1)
                g = _sigmoid(g @ w2.reshape(w2.shape[0], -1).T + b2)
                y = y * g[:, :, None, None]
            x = _relu(y + short)
    return x.mean((2, 3)) @ sd[f"{prefix}fc.weight"].T + sd[f"{prefix}fc.bias"]


# --------------------------------------------------------------------------------------
# Random sources in each scheme.


def _random(shape, role, rng):
    shape = tuple(shape)
    if role == "gamma":
        return rng.uniform(0.3, 1.0, shape)
    if role == "var":
        return rng.uniform(0.5, 1.5, shape)
    if role in ("beta", "mean", "bias"):
        return rng.normal(0, 0.1, shape)
    return rng.normal(0, 1, shape) * np.sqrt(2.0 / max(1, role))  # role = fan-in


def read_tsv(name):
    with open(FIXTURES / "tf1-checkpoint-names" / name) as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(r["name"], json.loads(r["shape"]), r["dtype"]) for r in rows]


def tf1_values(rows, rng, classes=None):
    values = {}
    for name, shape, dtype in rows:
        if dtype == "int64":
            values[name] = np.array(123, dtype=np.int64)
            continue
        if classes and "/output/dense/" in name and not name.endswith("/Momentum"):
            shape = shape[:-1] + [classes]
        if name.endswith("/Momentum"):  # ignored by the importer: zeros are cheaper
            values[name] = np.zeros(shape, np.float32)
            continue
        leaf = name.rsplit("/", 1)[-1]
        role = {
            "gamma": "gamma",
            "beta": "beta",
            "moving_mean": "mean",
            "moving_variance": "var",
            "bias": "bias",
        }.get(leaf)
        values[name] = _random(shape, role or int(np.prod(shape[:-1])), rng).astype(np.float32)
    return values


def write_tf1(prefix, values):
    """A TF1 checkpoint as the original's Saver writes it: tf.compat.v1 variables by name."""
    with tf.Graph().as_default():
        feeds, variables = {}, []
        for name, value in values.items():
            placeholder = tf.compat.v1.placeholder(tf.as_dtype(value.dtype), value.shape)
            feeds[placeholder] = value  # one feed at init: no 176 MB of constants in the graph
            variables.append(tf.compat.v1.Variable(placeholder, name=name))
        assert [v.op.name for v in variables] == list(values)
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer(), feed_dict=feeds)
            saver.save(sess, str(prefix), write_meta_graph=False)


def torch_state_dict(
    arch, classes, rng, block_name, se_names=("se.fc1", "se.fc2"), prefix="", se_width=0
):
    """A random state_dict with PyTorch ResNet key names and OIHW shapes. SE gates: timm's
    1x1 convs reducing by the arch's ratio, or with `se_width` NVIDIA's Linear layers of
    that width."""
    spec = ARCHITECTURES[arch]
    sd = {}

    def conv(name, o, i, k):
        sd[f"{prefix}{name}.weight"] = _random((o, i, k, k), i * k * k, rng)

    def bn(name, c, last=False):
        sd[f"{prefix}{name}.weight"] = _random((c,), "gamma", rng) * (0.3 if last else 1)
        sd[f"{prefix}{name}.bias"] = _random((c,), "beta", rng)
        sd[f"{prefix}{name}.running_mean"] = _random((c,), "mean", rng)
        sd[f"{prefix}{name}.running_var"] = _random((c,), "var", rng)
        sd[f"{prefix}{name}.num_batches_tracked"] = np.array(5, dtype=np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for s, (blocks, width) in enumerate(zip(spec.blocks, spec.widths)):
        out = width * spec.expansion
        for b in range(blocks):
            m = block_name(s, b)
            if b == 0:
                conv(f"{m}.downsample.0", out, cin, 1)
                bn(f"{m}.downsample.1", out)
            conv(f"{m}.conv1", width, cin, 1)
            bn(f"{m}.bn1", width)
            conv(f"{m}.conv2", width, width // spec.groups, 3)
            bn(f"{m}.bn2", width)
            conv(f"{m}.conv3", out, width, 1)
            bn(f"{m}.bn3", out, last=True)
            if spec.se_ratio:
                rd = se_width or out // spec.se_ratio
                conv(f"{m}.{se_names[0]}", rd, out, 1)
                sd[f"{prefix}{m}.{se_names[0]}.bias"] = _random((rd,), "bias", rng)
                conv(f"{m}.{se_names[1]}", out, rd, 1)
                sd[f"{prefix}{m}.{se_names[1]}.bias"] = _random((out,), "bias", rng)
                if se_width:  # nn.Linear: [out, in]
                    for name in se_names:
                        weight = f"{prefix}{m}.{name}.weight"
                        sd[weight] = sd[weight][:, :, 0, 0]
            cin = out
    sd[f"{prefix}fc.weight"] = _random((classes, cin), cin / 2, rng)
    sd[f"{prefix}fc.bias"] = _random((classes,), "bias", rng)
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in sd.items()}


def _timm_block(s, b):
    return f"layer{s + 1}.{b}"


def _nvidia_block(s, b):
    return f"layers.{s}.{b}"


# A minimal torch.save (zip format) writer: the pickle opcodes torch emits for tensors.
_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


def _pickle_value(value, out, storages):
    if isinstance(value, np.ndarray):
        key = str(len(storages))
        storages[key] = np.ascontiguousarray(value)
        out += b"ctorch._utils\n_rebuild_tensor_v2\n(("
        out += _pickle_plain("storage") + f"ctorch\n{_STORAGE[value.dtype]}\n".encode()
        out += _pickle_plain(key) + _pickle_plain("cpu") + _pickle_plain(int(value.size))
        out += b"tQ" + _pickle_plain(0) + _pickle_plain(tuple(value.shape))
        strides = tuple(int(np.prod(value.shape[i + 1 :])) for i in range(value.ndim))
        out += _pickle_plain(strides) + b"\x89ccollections\nOrderedDict\n)RtR"
    elif isinstance(value, dict):
        out += b"}("
        for k, v in value.items():
            out += _pickle_plain(k)
            _pickle_value(v, out, storages)
        out += b"u"
    else:
        out += _pickle_plain(value)


def _pickle_plain(value):
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.fast = True  # no memo: fragments can be concatenated
    pickler.dump(value)
    return buffer.getvalue()[2:-1]  # without PROTO and STOP


def write_pth(path, obj, data_pkl=None):
    out, storages = bytearray(b"\x80\x02"), {}
    _pickle_value(obj, out, storages)
    out += b"."
    name = Path(path).stem
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/data.pkl", bytes(data_pkl or out))
        archive.writestr(f"{name}/byteorder", "little")
        for key, array in storages.items():
            archive.writestr(f"{name}/data/{key}", array.tobytes())
        archive.writestr(f"{name}/version", "3\n")


def write_safetensors(path, sd, bfloat16=False):
    """With the safetensors package (an independent writer). `bfloat16` stores the top
    half of each float32, written here (the package writes bf16 only from torch) and
    checked by the package's parser."""
    from safetensors import deserialize
    from safetensors.numpy import save_file

    if not bfloat16:
        return save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    header, blobs, offset = {}, [], 0
    for key, value in sd.items():
        value = np.ascontiguousarray(value)
        if value.dtype == np.float32:
            dtype, blob = "BF16", (value.view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            dtype, blob = "I64", value.astype("<i8").tobytes()
        header[key] = {
            "dtype": dtype,
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    data = len(text).to_bytes(8, "little") + text + b"".join(blobs)
    parsed = dict(deserialize(data))
    assert {k: v["dtype"] for k, v in parsed.items()} == {k: v["dtype"] for k, v in header.items()}
    Path(path).write_bytes(data)


def to_bfloat16(sd):
    """`sd` with each float32 cut to its bfloat16 top half (as float32)."""
    return {
        k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) if v.dtype == np.float32 else v
        for k, v in sd.items()
    }


# --------------------------------------------------------------------------------------
# Running the importer and the imported model.


def import_cli(*argv):
    """The importer's command line in this process; the environment variable its main()
    sets for the process (TF_CPP_MIN_LOG_LEVEL) is put back."""
    environ = dict(os.environ)
    try:
        return import_weights.main([str(a) for a in argv])
    finally:
        os.environ.clear()
        os.environ.update(environ)


def imported_logits(directory, images):
    """Logits of the model that a run with --model_dir `directory` builds and restores."""
    config = json.loads((Path(directory) / checkpoints.CONFIG_FILE).read_text())
    model_config = ModelConfig(arch=config["arch"]).with_saved(config)
    model = build(model_config)
    checkpoints.restore_model_only(model, str(directory), model_config)
    return model(images, training=False).numpy(), config, model


def assert_logits_close(got, want):
    scale = np.abs(want).max()
    assert scale > 1e-3 and np.std(want) > 1e-3 * scale, "degenerate reference"
    err = np.abs(got - want).max() / scale
    assert err < TOL, f"max relative logit difference {err:.2e}"


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------
# Tests.


@pytest.mark.parametrize("name", ["torch_save_checkpoint.pth", "torch_save_checkpoint_legacy.pth"])
def test_reader_reads_what_torch_save_wrote(name):
    # Written once by tests/fixtures/make_torch_save_fixture.py with torch 2.13.0 (CPU) in a
    # separate venv: a Module's state_dict (with _metadata) plus float64, float16, a
    # transposed view and an offset slice sharing one storage, in a checkpoint dict with an
    # SGD optimizer state_dict, a NumPy scalar and an nn.Parameter, in the zip format and in
    # the legacy one (_use_new_zipfile_serialization=False); the .npz holds torch's values.
    loaded = torch_reader.load(str(FIXTURES / name))
    expected = np.load(FIXTURES / "torch_save_checkpoint.npz")
    assert set(loaded) == {"epoch", "arch", "state_dict", "best_prec1", "optimizer", "param"}
    assert loaded["best_prec1"] == 79.35 and loaded["best_prec1"].dtype == np.float64
    for key, value in loaded["state_dict"].items():
        assert value.dtype == expected[key].dtype and value.shape == expected[key].shape, key
        np.testing.assert_array_equal(value, expected[key])
    np.testing.assert_array_equal(loaded["param"], expected["param"])
    assert loaded["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_malicious_pickle_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    zipped, plain = tmp_path / "evil.pth", tmp_path / "evil_legacy.pth"
    write_pth(zipped, {}, data_pkl=pickle.dumps(Evil(), protocol=2))
    plain.write_bytes(pickle.dumps(Evil(), protocol=2))  # read as the legacy format
    for path in (zipped, plain):
        assert import_cli(path, "--arch", "resnet50", "--output", tmp_path / "out") == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "refusing to unpickle" in err and "system" in err, err
        assert not (tmp_path / "out").exists()


def test_tf1_eval_checkpoint_resnet50_drops_the_untrained_logit(tmp_path, images, capsys):
    values = tf1_values(read_tsv("resnet50.tsv"), np.random.default_rng(1))
    write_tf1(tmp_path / "tf1" / "model.ckpt-1000", values)
    # A directory with a TF `checkpoint` file is accepted like the prefix.
    assert (
        import_cli(
            tmp_path / "tf1",
            "--arch",
            "resnet50",
            "--num_classes",
            "1000",
            "--output",
            tmp_path / "out",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "global_step" in out and "dropped" in out, out
    got, config, _ = imported_logits(tmp_path / "out", images)
    assert config["padding"] == "tf" and config["num_classes"] == 1000
    want = tf1_forward({k: v.astype(np.float64) for k, v in values.items()}, "resnet50", images)
    assert_logits_close(got, want[:, :1000])


def test_tf1_train_checkpoint_resnext_ignores_momentum_and_keeps_1001(tmp_path, images, capsys):
    values = tf1_values(read_tsv("resnext101-32x4d.train.tsv"), np.random.default_rng(2))
    values["current_loss_scale"] = np.float32(128.0)  # AMP loss scaling state
    values["good_steps"] = np.int64(3)
    write_tf1(tmp_path / "model.ckpt-5", values)
    assert (
        import_cli(
            tmp_path / "model.ckpt-5", "--arch", "resnext101-32x4d", "--output", tmp_path / "out"
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "314 /Momentum slots" in out and "good_steps" in out, out
    got, config, _ = imported_logits(tmp_path / "out", images)
    assert config["num_classes"] == 1001
    v64 = {k: np.asarray(v, np.float64) for k, v in values.items()}
    assert_logits_close(got, tf1_forward(v64, "resnext101-32x4d", images))


TORCH_CASES = {
    "timm-resnet50-pth": ("resnet50", _timm_block, "", ".pth", False),
    "torchvision-resnet50-safetensors": ("resnet50", _timm_block, "", ".safetensors", False),
    "nvidia-resnet50-checkpoint-dict": ("resnet50", _nvidia_block, "", ".pth", True),
    "nvidia-resnext101-ddp-prefix": ("resnext101-32x4d", _nvidia_block, "module.", ".pth", True),
    "timm-seresnext101-safetensors": (
        "se-resnext101-32x4d",
        _timm_block,
        "",
        ".safetensors",
        False,
    ),
    "nvidia-seresnext101-se-width-16": (
        "se-resnext101-32x4d",
        _nvidia_block,
        "",
        ".pth",
        True,
        {"se_names": ("squeeze.squeeze", "squeeze.expand"), "se_width": 16},
    ),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_pytorch_sources_give_pytorch_logits(case, tmp_path, images, capsys):
    arch, block_name, prefix, suffix, wrapped, *se = TORCH_CASES[case]
    se = se[0] if se else {}
    sd = torch_state_dict(arch, 1000, np.random.default_rng(3), block_name, prefix=prefix, **se)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        write_safetensors(path, sd)
    elif wrapped:  # as NVIDIA's training saves it
        momentum = {"state": {0: {"momentum_buffer": np.ones(3, np.float32)}}, "param_groups": []}
        write_pth(path, {"epoch": 90, "arch": arch, "state_dict": sd, "optimizer": momentum})
    else:
        write_pth(path, sd)
    assert import_cli(path, "--arch", arch, "--output", tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "num_batches_tracked" in out and (not wrapped or "optimizer" in out), out
    got, config, model = imported_logits(tmp_path / "out", images)
    assert config["padding"] == "symmetric"
    assert config["se_width"] == se.get("se_width", 0)
    sd64 = {k: v.astype(np.float64) for k, v in sd.items()}
    se_names = se.get("se_names", ("se.fc1", "se.fc2"))
    want = torch_forward(sd64, arch, images, prefix, block_name, se_names)
    assert_logits_close(got, want)
    if case == "timm-resnet50-pth":
        # TF 'SAME' padding would not reproduce PyTorch at even sizes; NCHW pads alike.
        tf_model = build_model(arch, padding="tf")
        tf_model.set_weights(model.get_weights())
        assert np.abs(tf_model(images).numpy() - want).max() > 100 * TOL * np.abs(want).max()
        nchw = build_model(arch, data_format="NCHW", padding="symmetric")
        nchw.set_weights(model.get_weights())
        assert_logits_close(nchw(images).numpy(), want)


@pytest.fixture(scope="module")
def resnet50_sd():
    return torch_state_dict("resnet50", 1000, np.random.default_rng(4), _timm_block)


def _one_error(capsys, *argv):
    assert import_cli(*argv) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("import_weights: error: ") and "\n" not in err, captured
    return err


def test_leftover_missing_wrong_arch_and_full_output_are_one_line_errors(
    tmp_path, resnet50_sd, capsys
):
    extra = tmp_path / "extra.safetensors"
    write_safetensors(extra, {**resnet50_sd, "aux_head.weight": np.zeros((2, 2), np.float32)})
    err = _one_error(capsys, extra, "--arch", "resnet50", "--output", tmp_path / "o1")
    assert "leftover key aux_head.weight" in err

    missing = tmp_path / "missing.safetensors"
    write_safetensors(
        missing, {k: v for k, v in resnet50_sd.items() if k != "layer3.2.bn2.running_var"}
    )
    err = _one_error(capsys, missing, "--arch", "resnet50", "--output", tmp_path / "o2")
    assert "missing key layer3.2.bn2.running_var" in err

    good = tmp_path / "good.safetensors"
    write_safetensors(good, resnet50_sd)
    err = _one_error(capsys, good, "--arch", "resnext101-32x4d", "--output", tmp_path / "o3")
    assert "looks like a timm/torchvision resnet50 with 1000 classes, not resnext101-32x4d" in err

    err = _one_error(
        capsys, good, "--arch", "resnet50", "--num_classes", "10", "--output", tmp_path / "o4"
    )
    assert "resnet50 with 1000 classes, not 10" in err and "--finetune_checkpoint" in err

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    err = _one_error(capsys, good, "--arch", "resnet50", "--output", full)
    assert "not empty" in err and (full / "keep.txt").read_text() == "mine"
    # The same through the module entry point: exit 1, one line, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "utils.import_weights", str(good), "--arch", "resnet50",
         "--output", str(full)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "import_weights:" in line] == [err]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left


def test_bfloat16_safetensors_import_as_their_float32_values(tmp_path, resnet50_sd, images):
    rounded = to_bfloat16(resnet50_sd)
    assert any(not np.array_equal(rounded[k], v) for k, v in resnet50_sd.items())
    write_safetensors(tmp_path / "bf16.safetensors", resnet50_sd, bfloat16=True)
    write_safetensors(tmp_path / "f32.safetensors", rounded)
    for name in ("bf16", "f32"):
        src = tmp_path / f"{name}.safetensors"
        assert import_cli(src, "--arch", "resnet50", "--output", tmp_path / name) == 0
    got, _, _ = imported_logits(tmp_path / "bf16", images)
    want, _, _ = imported_logits(tmp_path / "f32", images)
    np.testing.assert_array_equal(got, want)


def test_damaged_safetensors_are_one_line_errors(tmp_path, resnet50_sd, capsys):
    good = tmp_path / "good.safetensors"
    write_safetensors(good, resnet50_sd)
    data = good.read_bytes()
    cases = {
        "cut.safetensors": (data[: len(data) - 100], "truncated or damaged"),
        "empty.safetensors": (b"", "bad header size"),
        "html.safetensors": (b"<html>" + b" " * 64, "bad header size"),
    }
    header_size = int.from_bytes(data[:8], "little")
    cases["json.safetensors"] = (data[:8] + b"[" * header_size + data[8 + header_size :], "JSON")
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        out = tmp_path / f"out-{name}"
        err = _one_error(capsys, tmp_path / name, "--arch", "resnet50", "--output", out)
        assert reason in err, err


@pytest.fixture(scope="module")
def ten_class_import(tmp_path_factory):
    """A random 10-class timm-style resnet50, imported: (its state_dict, the model dir)."""
    root = tmp_path_factory.mktemp("ten")
    sd = torch_state_dict("resnet50", 10, np.random.default_rng(5), _timm_block)
    write_pth(root / "r50.pth", sd)
    assert import_cli(root / "r50.pth", "--arch", "resnet50", "--output", root / "imported") == 0
    return sd, root / "imported"


def test_evaluate_and_predict_run_on_an_imported_checkpoint(
    ten_class_import, sample_data, tmp_path
):
    from runtime.predict import load_image

    sd, model_dir = ten_class_import
    common = ["--arch", "resnet50", "--num_classes", "10", "--model_dir", model_dir,
              "--image_size", "64", "--batch_size", "4"]  # fmt: skip
    proc = run_main("--mode", "evaluate", "--data_dir", sample_data,
                    "--results_dir", tmp_path / "eval", *common)  # fmt: skip
    assert "evaluating" in proc.stdout

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(6)
    for i in range(3):
        pixels = rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)
        (pictures / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    run_main("--mode", "predict", "--to_predict", pictures, "--results_dir", tmp_path / "pred",
             *common)  # fmt: skip
    predicted = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    files = sorted(pictures.iterdir())
    batch = np.stack([load_image(str(p), 64).numpy() for p in files])
    sd64 = {k: v.astype(np.float64) for k, v in sd.items()}
    want = np.argmax(torch_forward(sd64, "resnet50", batch, "", _timm_block), axis=1)
    got = {Path(e["file"]).name: e["top5"][0]["class"] for e in predicted}
    assert [got[p.name] for p in files] == want.tolist()


def test_finetune_from_an_imported_checkpoint_with_a_new_head(
    ten_class_import, sample_data, tmp_path
):
    _, model_dir = ten_class_import
    tuned = tmp_path / "tuned"
    proc = run_main(
        "--arch", "resnet50", "--mode", "train", "--data_dir", sample_data,
        "--batch_size", "4", "--num_iter", "1", "--iter_unit", "batch", "--image_size", "32",
        "--num_classes", "12", "--results_dir", tuned, "--finetune_checkpoint", model_dir,
    )  # fmt: skip
    assert "logits_dense keeps its fresh initialisation" in proc.stdout
    saved = json.loads((tuned / checkpoints.CONFIG_FILE).read_text())
    assert saved["num_classes"] == 12 and saved["padding"] == "symmetric"


def test_symmetric_padding_adds_only_weightless_layers():
    tf_model = build_model("resnet50", padding="tf")
    sym = build_model("resnet50", padding="symmetric")
    assert [w.name for w in tf_model.weights] == [w.name for w in sym.weights]
    assert not [layer.name for layer in tf_model.layers if layer.name.endswith("_pad")]
    padded = {layer.name for layer in sym.layers if layer.name.endswith("_pad")}
    # The stem and each stage's first strided 3x3; 1x1 shortcuts need no padding.
    assert padded == {"stem_pad"} | {f"stage{s}_block1_3x3_pad" for s in (2, 3, 4)}


def test_the_sidecar_decides_the_padding_and_without_the_key_it_is_tf(tmp_path):
    config = {"arch": "resnet50", "num_classes": 10}
    (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps(config))
    args = type("Args", (), {"model_dir": str(tmp_path), "finetune_checkpoint": None})()
    assert checkpoints.recorded_fields(args) == {"padding": "tf", "se_width": 0}
    (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps({**config, "padding": "symmetric"}))
    assert checkpoints.recorded_fields(args)["padding"] == "symmetric"
    args.model_dir = None
    assert checkpoints.recorded_fields(args)["padding"] == "tf"  # training from scratch


def test_the_sidecar_decides_the_se_width_of_every_mode(tmp_path):
    from utils.cmdline_helper import parse_cmdline

    sidecar = {"arch": "se-resnext101-32x4d", "num_classes": 1000, "padding": "symmetric"}
    (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps({**sidecar, "se_width": 16}))
    args = parse_cmdline(
        ["--mode", "predict", "--arch", "se-resnext101-32x4d", "--num_classes", "1000"]
        + ["--model_dir", str(tmp_path), "--to_predict", str(tmp_path), "--batch_size", "1"]
    )
    config = ModelConfig.from_args(args, **checkpoints.recorded_fields(args))
    assert config.se_width == 16 and config.describe().endswith("(SE width 16)")
    model = build(config)
    assert model.get_layer("stage4_block1_se_reduce").kernel.shape == (2048, 16)
    # NVIDIA PyTorch's SE-ResNeXt101: ResNeXt101's 44,177,704 + 2*C*16 + 16 + C per block.
    assert model.count_params() - _moving_stats(model) == 44_177_704 + 1_073_424
    with pytest.raises(ValueError, match="se_width needs an arch with SE"):
        ModelConfig(arch="resnet50", se_width=16)


def _moving_stats(model):
    return sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)


def test_se_gates_of_mixed_widths_are_refused_with_one_line(tmp_path, capsys):
    se = {"se_names": ("squeeze.squeeze", "squeeze.expand"), "se_width": 16}
    sd = torch_state_dict("se-resnext101-32x4d", 10, np.random.default_rng(5), _nvidia_block, **se)
    for name in ("squeeze.squeeze", "squeeze.expand"):  # one block squeezes to 8 instead
        weight, bias = (f"layers.2.5.{name}.{p}" for p in ("weight", "bias"))
        sd[weight] = sd[weight][:8] if name == "squeeze.squeeze" else sd[weight][:, :8]
        if name == "squeeze.squeeze":
            sd[bias] = sd[bias][:8]
    write_safetensors(tmp_path / "mixed.safetensors", sd)
    err = _one_error(
        capsys, tmp_path / "mixed.safetensors", "--arch", "se-resnext101-32x4d", "--output",
        tmp_path / "out",
    )  # fmt: skip
    assert "SE gates differ in width from block to block" in err


def test_a_checkpoint_of_another_padding_or_se_width_is_refused(tmp_path):
    from utils.core.errors import UserError

    saved = {"arch": "se-resnext101-32x4d", "num_classes": 10, "padding": "symmetric"}
    (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps({**saved, "se_width": 16}))
    config = ModelConfig(arch="se-resnext101-32x4d", num_classes=10)
    with pytest.raises(UserError, match="has symmetric padding, this model tf padding"):
        checkpoints.check_compatible(str(tmp_path), config)
    config = ModelConfig(arch="se-resnext101-32x4d", num_classes=10, padding="symmetric")
    with pytest.raises(UserError, match="has SE width 16, this model SE width by ratio"):
        checkpoints.check_compatible(str(tmp_path), config)
    checkpoints.check_compatible(str(tmp_path), ModelConfig(**saved, se_width=16))
