"""Quantization-aware training through main.py: fine-tuning a float checkpoint into a QAT
model, evaluating and exporting it, refusing float/QAT mix-ups, AMP with QDQ ops (CPU,
32 px, 10 classes)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from model import ModelConfig, build, build_model
from model import quantization as qat
from model.weights import copy_float_weights
from runtime import checkpoints
from tests.support import FAKE_QUANT_OPS, QDQ_OPS, reachable_op_types, run_main
from tests.support import logged_values as logged
from utils import data_utils
from utils.cmdline_helper import parse_cmdline
from utils.core.tf_compat import keras

# Its module-scoped fixtures are built once: pytest-xdist runs the whole file on one worker.
pytestmark = pytest.mark.xdist_group("qat_runtime")

SMALL = ["--image_size", "32", "--synthetic_data_size", "32", "--num_classes", "10"]
QAT_EPOCHS = 2


def checkpoint_value(model_dir, name):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    return int(reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))


def main_in_process(argv):
    """main.py's main(argv) in this process: (exit code, the stderr lines starting with
    `main.py: error:`)."""
    proc = run_main(*argv, *SMALL, check=False)
    assert "Traceback" not in proc.stderr
    return proc.returncode, [
        line for line in proc.stderr.splitlines() if line.startswith("main.py: error:")
    ]


@pytest.fixture(scope="module")
def float_run(trained_run):
    """A float resnet50 trained on the sample data (the shared run of tests/conftest.py,
    as test_runtime's): its dir and top-1."""
    return trained_run["results"], trained_run["top1"]


QAT_FLAGS = ["--arch", "resnet50", "--quantize", *SMALL]


@pytest.fixture(scope="module")
def qat_run(sample_data, float_run, tmp_path_factory):
    """QAT fine-tuned from the float run: its results dir and SavedModel."""
    results = tmp_path_factory.mktemp("qat")
    export = results / "export"
    run_main(
        *QAT_FLAGS, "--mode", "train", "--data_dir", sample_data, "--batch_size", "16",
        "--num_iter", str(QAT_EPOCHS), "--quant_delay", "5", "--finetune_checkpoint",
        str(float_run[0]), "--lr_init", "0.016", "--lr_warmup_epochs", "0", "--cosine_lr",
        "--label_smoothing", "0.1", "--weight_init", "fan_in", "--display_every", "10",
        "--seed", "1", "--results_dir", str(results), "--export_dir", str(export),
    )  # fmt: skip
    return results, export


def restored_qat_model(model_dir):
    """The QAT model main.py builds for `--quantize`, restored from `model_dir`."""
    args = parse_cmdline([*QAT_FLAGS, "--mode", "train", "--batch_size", "4"])
    config = ModelConfig.from_args(args)
    model = build(config)
    checkpoints.restore_model_only(model, str(model_dir), config)
    return model


def test_qat_fine_tuned_from_float_keeps_the_float_accuracy(sample_data, float_run, qat_run):
    float_top1, qat_dir = float_run[1], qat_run[0]
    assert float_top1 > 0.5, f"float top-1 {float_top1} is not clearly above chance (0.1)"
    steps = QAT_EPOCHS * (600 // 16)
    # The quantizers saw the optimizer's step: quantized from step 5 on, to the last step.
    assert checkpoint_value(qat_dir, "optimizer/_iterations") == steps
    assert checkpoint_value(qat_dir, "model/quant_step") == steps - 1
    assert np.all(np.isfinite(logged(qat_dir, "cross_entropy")))

    # --mode evaluate --quantize builds the QAT model and reads the QAT checkpoint.
    eval_dir = qat_dir / "eval"
    run_main(
        *QAT_FLAGS, "--mode", "evaluate", "--data_dir", sample_data, "--batch_size", "25",
        "--model_dir", str(qat_dir), "--results_dir", str(eval_dir),
    )  # fmt: skip
    qat_top1 = logged(eval_dir, "top1_accuracy")[-1]
    assert abs(qat_top1 - float_top1) <= 0.05, (float_top1, qat_top1)

    # Quantization alone costs little: the same weights and BN statistics run unquantized.
    model = restored_qat_model(qat_dir)
    float_copy = build_model("resnet50", num_classes=10)
    copy_float_weights(model, float_copy)
    dataset = data_utils.eval_dataset(sample_data, 50, 32)
    labels = np.concatenate([batch_labels.numpy() for _, batch_labels in dataset])
    logits = {}
    for name, net in (("qat", model), ("float", float_copy)):
        forward = tf.function(lambda x, net=net: net(x, training=False))
        logits[name] = np.concatenate([forward(images) for images, _ in dataset])
    quantized, unquantized = (np.argmax(logits[name], axis=1) for name in ("qat", "float"))
    agree = np.mean(quantized == unquantized)
    print(
        f"top-1: float run {float_top1:.3f}, QAT {qat_top1:.3f}, QAT weights unquantized "
        f"{np.mean(unquantized == labels):.3f}, same top-1 class {agree:.3f}"
    )
    assert np.mean(quantized == labels) == pytest.approx(qat_top1)
    assert np.max(np.abs(logits["qat"] - logits["float"])) > 1e-2  # the quantizers ran
    assert agree >= 0.9
    assert abs(np.mean(quantized == labels) - np.mean(unquantized == labels)) <= 0.03


def test_the_exported_qat_model_holds_fake_quant_ops_and_reproduces_predictions(qat_run):
    qat_dir, export = qat_run
    serve = tf.saved_model.load(str(export / "1")).signatures["serving_default"]
    ops = reachable_op_types(serve.graph.as_graph_def())
    assert ops >= FAKE_QUANT_OPS and not ops & QDQ_OPS
    model = restored_qat_model(qat_dir)
    images = tf.random.stateless_uniform([6, 32, 32, 3], [0, 1], 0.0, 255.0)
    got = serve(input=images)
    # As graphs both (eager float rounding may flip a fake-quant rounding step).
    want = tf.nn.softmax(tf.function(lambda x: model(x, training=False))(images)).numpy()
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
    np.testing.assert_array_equal(got["classes"], want.argmax(1))
    # Not vacuous: the restored input ranges are the trained ones, not the initial +-6.
    assert float(qat.qat_layers(model)[0].input_range()[1]) != qat.INIT_RANGE


def test_float_and_qat_checkpoints_are_not_mixed_up(sample_data, float_run, qat_run):
    float_dir, qat_dir = float_run[0], qat_run[0]
    common = ["--data_dir", sample_data, "--batch_size", "4", "--results_dir"]
    cases = [
        # Resuming the QAT run as a float one, and the float run as a QAT one.
        (["--mode", "train", "--model_dir", str(qat_dir)], "trained with --quantize"),
        (
            ["--mode", "train", "--quantize", "--model_dir", str(float_dir)],
            "--finetune_checkpoint",
        ),
        (["--mode", "evaluate", "--model_dir", str(qat_dir)], "add --quantize"),
        (
            ["--mode", "evaluate", "--quantize", "--use_qdq", "--model_dir", str(qat_dir)],
            "drop --use_qdq",
        ),
    ]
    latest = [tf.train.latest_checkpoint(str(d)) for d in (float_dir, qat_dir)]
    for argv, words in cases:
        code, lines = main_in_process([*common, str(qat_dir / "refused"), *argv])
        assert code == 1 and len(lines) == 1 and words in lines[0], (argv, lines)
    assert [tf.train.latest_checkpoint(str(d)) for d in (float_dir, qat_dir)] == latest


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--mode", "train", "--use_qdq"], "--quantize"),
        (["--mode", "train", "--quant_delay", "5"], "--quantize"),
        (
            ["--mode", "evaluate", "--data_dir", "/d", "--quantize", "--quant_delay", "5"],
            "--quant_delay",
        ),
    ],
)
def test_quantization_flags_without_their_purpose_exit_2(argv, flag):
    code, lines = main_in_process(["--batch_size", "4", *argv])
    assert code == 2 and len(lines) == 1 and flag in lines[0], lines


