"""main.py's per-mode TensorFlow environment (utils/core/perf_env.py), without TensorFlow."""

import sys
import types

import pytest

import main
import runtime
from utils.core import perf_env
from utils.core.errors import UserError
from utils.modes import MODES

TRAINING_MODES = [name for name, mode in MODES.items() if mode.trains]
VAR = perf_env.FROZEN_WEIGHTS
MODE_ARGS = {
    "evaluate": ["--data_dir", "data"],
    "train_and_evaluate": ["--data_dir", "data"],
    "predict": ["--to_predict", "image.jpg"],
    "training_benchmark": ["--num_iter", "2", "--warmup_steps", "1"],
    "inference_benchmark": ["--num_iter", "2", "--warmup_steps", "1"],
}


def run_main(monkeypatch, mode):
    """main.main for `mode` with runtime.runner (which imports TensorFlow) replaced by a stub;
    returns main's exit code and the variable's value when the runner started (None: unset,
    or the runner did not start)."""
    seen = [None]
    # main() sets TF_CPP_MIN_LOG_LEVEL unless it is set: set it here, so the teardown undoes it.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", main.os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    stub = types.ModuleType("runtime.runner")
    stub.run = lambda args: seen.append(main.os.environ.get(VAR)) or 0
    monkeypatch.setitem(sys.modules, "runtime.runner", stub)
    monkeypatch.setattr(runtime, "runner", stub, raising=False)
    argv = ["--mode", mode, "--batch_size", "2", *MODE_ARGS.get(mode, [])]
    return main.main(argv), seen[-1]


@pytest.mark.parametrize("mode", MODES)
def test_frozen_weights_only_for_the_inference_modes(monkeypatch, mode):
    monkeypatch.setenv(VAR, "")  # so that the teardown restores the variable's old state
    monkeypatch.delenv(VAR)
    expected = "1" if mode in ("evaluate", "predict", "inference_benchmark") else None
    assert run_main(monkeypatch, mode) == (0, expected)


def test_the_users_setting_wins_outside_training(monkeypatch):
    monkeypatch.setenv(VAR, "0")
    assert run_main(monkeypatch, "inference_benchmark") == (0, "0")
    monkeypatch.setenv(VAR, "false")
    assert run_main(monkeypatch, "predict") == (0, "false")


@pytest.mark.parametrize("mode", TRAINING_MODES)
def test_training_refuses_frozen_weights(monkeypatch, capsys, mode):
    for value in ("1", "True"):
        with pytest.raises(UserError, match="ignore weight updates"):
            perf_env.configure(mode, {VAR: value})
    perf_env.configure(mode, {VAR: "0"})  # explicitly off is fine
    monkeypatch.setenv(VAR, "1")
    assert run_main(monkeypatch, mode) == (1, None)
    assert f"main.py: error: {VAR}=1 makes oneDNN ignore" in capsys.readouterr().err
