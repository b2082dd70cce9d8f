"""--amp --amp_dtype bfloat16: training close to float32, float32 weights, logits and
checkpoints, float32 export, QAT; the default dtype per device and its warnings (CPU,
ResNeXt101-32x4d at 32 px, batch 4, 10 classes)."""

import numpy as np
import pytest
import tensorflow as tf

from model import build_model
from model import quantization as qat
from model.layers import grouped_conv
from runtime import environment
from runtime.export import export_saved_model
from runtime.training import make_train_step
from utils import precision
from utils.cmdline_helper import parse_cmdline
from utils.core import cpu_features
from utils.core.tf_compat import keras
from utils.distributed import SingleProcess
from utils.optimizers import build_optimizer

# Its module-scoped fixtures are built once: pytest-xdist runs the whole file on one worker.
pytestmark = pytest.mark.xdist_group("bfloat16")

SIZE, CLASSES, BATCH = 32, 10, 4
# A freshly initialised deep net with batch statistics (training=True) is chaotic: any
# rounding difference, float32's own included, grows until the logits are unrelated (relative
# difference 0.4-0.9 measured here). Scaling each residual branch's last batch-norm gamma by
# RESIDUAL_GAMMA (as zero-init-residual recipes do) makes it well conditioned; the
# bfloat16 and float32 cross-entropies of one batch then differed by 1.4% (logits by 7%,
# bfloat16 keeps 8 significant bits): the bound leaves 3x margin.
RESIDUAL_GAMMA = 0.1
LOSS_RTOL = 0.05


def build(policy, arch="resnext101-32x4d"):
    keras.mixed_precision.set_global_policy(policy)
    try:
        return build_model(arch, num_classes=CLASSES, image_size=SIZE, weight_init="fan_in")
    finally:
        keras.mixed_precision.set_global_policy("float32")


def batch():
    images = tf.random.stateless_uniform([BATCH, SIZE, SIZE, 3], [3, 1], 0.0, 255.0)
    return images, tf.one_hot([0, 1, 2, 3], CLASSES)


def train_one_step(model, loss_scaled=False):
    optimizer = build_optimizer(0.01, 0.9, loss_scaled, -1)
    step = make_train_step(model, optimizer, SingleProcess(), 1e-4, loss_scaled, xla=False)
    return [float(v) for v in step(*batch())]


@pytest.fixture(scope="module")
def trained():
    """The same initial weights trained one step in float32 and in mixed_bfloat16."""
    keras.utils.set_random_seed(0)
    fp32 = build("float32")
    for layer in fp32.layers:
        if layer.name.endswith("_1x1_expand_bn"):
            layer.gamma.assign(layer.gamma * RESIDUAL_GAMMA)
    bf16 = build("mixed_bfloat16")
    bf16.set_weights(fp32.get_weights())
    x = batch()[0]
    logits = bf16(x, training=False)
    losses = {"float32": train_one_step(fp32), "bfloat16": train_one_step(bf16)}
    return {"fp32": fp32, "bf16": bf16, "losses": losses, "logits": logits}


def test_bfloat16_step_is_close_to_float32_with_float32_state(trained):
    got, want = trained["losses"]["bfloat16"], trained["losses"]["float32"]
    print(f"losses (cross-entropy, L2, total): bfloat16 {got}, float32 {want}")
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=LOSS_RTOL)  # cross-entropy, L2, total
    assert trained["logits"].dtype == tf.float32
    bf16 = trained["bf16"]
    assert all(v.dtype == tf.float32 for v in bf16.variables if v.dtype.is_floating)
    assert all(np.all(np.isfinite(v.numpy())) for v in bf16.variables if v.dtype.is_floating)
    convs = [layer for layer in bf16.layers if isinstance(layer, grouped_conv.GroupedConv2D)]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
    # The grouped conv's CPU path runs bfloat16 as one native oneDNN call, not the split.
    assert grouped_conv.native_grads_supported("bfloat16")


