"""End-to-end modes of main.py on the real sample data and on synthetic data (CPU, small)."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.support import logged, read_log, run_main

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--image_size", "32", "--synthetic_data_size", "32", "--num_classes", "10"]


def test_train_and_evaluate_learns_the_sample_data_and_exports(sample_data, trained_run, tmp_path):
    # The shared run (tests/conftest.py: resnet50, 4 epochs at 32 px, --export_dir).
    results, export = trained_run["results"], trained_run["export"]
    records = read_log(results)
    ce = logged(records, "cross_entropy")
    assert len(ce) >= 20
    assert np.mean(ce[-5:]) < np.mean(ce[:5]) - 0.5, ce
    top1 = logged(records, "top1_accuracy")[-1]
    assert top1 > 0.3, f"top-1 {top1} is not clearly above chance (0.1)"
    for key in ("top5_accuracy", "eval_throughput", "eval_latency_p99", "learning_rate"):
        assert logged(records, key), key
    assert any(r.get("step") == "PARAMETER" for r in records)

    # The export takes raw pixels and agrees with the checkpointed model.
    loaded = tf.saved_model.load(str(export / "1"))  # TF Serving layout: version 1
    serve = loaded.signatures["serving_default"]
    assert serve.structured_input_signature[1]["input"].shape.as_list() == [None, 32, 32, 3]
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    outputs = serve(input=tf.constant(images))
    from model import ModelConfig, build_model
    from runtime.checkpoints import restore_model_only

    model = build_model("resnet50", num_classes=10, weight_init="fan_in")
    restore_model_only(model, str(results), ModelConfig(arch="resnet50", num_classes=10))
    expected = tf.nn.softmax(model(images, training=False)).numpy()
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(outputs["classes"].numpy(), expected.argmax(1))

    # evaluate mode on the saved checkpoint reproduces the in-run accuracy.
    eval_results = tmp_path / "eval"
    run_main(
        "--arch", "resnet50", "--mode", "evaluate", "--data_dir", sample_data,
        "--batch_size", "7", "--model_dir", str(results), "--results_dir", str(eval_results),
        *SMALL,
    )  # fmt: skip
    eval_records = read_log(eval_results)
    assert logged(eval_records, "top1_accuracy")[-1] == pytest.approx(top1)
    assert logged(eval_records, "eval_images")[-1] == logged(records, "eval_images")[-1]

    # predict on a directory of images writes one entry per image.
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for i in range(3):
        tf.io.write_file(
            str(images_dir / f"img{i}.jpg"),
            tf.io.encode_jpeg(tf.constant(images[i].astype(np.uint8))),
        )
    (images_dir / "notes.txt").write_text("not an image")
    predict_results = tmp_path / "predict"
    proc = run_main(
        "--arch", "resnet50", "--mode", "predict", "--to_predict", str(images_dir),
        "--batch_size", "2", "--model_dir", str(results), "--results_dir", str(predict_results),
        *SMALL,
    )  # fmt: skip
    predictions = json.loads((predict_results / "predictions.json").read_text())
    assert [Path(p["file"]).name for p in predictions] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert all(len(p["top5"]) == 5 for p in predictions)
    assert all(abs(sum(t["probability"] for t in p["top5"]) - 1) < 0.5 for p in predictions)
    assert "img2.jpg: class" in proc.stdout
    assert logged(read_log(predict_results), "predicted_images") == [3]


def _final_weights(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    names = sorted(
        n
        for n in reader.get_variable_to_shape_map()
        if n.startswith("model/") and "OPTIMIZER" not in n
    )
    return {n: reader.get_tensor(n) for n in names}


def test_stopped_and_resumed_run_ends_with_the_same_weights(sample_data, tmp_path):
    common = [
        "--arch", "resnext101-32x4d", "--mode", "train", "--data_dir", sample_data,
        "--batch_size", "8", "--num_iter", "6", "--iter_unit", "batch", "--seed", "3",
        "--mixup", "0.2", "--label_smoothing", "0.1", "--display_every", "2",
        "--lr_warmup_epochs", "0", *SMALL,
    ]  # fmt: skip
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    run_main(*common, "--results_dir", str(whole))
    run_main(*common, "--results_dir", str(halves), "--run_iter", "3")
    assert tf.train.latest_checkpoint(str(halves)).endswith("ckpt-3")
    run_main(*common, "--results_dir", str(halves))
    assert tf.train.latest_checkpoint(str(halves)).endswith("ckpt-6")
    a, b = _final_weights(whole), _final_weights(halves)
    assert a.keys() == b.keys() and len(a) > 100
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_sigterm_stops_training_with_a_loadable_checkpoint(sample_data, tmp_path):
    results = tmp_path / "results"
    argv = [
        sys.executable, str(REPO / "main.py"), "--arch", "resnet50", "--mode", "train",
        "--data_dir", sample_data, "--batch_size", "8", "--num_iter", "100000",
        "--iter_unit", "batch", "--display_every", "1", "--results_dir", str(results), *SMALL,
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    deadline = time.time() + 300
    for line in proc.stdout:  # the first logged step: the first 20 are not logged
        if "step 21 " in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in out
    latest = tf.train.latest_checkpoint(str(results))
    assert latest is not None
    step = int(latest.rsplit("-", 1)[1])
    assert 21 <= step < 100000
    restored = _final_weights(results)
    assert restored


# float16 AMP runs slower than float32 on a CPU, so AMP is exercised on the smaller net.
@pytest.mark.parametrize(
    ("arch", "precision"),
    [
        ("resnext101-32x4d", []),
        ("resnet50", ["--amp", "--amp_dtype", "float16"]),
        ("resnet50", ["--amp", "--amp_dtype", "float16", "--static_loss_scale", "8"]),
        ("resnet50", ["--amp", "--amp_dtype", "bfloat16"]),
    ],
    ids=["fp32", "amp-dynamic", "amp-static", "amp-bf16"],
)
def test_training_benchmark_reports_throughput_with_finite_losses(tmp_path, arch, precision):
    proc = run_main(
        "--arch", arch, "--mode", "training_benchmark", "--batch_size", "4",
        "--num_iter", "4", "--warmup_steps", "1", "--iter_unit", "batch", "--weight_init",
        "fan_in", "--display_every", "1", "--results_dir", str(tmp_path), *precision, *SMALL,
    )  # fmt: skip
    records = read_log(tmp_path)
    # As the original, the first 20 steps have no log lines (a benchmark still checks the
    # loss and warns about a non-finite one); the one epoch (4 synthetic steps) ends with
    # a losses line.
    epoch_lines = [r for r in records if r["type"] == "LOG" and "total_loss" in r["data"]]
    assert [r["step"] for r in epoch_lines] == [[0]]
    assert np.isfinite(epoch_lines[0]["data"]["total_loss"])
    assert "loss at step" not in proc.stderr, proc.stderr
    assert logged(records, "train_throughput")[0] > 0
    assert logged(records, "train_compute_throughput")[0] > 0
    assert not list(tmp_path.glob("ckpt-*")), "benchmarks must not write checkpoints"


def test_inference_benchmark_reports_latency_percentiles(tmp_path):
    run_main(
        "--arch", "se-resnext101-32x4d", "--mode", "inference_benchmark", "--batch_size", "2",
        "--num_iter", "6", "--warmup_steps", "2", "--iter_unit", "batch",
        "--results_dir", str(tmp_path), *SMALL,
    )  # fmt: skip
    records = read_log(tmp_path)
    p90, p95, p99 = (logged(records, f"eval_latency_{p}")[0] for p in ("p90", "p95", "p99"))
    assert 0 < p90 <= p95 <= p99
    assert logged(records, "eval_throughput")[0] > 0
    assert logged(records, "eval_images") == [6 * 2]
    assert not logged(records, "top1_accuracy")  # synthetic data: no accuracy


def test_a_diverging_run_stops_with_one_line_and_keeps_no_nan_checkpoint(tmp_path):
    proc = run_main(
        "--arch", "resnet50", "--mode", "train", "--batch_size", "4", "--num_iter", "3",
        "--lr_init", "1e12", "--lr_warmup_epochs", "0", "--display_every", "1",
        "--results_dir", str(tmp_path), *SMALL, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "main.py: error: training diverged at step" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tf.train.latest_checkpoint(str(tmp_path)) is None


def test_a_diverging_benchmark_warns_and_still_measures(tmp_path):
    proc = run_main(
        "--arch", "resnet50", "--mode", "training_benchmark", "--batch_size", "4",
        "--num_iter", "4", "--warmup_steps", "1", "--lr_init", "1e12",
        "--lr_warmup_epochs", "0", "--display_every", "1", "--results_dir", str(tmp_path),
        *SMALL,
    )  # fmt: skip
    assert len(re.findall(r"warning: (nan|-?inf) loss at step", proc.stderr)) == 1, proc.stderr
    assert logged(read_log(tmp_path), "train_throughput")[-1] > 0


def test_user_errors_are_one_line_without_traceback(tmp_path, sample_data):
    cases = [
        (["--mode", "train", "--data_dir", str(tmp_path / "missing")], "missing"),
        (
            ["--mode", "evaluate", "--data_dir", sample_data, "--model_dir", str(tmp_path)],
            "checkpoint",
        ),
    ]
    for argv, word in cases:
        proc = run_main(
            "--batch_size", "4", "--results_dir", str(tmp_path / "results"), *argv, *SMALL,
            check=False,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("main.py: error:")]
        assert len(lines) == 1 and word in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_checkpoints_of_another_arch_are_refused_and_finetune_swaps_the_head(
    sample_data, trained_run, tmp_path
):
    source = trained_run["results"]  # resnet50, 10 classes (the shared run)
    proc = run_main(
        "--arch", "resnext101-32x4d", "--mode", "evaluate", "--data_dir", sample_data,
        "--batch_size", "4", "--model_dir", str(source), "--results_dir", str(tmp_path / "e"),
        *SMALL, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "main.py: error:" in proc.stderr and "resnet50" in proc.stderr

    tuned = tmp_path / "tuned"
    proc = run_main(
        "--arch", "resnet50", "--mode", "train", "--data_dir", sample_data, "--batch_size", "4",
        "--num_iter", "1", "--iter_unit", "batch", "--results_dir", str(tuned),
        "--finetune_checkpoint", str(source), "--image_size", "32", "--num_classes", "12",
    )  # fmt: skip
    assert "logits_dense keeps its fresh initialisation" in proc.stdout
    before = _final_weights(source)
    after = _final_weights(tuned)
    # Warmup makes the first step's learning rate 0: the copied body is unchanged.
    stem = "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert before[stem].shape == (7, 7, 3, 64)
    np.testing.assert_array_equal(after[stem], before[stem])
    head_shapes = {a.shape for n, a in after.items() if a.ndim == 2}
    assert (2048, 12) in head_shapes