def test_qat_with_amp_and_qdq_trains_and_exports_qdq_ops(tmp_path):
    export = tmp_path / "export"
    run_main(
        *QAT_FLAGS, "--symmetric", "--use_qdq", "--amp", "--quant_delay", "2", "--mode",
        "train", "--batch_size", "4", "--num_iter", "4", "--iter_unit", "batch",
        "--weight_init", "fan_in", "--display_every", "1", "--results_dir", str(tmp_path),
        "--export_dir", str(export),
    )  # fmt: skip
    # The first 20 steps have no log lines (as the original); the one epoch (4 synthetic
    # steps) ends with a losses line.
    losses = logged(tmp_path, "total_loss")
    assert len(losses) == 1 and np.all(np.isfinite(losses)), losses
    # The LossScaleOptimizer's step counter reached the quantizers.
    assert checkpoint_value(tmp_path, "optimizer/_iterations") == 4
    assert checkpoint_value(tmp_path, "model/quant_step") == 3
    config = json.loads((tmp_path / "model_config.json").read_text())
    assert config["quantize"] and config["symmetric"] and config["use_qdq"]
    serve = tf.saved_model.load(str(export / "1")).signatures["serving_default"]
    ops = reachable_op_types(serve.graph.as_graph_def())
    assert "QuantizeAndDequantizeV4" in ops and not ops & FAKE_QUANT_OPS
    out = serve(input=tf.random.stateless_uniform([2, 32, 32, 3], [1, 2], 0.0, 255.0))
    np.testing.assert_allclose(np.sum(out["probabilities"], axis=1), 1.0, rtol=1e-5)


