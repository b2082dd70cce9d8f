"""Where a user's script, log parser or serving client depends on the original's behaviour,
the port behaves the same (CPU, small images)."""

import argparse
import time

import numpy as np
import tensorflow as tf
from tensorflow.python.tools import saved_model_utils

from model import blocks
from runtime import environment, evaluation, inputs, runner
from runtime.export import export_saved_model
from runtime.training import LOG_WARMUP_STEPS, Trainer
from tests.support import logged, read_log, run_main
from utils.cmdline_helper import parse_cmdline
from utils.core.tf_compat import keras
from utils.distributed import SingleProcess

SMALL = ["--image_size", "32", "--synthetic_data_size", "32", "--num_classes", "10"]
TRAIN_IMAGES, VALIDATION_IMAGES = 600, 200  # the sample data


def _args(**overrides):
    """main.py's defaults for --mode train, with `overrides`."""
    args = parse_cmdline(["--batch_size", "32", "--mode", "train"])
    vars(args).update(overrides)
    return args


# 1. --run_iter counts in --iter_unit; 11. the first line says what --seed costs.
def test_run_iter_counts_epochs_and_the_next_run_resumes(sample_data, tmp_path):
    common = [
        "--arch", "resnet50", "--mode", "train", "--data_dir", sample_data, "--batch_size",
        "32", "--iter_unit", "epoch", "--num_iter", "2", "--run_iter", "1", "--seed", "1",
        "--results_dir", str(tmp_path), *SMALL,
    ]  # fmt: skip
    per_epoch = TRAIN_IMAGES // 32
    first = run_main(*common)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{per_epoch}")
    assert "op determinism is on" in first.stdout.splitlines()[0]
    assert "costs speed on GPUs" in first.stdout.splitlines()[0]
    run_main(*common)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{2 * per_epoch}")


# 2. --iter_unit batch on real data: the decay spans 90 epochs, steps_per_epoch from data.
def test_batch_unit_schedule_follows_the_original(sample_data):
    dist = SingleProcess()
    args = argparse.Namespace(
        data_dir=sample_data, batch_size=16, num_iter=50, iter_unit="batch", run_iter=-1
    )
    per_epoch = TRAIN_IMAGES // 16  # 37
    plan = inputs.plan_steps(args, dist)
    assert plan.total_steps == 50
    assert plan.steps_per_epoch == 50 / 2  # epochs = ceil(50 / 37) = 2
    assert plan.decay_steps == 90 * TRAIN_IMAGES // 16
    args.iter_unit = "epoch"
    plan = inputs.plan_steps(args, dist)
    assert (plan.steps_per_epoch, plan.total_steps, plan.decay_steps) == (
        per_epoch,
        per_epoch * 50,
        per_epoch * 50,
    )
    args.data_dir = None
    plan = inputs.plan_steps(args, dist)
    assert (plan.steps_per_epoch, plan.total_steps, plan.decay_steps) == (50, 50, 50)

    # The optimizer's cosine decay uses the decay steps, not the steps of this run.
    args = _args(
        data_dir=sample_data, batch_size=16, num_iter=50, iter_unit="batch", cosine_lr=True
    )
    args.lr_warmup_epochs = 0
    plan = inputs.plan_steps(args, dist)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    schedule, _ = runner._make_optimizer(args, dist, plan, model)
    assert schedule.total_steps == 90 * TRAIN_IMAGES // 16
    assert float(schedule(50)) > 0.99 * schedule.base_lr


