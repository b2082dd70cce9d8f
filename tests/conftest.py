"""Fixtures shared by the test files, each built once per test session (across pytest-xdist
workers too): the real sample dataset and one short trained run that evaluation, export,
predict and QAT tests start from. And the check that no test leaves process-wide state
behind (tests/process_state.py)."""

import fcntl
import os
import shutil

import pytest

from tests import process_state
from utils.tools.sample_data import ensure_sample_data


def build_once(tmp_path_factory, name, build):
    """The folder `name`, made by `build(folder)` once per test session: the first pytest-xdist
    worker to ask builds it under a lock, the others wait and reuse it. A build that fails
    leaves no folder, so the next test to ask tries again (and fails with its error)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    target = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            staging = root / f"{name}.building"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            build(staging)
            staging.rename(target)
    return target


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """The sample dataset's TFRecord folder (600 + 200 real 64x64 images, 10 classes),
    built through the converter on first use and cached in .cache/."""
    made = build_once(
        tmp_path_factory,
        "sample_data",
        lambda folder: (folder / "path").write_text(ensure_sample_data()),
    )
    return (made / "path").read_text()


# The run `trained_run` makes: resnet50 learning the sample data at 32 px (as make demo does
# for ResNeXt101), then the evaluation after training and a SavedModel export.
TRAINED_ARGS = [
    "--arch", "resnet50", "--mode", "train_and_evaluate", "--batch_size", "16",
    "--num_iter", "4", "--iter_unit", "epoch", "--lr_init", "0.1", "--lr_warmup_epochs", "1",
    "--cosine_lr", "--label_smoothing", "0.1", "--weight_init", "fan_in",
    "--display_every", "5", "--seed", "1", "--image_size", "32", "--synthetic_data_size",
    "32", "--num_classes", "10",
]  # fmt: skip


@pytest.fixture(scope="session")
def trained_run(sample_data, tmp_path_factory):
    """One short trained run for every test that needs a trained checkpoint: a dict with
    `results` (its model_dir: checkpoints, model_config.json, log.json), `export` (the
    SavedModel folder, version 1 inside), `stdout` and `top1`. Read-only: a test that
    changes the files works on a copy."""
    from tests.support import logged_values, run_main

    def train(folder):
        proc = run_main(
            *TRAINED_ARGS, "--data_dir", sample_data, "--results_dir", folder / "results",
            "--export_dir", folder / "export",
        )  # fmt: skip
        (folder / "stdout.txt").write_text(proc.stdout)

    made = build_once(tmp_path_factory, "trained_run", train)
    results = made / "results"
    return {
        "results": results,
        "export": made / "export",
        "stdout": (made / "stdout.txt").read_text(),
        "top1": logged_values(results, "top1_accuracy")[-1],
    }


@pytest.fixture(scope="session")
def built_model():
    """`built_model(arch, **options)`: model.build_model's model, built once per session for
    each set of options. Read-only: a test that trains or changes weights builds its own."""
    from model import build_model

    models = {}

    def get(arch, **options):
        key = (arch, tuple(sorted(options.items())))
        if key not in models:
            models[key] = build_model(arch, **options)
        return models[key]

    return get


@pytest.fixture(autouse=True)
def no_leaked_process_state():
    """Fails a test that changed an environment variable, a signal handler, the Keras
    policy, op determinism, the root logger, stdout/stderr or the working directory without
    putting it back (monkeypatch's undo runs before this check), then puts it back so the
    next test starts clean. The seeds are put back after every test."""
    before, randomness = process_state.snapshot(), process_state.random_states()
    yield
    leaked = process_state.leaks(before, process_state.snapshot())
    process_state.restore_seeds(before, randomness)
    if leaked:
        process_state.restore(before)
        pytest.fail("the test left process-wide state behind: " + "; ".join(leaked))


def pytest_configure(config):
    """One intra-op thread per pytest-xdist worker: two workers on two cores, not four
    threads fighting for them (set before TensorFlow starts its thread pools)."""
    del config
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
