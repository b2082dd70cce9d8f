"""The in-process main.py runner of the tests (tests/support.run_main): exit codes, output
and the process-wide state it puts back, which the autouse fixture checks after every test
(tests/process_state.py)."""

import os
import signal

import pytest

from runtime import runner
from tests import process_state
from tests.support import run_main
from utils.core import perf_env
from utils.core.tf_compat import keras

SMALL = ["--arch", "resnet50", "--image_size", "32", "--num_classes", "10", "--batch_size", "4"]


def test_exit_codes_and_output_are_those_of_a_process(tmp_path, sample_data):
    usage = run_main("--batch_size", "4", "--mode", "no_such_mode", check=False)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr.splitlines()[-1]
    assert usage.stdout == ""

    # A user error after the run has set its precision, seed and environment.
    proc = run_main(
        *SMALL, "--mode", "evaluate", "--data_dir", sample_data, "--model_dir", tmp_path,
        "--results_dir", tmp_path / "r", "--amp", "--amp_dtype", "bfloat16", "--seed", "5",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("main.py: error: ")
    assert "op determinism is on" in proc.stdout  # the --seed note, on stdout
    # ... and all of it was put back.
    assert keras.mixed_precision.global_policy().name == "float32"
    assert not process_state.tf_config.is_op_determinism_enabled()
    assert "TF_DETERMINISTIC_OPS" not in os.environ
    assert perf_env.FROZEN_WEIGHTS not in os.environ
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_uncaught_exception_is_exit_1_with_its_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(runner, "run", broken)
    proc = run_main("--mode", "train", "--batch_size", "2", check=False)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr
    with pytest.raises(AssertionError, match="main.py failed \\(1\\)"):
        run_main("--mode", "train", "--batch_size", "2")


def test_leaks_are_named():
    before = process_state.snapshot()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    os.environ["RNXT_TEST_LEAK"] = "1"
    try:
        leaked = process_state.leaks(before, process_state.snapshot())
    finally:
        keras.mixed_precision.set_global_policy("float32")
        signal.signal(signal.SIGUSR1, previous)
        del os.environ["RNXT_TEST_LEAK"]
    assert len(leaked) == 3, leaked
    assert "environment variables ['RNXT_TEST_LEAK']" in leaked
    assert any(item.startswith("Keras policy: 'float32' -> 'mixed_bfloat16'") for item in leaked)
    assert any(item.startswith("signal handlers") for item in leaked)
    assert process_state.leaks(before, process_state.snapshot()) == []