# 3, 4, 10. evaluate / inference_benchmark: one path, --num_iter batches, original keys.
def test_evaluate_and_inference_benchmark_run_num_iter_batches(sample_data, trained_run, tmp_path):
    model_dir = trained_run["results"]  # the shared run of tests/conftest.py
    common = ["--arch", "resnet50", "--data_dir", sample_data, "--model_dir", str(model_dir)]
    # 20 batches of 16 are more than the 200 validation images: the data repeats.
    run_main(
        *common, "--mode", "evaluate", "--batch_size", "16", "--iter_unit", "batch",
        "--num_iter", "20", "--warmup_steps", "3", "--results_dir", str(tmp_path / "e"),
        *SMALL,
    )  # fmt: skip
    records = read_log(tmp_path / "e")
    assert logged(records, "eval_images") == [20 * 16]
    for key in ("top1_accuracy", "top5_accuracy", "eval_throughput", "eval_latency_p99"):
        assert logged(records, key), key

    export = tmp_path / "export"
    run_main(
        *common, "--mode", "inference_benchmark", "--batch_size", "32", "--iter_unit",
        "epoch", "--num_iter", "1", "--warmup_steps", "2", "--export_dir", str(export),
        "--results_dir", str(tmp_path / "i"), *SMALL,
    )  # fmt: skip
    records = read_log(tmp_path / "i")
    batches = VALIDATION_IMAGES // 32  # the short last batch is dropped
    assert logged(records, "eval_images") == [batches * 32]
    for key in ("eval_throughput", "eval_latency_avg", "eval_latency_p90", "eval_latency_p95"):
        assert logged(records, key), key
    assert logged(records, "top1_accuracy") and logged(records, "top5_accuracy")
    assert not [k for r in records for k in r.get("data", {}) if k.startswith("infer_")]
    assert "predict" in tf.saved_model.load(str(export / "1")).signatures


def test_timed_batches_leave_out_the_warmup_steps():
    assert evaluation.timed_batches([4] * 6, 2) == [2, 3, 4, 5]
    assert evaluation.timed_batches([4, 4, 4, 2], 0) == [0, 1, 2]
    assert evaluation.timed_batches([4, 4, 4, 2], 50) == [1, 2]  # too few: first only
    assert evaluation.timed_batches([4], 50) == [0]


def _slow(batches, batch_size, features, seconds):
    def gen():
        for i in range(batches):
            time.sleep(seconds)
            yield np.full((batch_size, features), i, np.float32), np.zeros(batch_size, np.int32)

    return gen()


# 5. Throughput and latency include waiting for the input.
def test_evaluation_latency_includes_the_input_wait():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    dataset = _slow(6, 2, 3, 0.05)
    result = evaluation.evaluate(model, dataset, SingleProcess(), False, warmup_steps=2, steps=5)
    assert result["eval_images"] == 10
    assert result["eval_latency_avg"] >= 50
    assert result["eval_throughput"] <= 2 / 0.05


class _Log:
    def __init__(self):
        self.lines = []

    def log(self, step, data):
        self.lines.append((step, data))


def _trainer(tmp_path, display_every=1, steps_per_epoch=100):
    args = _args(batch_size=2, display_every=display_every, results_dir=str(tmp_path), lr_init=0.01)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    dist = SingleProcess()
    plan = inputs.StepPlan(steps_per_epoch, 100, 100, 0)
    schedule, optimizer = runner._make_optimizer(args, dist, plan, model)
    logger = _Log()
    trainer = Trainer(model, optimizer, schedule, dist, logger, args, plan)
    return trainer, logger


def _targets(images, labels, step):
    del step
    return images, tf.one_hot(labels, 4)


def test_training_throughput_includes_the_input_wait_and_logs_skip_20_steps(tmp_path):
    trainer, logger = _trainer(tmp_path)
    result = trainer.run(_slow(6, 2, 3, 0.05), _targets, 6, benchmark_warmup=1)
    assert result["train_throughput"] <= 2 / 0.05
    assert result["train_compute_throughput"] > result["train_throughput"]

    trainer, logger = _trainer(tmp_path, steps_per_epoch=10)
    steps = LOG_WARMUP_STEPS + 3
    trainer.run(_slow(steps, 2, 3, 0.0), _targets, steps)
    logged_steps = [step[1] for step, data in logger.lines if "imgs_per_sec" in data]
    assert logged_steps == list(range(LOG_WARMUP_STEPS + 1, steps + 1))
    # The original's line at the end of every epoch, from the start: step [epoch].
    epochs = [step for step, data in logger.lines if len(step) == 1]
    assert epochs == [(0,), (1,)]
    assert set(logger.lines[0][1]) == {"cross_entropy", "l2_loss", "total_loss", "learning_rate"}


