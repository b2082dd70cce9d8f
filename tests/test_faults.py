"""Runtime faults: each ends in one line, a counted skip or a correct run, never a loss.

The probes are listed as data in tests/fault_matrix.json; `test_fault_matrix_figures`
checks every listed test exists here and prints the figures the README quotes.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.config import ModelConfig
from runtime import checkpoints, environment, memory, outputs
from runtime.export import export_saved_model
from tests.support import REPO, run_main
from utils.cmdline_helper import parse_cmdline
from utils.core.errors import UserError
from utils.core.tf_compat import keras
from utils.distributed import SingleProcess

# Its module-scoped fixtures are built once: pytest-xdist runs the whole file on one worker.
pytestmark = pytest.mark.xdist_group("faults")

SMALL = ["--arch", "resnet50", "--synthetic_data_size", "32", "--num_classes", "10"]
TRAIN = [*SMALL, "--mode", "train", "--batch_size", "2", "--iter_unit", "batch"]
CONFIG = ModelConfig(arch="resnet50", num_classes=10)


def _tiny_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _error_line(proc):
    """The one `main.py: error:` line of a failed run, which must end its stderr."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout
    assert lines and lines[-1].startswith("main.py: error: "), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model_dir holding ckpt-1 and ckpt-2 of a 32 px resnet50 (two runs)."""
    model_dir = tmp_path_factory.mktemp("trained")
    run_main(*TRAIN, "--num_iter", "1", "--results_dir", model_dir)
    run_main(*TRAIN, "--num_iter", "2", "--results_dir", model_dir)
    assert checkpoints.complete_checkpoints(str(model_dir)) == [
        str(model_dir / "ckpt-2"),
        str(model_dir / "ckpt-1"),
    ]
    return model_dir


def _copy(trained, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(trained, target)
    return target


# 1: export


def test_export_writes_versions_and_never_deletes(tmp_path, trained):
    model = _tiny_model()
    export = tmp_path / "export"
    assert export_saved_model(model, str(export), 32) == str(export / "1")
    assert export_saved_model(model, str(export), 32) == str(export / "2")
    mask = os.umask(0o022)
    os.umask(mask)
    umask_dir = 0o777 & ~mask
    assert os.stat(export / "1").st_mode & 0o777 == umask_dir  # not mkdtemp's 0700
    tf.saved_model.load(str(export / "2"))
    before = sorted(os.listdir(trained))
    with pytest.raises(UserError, match="holds other files"):
        export_saved_model(model, str(trained), 32)  # the model_dir itself
    assert sorted(os.listdir(trained)) == before
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match="is a file"):
        export_saved_model(model, str(tmp_path / "file"), 32)
    assert (tmp_path / "file").read_text() == "mine"
    config = json.loads((trained / checkpoints.CONFIG_FILE).read_text())
    assert config["arch"] == "resnet50"
    assert os.stat(trained / checkpoints.CONFIG_FILE).st_mode & 0o777 == 0o666 & umask_dir


def test_export_into_model_dir_refused_before_training(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    before = sorted(os.listdir(model_dir))
    proc = run_main(
        *TRAIN, "--num_iter", "3", "--results_dir", model_dir, "--export_dir", model_dir,
        check=False,
    )  # fmt: skip
    assert "holds other files" in _error_line(proc)
    assert sorted(os.listdir(model_dir)) == before


# 2, 3 (clean-up), SIGKILL mid-save: resume from files on disk


def test_resume_without_state_file_and_cleanup_of_killed_save(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    (model_dir / "checkpoint").unlink()
    ckpt2 = (model_dir / "ckpt-2.index").read_bytes()
    (model_dir / "ckpt-3_temp").mkdir()  # what a SIGKILL during TF's save leaves
    (model_dir / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    export = tmp_path / "export"
    stale = export / f".export-tmp-{socket.gethostname()}-999999999-abcdef"
    stale.mkdir(parents=True)
    mine = model_dir / "ckpt-3_notes.txt"
    mine.write_text("user file")
    proc = run_main(*TRAIN, "--num_iter", "3", "--results_dir", model_dir, "--export_dir", export)
    assert "no `checkpoint` state file" in proc.stdout, proc.stdout
    assert "resuming from" in proc.stdout and "ckpt-2 at step 2" in proc.stdout, proc.stdout
    assert not (model_dir / "ckpt-3_temp").exists() and not stale.exists()
    assert mine.read_text() == "user file"
    assert (model_dir / "ckpt-2.index").read_bytes() == ckpt2
    assert checkpoints.complete_checkpoints(str(model_dir))[0] == str(model_dir / "ckpt-3")
    assert tf.train.latest_checkpoint(str(model_dir)) == str(model_dir / "ckpt-3")
    assert os.listdir(export) == ["1"]


def test_save_never_overwrites_a_checkpoint_it_did_not_write(tmp_path):
    model = _tiny_model()
    optimizer = keras.optimizers.SGD()
    keeper = checkpoints.CheckpointKeeper(str(tmp_path), model, optimizer, CONFIG)
    keeper.save(5)
    other = checkpoints.CheckpointKeeper(str(tmp_path), model, optimizer, CONFIG)
    with pytest.raises(UserError, match="not written by this run"):
        other.save(5)
    assert keeper.save(6).endswith("ckpt-6")


def test_a_signal_during_a_save_is_handled_after_it(tmp_path, monkeypatch):
    keeper = checkpoints.CheckpointKeeper(
        str(tmp_path), _tiny_model(), keras.optimizers.SGD(), CONFIG
    )
    real_save, seen = keeper.manager.save, []

    def save_signalled(**kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)  # arrives mid-save
        time.sleep(0.01)
        return real_save(**kwargs)

    monkeypatch.setattr(keeper.manager, "save", save_signalled)
    previous = signal.signal(signal.SIGUSR1, lambda *_: seen.append(os.listdir(tmp_path)))
    try:
        keeper.save(3)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert len(seen) == 1 and "ckpt-3.index" in seen[0], seen


# 3: writability, full disk


@pytest.mark.parametrize(
    "flag, path",
    [
        ("--results_dir", "/proc/no_such_dir"),
        ("--model_dir", "FILE"),
        ("--export_dir", "/proc/version"),
    ],
)
def test_unwritable_outputs_are_one_line_before_the_first_step(tmp_path, flag, path):
    if path == "FILE":
        path = tmp_path / "a_file"
        path.write_text("keep")
    extra = [] if flag == "--results_dir" else ["--results_dir", tmp_path / "r"]
    proc = run_main(*TRAIN, "--num_iter", "1", *extra, flag, path, check=False)
    line = _error_line(proc)
    assert f"{flag} {path}" in line, line
    assert "step 1" not in proc.stdout
    if flag == "--model_dir":
        assert Path(path).read_text() == "keep"


def _tmpfs(path, size, options=""):
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"{options}size={size}", "tmpfs", str(path)]
    )
    return done.returncode == 0


def test_log_file_in_a_subfolder_and_a_read_only_results_dir(tmp_path):
    from argparse import Namespace

    args = Namespace(
        results_dir=str(tmp_path), log_filename="sub/log.json", mode="evaluate",
        model_dir=str(tmp_path), export_dir=None,
    )  # fmt: skip
    outputs.check_writable(args)
    assert (tmp_path / "sub").is_dir() and os.listdir(tmp_path / "sub") == []
    read_only = tmp_path / "ro"
    if not _tmpfs(read_only, "1m", "ro,"):
        pytest.skip("cannot mount a read-only tmpfs here (/proc covers the message)")
    try:
        args.results_dir = str(read_only / "results")
        with pytest.raises(UserError, match="Read-only file system"):
            outputs.check_writable(args)
    finally:
        subprocess.run(["umount", str(read_only)])


def test_failed_save_names_the_good_checkpoint(tmp_path, monkeypatch):
    keeper = checkpoints.CheckpointKeeper(
        str(tmp_path), _tiny_model(), keras.optimizers.SGD(), CONFIG
    )
    keeper.save(1)

    def full(*args, **kwargs):
        os.makedirs(tmp_path / "ckpt-2_temp")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keeper.manager, "save", full)
    with pytest.raises(UserError, match=r"No space left on device.*ckpt-1 is still good"):
        keeper.save(2)
    assert not (tmp_path / "ckpt-2_temp").exists()


def test_full_disk_during_save_is_one_line(tmp_path):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (the monkeypatched test covers the message)")
    try:
        proc = run_main(
            *TRAIN, "--num_iter", "1", "--results_dir", tmp_path / "r", "--model_dir", disk,
            check=False,
        )  # fmt: skip
        line = _error_line(proc)
        assert "saving" in line and "No space left" in line and "no checkpoint was saved" in line
        assert not [n for n in os.listdir(disk) if n.endswith("_temp")]
    finally:
        subprocess.run(["umount", str(disk)])


# 4, 16: signals


def _popen_train(tmp_path, steps=400):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    argv = [*TRAIN, "--num_iter", str(steps), "--display_every", "1", "--results_dir", tmp_path]
    return subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def _wait_for_step(proc):
    for line in proc.stdout:
        if "step 2 " in line or "step 2:" in line or "total_loss" in line:
            return
    raise AssertionError(proc.stderr.read())


def test_ctrl_c_saves_then_exits_130(tmp_path):
    proc = _popen_train(tmp_path)
    _wait_for_step(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "training stopped by SIGINT" in out and "checkpoint saved" in out, out
    assert checkpoints.complete_checkpoints(str(tmp_path)), os.listdir(tmp_path)
    assert "Traceback" not in err


def test_second_ctrl_c_exits_at_once(tmp_path):
    proc = _popen_train(tmp_path)
    _wait_for_step(proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    # The second Ctrl-C lands in the step (exit without saving) or, if the loop has already
    # stopped, during the final save or after it (one line once the save is written).
    assert (
        "second Ctrl-C" in err
        or "training stopped by SIGINT" in out
        or "stopped by SIGINT outside training" in err
    ), (out, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_outside_training_is_one_line(sig):
    """Evaluation and export run outside the training loop: stand in with a sleep."""
    code = "from runtime import signals; import time; signals.install(); print('ready', flush=True); time.sleep(60)"  # noqa: E501
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert err.strip().splitlines() == [err.strip()] and signal.Signals(sig).name in err


# 9: lock


def test_model_dir_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path):
    (tmp_path / outputs.LOCK_FILE).write_text("pid 4242 on host gone\n")
    first = outputs.ModelDirLock(str(tmp_path))
    assert first.stale == "pid 4242 on host gone"
    with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()}"):
        outputs.ModelDirLock(str(tmp_path))
    first.release()
    second = outputs.ModelDirLock(str(tmp_path))
    assert second.stale == ""
    second.release()


def test_two_training_runs_on_one_model_dir(tmp_path):
    first = _popen_train(tmp_path)
    _wait_for_step(first)
    try:
        proc = run_main(*TRAIN, "--num_iter", "2", "--results_dir", tmp_path, check=False)
        assert "is in use by another run" in _error_line(proc)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)


# 10, 11, 16: corrupt checkpoints and sidecar


def test_truncated_data_falls_back_or_names_the_file(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    data = model_dir / "ckpt-2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    problem = checkpoints.corruption(str(model_dir / "ckpt-2"))
    assert problem.startswith(str(data)), problem
    said = []
    picked = checkpoints.pick_checkpoint(str(model_dir), fall_back=True, log=said.append)
    assert picked == str(model_dir / "ckpt-1") and "ckpt-2" in said[0]
    proc = run_main(*TRAIN, "--num_iter", "3", "--results_dir", model_dir, check=False)
    line = _error_line(proc)
    assert "ckpt-2.data-00000-of-00001" in line and "resume from ckpt-1" in line, line
    assert "does not match" not in line


def test_corrupt_index_is_named(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    index = model_dir / "ckpt-2.index"
    raw = bytearray(index.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64
    index.write_bytes(bytes(raw))
    problem = checkpoints.corruption(str(model_dir / "ckpt-2"))
    assert problem and ("ckpt-2.index" in problem or "ckpt-2.data" in problem), problem
    from model import build

    model = build(CONFIG)
    said = []
    assert checkpoints.restore_model_only(model, str(model_dir), CONFIG, log=said.append) == str(
        model_dir / "ckpt-1"
    )
    assert said and "corrupt" in said[0]


def test_corrupt_model_config_is_one_line(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    (model_dir / checkpoints.CONFIG_FILE).write_text('{"arch": "resn')
    proc = run_main(*TRAIN, "--num_iter", "3", "--results_dir", model_dir, check=False)
    assert f"{model_dir / checkpoints.CONFIG_FILE} is corrupt" in _error_line(proc)


def test_restore_error_is_the_last_line(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    (model_dir / checkpoints.CONFIG_FILE).unlink()  # no sidecar: TF finds the mismatch
    argv = [a if a != "10" else "12" for a in TRAIN]
    proc = run_main(*argv, "--num_iter", "3", "--results_dir", model_dir, check=False)
    assert "cannot restore" in _error_line(proc)


def test_another_arch_in_the_same_model_dir_is_one_line(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    argv = [a if a != "resnet50" else "resnext101-32x4d" for a in TRAIN]
    proc = run_main(*argv, "--num_iter", "3", "--results_dir", model_dir, check=False)
    assert "trained with arch=resnet50" in _error_line(proc)


# 12, 13, 17: values


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--lr_init", "-1", "must be a number > 0"),
        ("--lr_init", "0", "must be a number > 0"),
        ("--weight_decay", "-0.1", "must be >= 0"),
        ("--mixup", "-1", "must be >= 0"),
        ("--image_size", "16", "at least 32"),
        ("--synthetic_data_size", "8", "at least 32"),
        ("--gpu_id", "-1", "must be >= 0"),
    ],
)
def test_numeric_flags_are_range_checked(capsys, flag, value, says):
    with pytest.raises(SystemExit) as stop:
        parse_cmdline(["--batch_size", "2", flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err


def test_memory_guard_refuses_a_batch_that_cannot_fit(tmp_path):
    proc = run_main(
        "--mode", "training_benchmark", "--synthetic_data_size", "5000", "--batch_size", "64",
        "--num_iter", "3", "--warmup_steps", "1", "--results_dir", tmp_path,
        check=False,
    )  # fmt: skip
    line = _error_line(proc)
    assert "5000x5000" in line and "use --batch_size" in line or "lower --image_size" in line


def test_memory_estimate_names_a_batch_that_fits():
    args = parse_cmdline(["--batch_size", "64", "--mode", "train"])
    need_one = memory.estimate_bytes("resnet50", 1, 224, False, True)
    need_two = memory.estimate_bytes("resnet50", 2, 224, False, True)
    have = int(need_one + 19.5 * (need_two - need_one))  # 20.5 images' worth
    with pytest.raises(UserError, match="use --batch_size 20 or less"):
        memory.check_fits(args, 224, lambda: have)
    memory.check_fits(args, 224, lambda: None)  # unknown memory: no check
    assert memory.host_available_bytes() > 0


class _FakeGPU:
    def __init__(self, index):
        self.name = f"/physical_device:GPU:{index}"


def test_gpu_id_is_checked_against_the_gpus_present(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [_FakeGPU(0), _FakeGPU(1)])
    with pytest.raises(UserError, match="--gpu_id 2 does not exist: this machine shows 2 GPU"):
        environment.configure_devices(SingleProcess(), gpu_id=2)


# the matrix


def test_fault_matrix_figures():
    figures = {"faults": 0, "one-line error": 0, "counted skip": 0, "correct": 0, "losses": 0}
    names = set(globals())
    for name in ("fault_matrix.json", "fault_matrix_data.json"):
        path = REPO / "tests" / name
        if not path.exists():
            continue
        for probe in json.loads(path.read_text()):
            assert set(probe) >= {"id", "fault", "command", "expected", "test"}, probe
            figures["faults"] += 1
            figures[probe["expected"]] += 1
            file, _, test = probe["test"].partition("::")
            if file == "tests/test_faults.py":
                assert test.split("[")[0] in names, probe
    print("\nfault matrix:", json.dumps(figures))
    assert figures["faults"] >= 20 and np.isfinite(figures["faults"])