@pytest.mark.parametrize(("source", "target"), [("bf16", "float32"), ("fp32", "mixed_bfloat16")])
def test_checkpoints_restore_across_float32_and_bfloat16(trained, tmp_path, source, target):
    model = trained[source]
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    other = build(target)
    tf.train.Checkpoint(model=other).restore(path).assert_existing_objects_matched()
    for got, want in zip(other.variables, model.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_bfloat16_export_takes_and_returns_float32(trained, tmp_path):
    path = export_saved_model(trained["bf16"], str(tmp_path / "export"), image_size=SIZE)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.dtype == tf.float32
    out = serve(input=batch()[0])
    assert out["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_qat_trains_under_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(1)
        model = qat.quantize_model(build_model("resnet50", num_classes=CLASSES, image_size=SIZE))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    losses = train_one_step(model)
    assert np.all(np.isfinite(losses))
    assert all(v.dtype == tf.float32 for v in model.variables if v.dtype.is_floating)


@pytest.mark.parametrize(
    ("on_gpu", "cpu_bf16", "want", "warns"),
    [
        (True, False, "float16", False),
        (False, True, "bfloat16", False),
        (False, False, "float16", True),
    ],
    ids=["gpu", "bf16-cpu", "other-cpu"],
)
def test_default_amp_dtype(on_gpu, cpu_bf16, want, warns):
    dtype, warnings = precision.choose_dtype(None, on_gpu, cpu_bf16, (8, 0) if on_gpu else None)
    assert dtype == want and bool(warnings) == warns
    if warns:
        assert "slower than float32" in warnings[0] and "bfloat16 instructions" in warnings[0]


def test_explicit_dtypes_and_their_warnings():
    assert precision.choose_dtype("bfloat16", True, False, (9, 0)) == ("bfloat16", [])
    assert "8.0" in precision.choose_dtype("bfloat16", True, False, (7, 0))[1][0]
    assert "--amp_dtype bfloat16" in precision.choose_dtype("float16", False, True)[1][0]
    assert "emulated" in precision.choose_dtype("bfloat16", False, False)[1][0]
    assert precision.static_scale_warning("bfloat16", 128).count("\n") == 0
    assert precision.static_scale_warning("float16", 128) is None
    assert precision.static_scale_warning("bfloat16", -1) is None


@pytest.mark.parametrize(("has_bf16", "want"), [(False, "mixed_float16"), (True, "mixed_bfloat16")])
def test_amp_on_a_cpu_picks_the_policy_and_warns_once(monkeypatch, capsys, has_bf16, want):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: has_bf16)
    try:
        chosen = environment.configure_precision(True, None, static_loss_scale=8)
        assert keras.mixed_precision.global_policy().name == want
    finally:
        keras.mixed_precision.set_global_policy("float32")
    err = capsys.readouterr().err.splitlines()
    if has_bf16:
        assert chosen == "bfloat16" and len(err) == 1 and "no effect" in err[0]
    else:
        assert chosen == "float16" and len(err) == 1 and "slower than float32" in err[0]


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16\n")
    assert cpu_features.native_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu_features.native_bf16(str(info))
    assert not cpu_features.native_bf16(str(tmp_path / "missing"))


def test_amp_dtype_flag(capsys):
    args = parse_cmdline(
        ["--mode", "train", "--batch_size", "1", "--amp", "--amp_dtype", "bfloat16"]
    )
    assert args.amp_dtype == "bfloat16" and precision.loss_scaling(args) is False
    assert precision.loss_scaling(parse_cmdline(["--mode", "train", "--batch_size", "1", "--amp"]))
    with pytest.raises(SystemExit) as exit_info:
        parse_cmdline(["--mode", "train", "--batch_size", "1", "--amp_dtype", "bfloat16"])
    assert exit_info.value.code == 2
    assert "only applies with --amp" in capsys.readouterr().err