# 6. The export has the original's signatures, input key and output dtypes.
def test_export_signature_is_the_originals(tmp_path):
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)]
    )
    path = export_saved_model(model, str(tmp_path / "export"), image_size=8)
    meta = saved_model_utils.get_meta_graph_def(path, "serve")
    for name in ("serving_default", "predict"):
        signature = meta.signature_def[name]
        assert list(signature.inputs) == ["input"]
        assert signature.outputs["classes"].dtype == tf.int32.as_datatype_enum
        assert signature.outputs["probabilities"].dtype == tf.float32.as_datatype_enum
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(input=tf.zeros([2, 8, 8, 3]))
    assert out["classes"].dtype == tf.int32 and out["probabilities"].shape == (2, 5)


# 7. SE gates use variance scaling 1.0 / fan_in / truncated normal whatever --weight_init.
def test_se_gates_use_the_originals_initializer():
    factory = blocks.LayerFactory(weight_init="fan_out")
    x = keras.Input((4, 4, 32))
    out = blocks.squeeze_excitation(x, factory, hidden=2, name="se")  # 32 channels / 16
    model = keras.Model(x, out)
    for name in ("se_reduce", "se_expand"):
        config = model.get_layer(name).kernel_initializer.get_config()
        assert (config["scale"], config["mode"], config["distribution"]) == (
            1.0,
            "fan_in",
            "truncated_normal",
        )


# 8. Every flag of the original's parser parses (RECIPE section 9's list).
ORIGINAL_PARSER_FLAGS = [
    "--data_dir", "/d", "--data_idx_dir", "/i", "--dali", "--synthetic_data_size", "64",
    "--lr_init", "0.2", "--lr_warmup_epochs", "2", "--weight_decay", "1e-4", "--weight_init",
    "fan_in", "--momentum", "0.875", "--label_smoothing", "0.1", "--mixup", "0.2",
    "--cosine_lr", "--use_cosine", "--use_cosine_lr--cosine", "--xla", "--use_xla",
    "--data_format", "NHWC", "--amp", "--use_tf_amp", "--cpu", "--static_loss_scale", "64",
    "--loss_scale", "128", "--use_static_loss_scaling", "--arch", "resnext101-32x4d", "--mode",
    "train", "--export_dir", "/e", "--batch_size", "8", "--num_iter", "2", "--run_iter", "1",
    "--iter_unit", "epoch", "--warmup_steps", "10", "--model_dir", "/m", "--results_dir", "/r",
    "--log_filename", "l.json", "--display_every", "5", "--seed", "1",
    "--gpu_memory_fraction", "0.5", "--gpu_id", "0", "--finetune_checkpoint", "/f",
    "--use_final_conv", "--quant_delay", "3", "--quantize", "--use_qdq", "--symmetric",
]  # fmt: skip


def test_every_flag_of_the_original_parser_parses():
    args = parse_cmdline(ORIGINAL_PARSER_FLAGS)
    assert args.cpu and args.cosine_lr and args.amp and args.xla
    assert args.static_loss_scale == 128 and args.use_static_loss_scaling
    assert parse_cmdline(
        ["--batch_size", "1", "--mode", "train", "--use_cosine_lr--cosine"]
    ).cosine_lr


def test_cpu_hides_the_gpus(monkeypatch):
    hidden = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: ["GPU:0"])
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda d, kind: hidden.append(d))
    environment.configure_devices(SingleProcess(), 0, cpu=True)
    assert hidden == [[]]


# 9. --static_loss_scale without --amp: ignored with a warning, as the original ignored it.
def test_static_loss_scale_without_amp_warns(capsys):
    args = parse_cmdline(["--batch_size", "8", "--mode", "train", "--static_loss_scale", "128"])
    assert not args.amp
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no effect without --amp" in err[0]


# 10. --xla compiles predict's function.
def test_predict_honours_xla(monkeypatch, tmp_path):
    from runtime import predict as predict_module

    seen = []

    def fake(model, xla):
        seen.append(xla)
        return lambda images: tf.zeros([images.shape[0], 3])

    monkeypatch.setattr(predict_module, "make_predict_fn", fake)
    image = tmp_path / "a.png"
    tf.io.write_file(str(image), tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)))
    predict_module.predict(None, [str(image)], 8, 1, 3, xla=True)
    assert seen == [True]
