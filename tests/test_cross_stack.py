"""Checkpoints cross the two stacks: a model trained with one stack's venv (classic: TF 2.15
+ tf.keras; current: TF 2.21 + tf_keras) evaluates with the other's, to the same top-1.

The venvs are found beside the running interpreter's (`.venv`, `.venv-classic`,
`.venv-current` in the directory holding sys.prefix, else in the repo root); the other
stack is the venv that is not sys.prefix and whose TensorFlow version differs. Skips,
printing why, where the other stack's venv is missing. About 1-2 min per direction on 2
cores. Top-1 of the same checkpoint on the same 200 images must agree exactly across the
stacks (the test reports the figures if they do not).
"""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, logged_values, run_main

# Its module-scoped fixtures are built once: pytest-xdist runs the whole file on one worker.
pytestmark = pytest.mark.xdist_group("cross_stack")

VENV_NAMES = (".venv", ".venv-classic", ".venv-current")
FLAGS = ("--arch", "resnet50", "--num_classes", "10", "--image_size", "32", "--batch_size", "8",
         "--num_iter", "3", "--iter_unit", "batch", "--seed", "1")  # fmt: skip


def _tf_version(python):
    probe = "import importlib.metadata as m; print(m.version('tensorflow'))"
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def other_python():
    """(python of the other stack's venv, its TensorFlow version), or (None, why not)."""
    here = Path(sys.prefix).resolve()
    mine = importlib.metadata.version("tensorflow")
    roots = [here.parent] if here.name in VENV_NAMES else []
    roots.append(REPO)
    for root in dict.fromkeys(roots):
        for name in VENV_NAMES:
            venv = (root / name).resolve()
            python = venv / "bin" / "python"
            if venv == here or not python.exists():
                continue
            version = _tf_version(python)
            if version and version.split(".")[:2] != mine.split(".")[:2]:
                return python, version
    searched = ", ".join(str(r / n) for r in dict.fromkeys(roots) for n in VENV_NAMES)
    return None, f"no venv of the other stack (not TensorFlow {mine}) in {searched}"


@pytest.fixture(scope="module")
def other():
    python, version = other_python()
    if python is None:
        print(f"test_cross_stack skipped: {version}")
        pytest.skip(version)
    return python, version


def _main(python, *argv):
    if python == Path(sys.executable):  # this stack's runs need no process of their own
        return run_main(*argv)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # Set in this process by utils.core.tf_compat on current; the classic venv (no
    # tf_keras) cannot import Keras with it, and each stack's main.py sets its own.
    for name in ("RNXT_DIST_BACKEND", "TF_USE_LEGACY_KERAS"):
        env.pop(name, None)
    command = [str(python), str(REPO / "main.py"), *map(str, argv)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900, env=env)
    assert proc.returncode == 0, f"{python} main.py failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def _top1(python, data, model_dir, results_dir):
    _main(python, "--mode", "evaluate", "--data_dir", data, *FLAGS,
          "--model_dir", model_dir, "--results_dir", results_dir)  # fmt: skip
    (top1,) = logged_values(results_dir, "top1_accuracy")
    return top1


@pytest.mark.parametrize("direction", ["other_to_here", "here_to_other"])
def test_checkpoint_evaluates_on_the_other_stack(direction, other, sample_data, tmp_path):
    other_py, other_tf = other
    here_py = Path(sys.executable)
    writer, reader = (other_py, here_py) if direction == "other_to_here" else (here_py, other_py)
    model_dir = tmp_path / "train"
    _main(writer, "--mode", "train", "--data_dir", sample_data, *FLAGS, "--results_dir", model_dir)
    by_writer = _top1(writer, sample_data, model_dir, tmp_path / "eval_writer")
    by_reader = _top1(reader, sample_data, model_dir, tmp_path / "eval_reader")
    print(f"{direction}: written by {writer} ({_tf_version(writer)}), top-1 {by_writer} there, "
          f"{by_reader} with {reader} ({_tf_version(reader)})")  # fmt: skip
    assert by_reader == by_writer, (direction, other_tf, by_writer, by_reader)