def tiny_model(config):
    """A conv and a head named like the real ones; QAT when config.quantize."""
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(config.num_classes, name="logits_dense")(x))
    return qat.quantize_model(model) if config.quantize else model


def save_with_sidecar(model, directory, sidecar):
    tf.train.Checkpoint(model=model).save(str(directory / "ckpt"))
    if sidecar is not None:
        (directory / checkpoints.CONFIG_FILE).write_text(json.dumps(sidecar))


@pytest.mark.parametrize("source_kind", ["float", "qat", "float-legacy-sidecar"])
def test_finetune_copies_float_weights_across_float_and_qat(tmp_path, source_kind):
    base = {"arch": "resnet50", "num_classes": 3, "use_final_conv": False}
    float_config = {**base, "quantize": False, "symmetric": False, "use_qdq": False}
    source_config = {**float_config, "quantize": source_kind == "qat"}
    keras.utils.set_random_seed(4)
    source = tiny_model(ModelConfig(**source_config))
    sidecar = base if source_kind == "float-legacy-sidecar" else source_config
    save_with_sidecar(source, tmp_path, sidecar)
    # The target is the other kind, with another class count.
    target_config = {**float_config, "num_classes": 5, "quantize": source_kind != "qat"}
    target_config = ModelConfig(**target_config)
    target = tiny_model(target_config)
    messages = []
    checkpoints.load_finetune_weights(
        target, str(tmp_path), target_config, tiny_model, log=messages.append
    )
    conv = {m: m.get_layer("conv") for m in (source, target)}
    kernels = [getattr(layer, "layer", layer).kernel.numpy() for layer in conv.values()]
    np.testing.assert_array_equal(kernels[0], kernels[1])
    assert "logits_dense keeps its fresh initialisation" in messages[0]
    if qat.is_quantized(target):  # ranges and step are not copied: the QAT run's own
        assert int(target.quant_step) == 0
        assert float(qat.qat_layers(target)[0].input_range()[1]) == qat.INIT_RANGE
