"""Two-process data parallelism on CPU: Horovod under mpiexec and horovodrun (Gloo), and
the tf.distribute engine under mpiexec ("tfdist", the current stack).

Each launcher runs three jobs, shared by the tests below to stay within a few minutes:
- `worker_job`: this file as a script under the launcher. Each rank trains a tiny model on
  its own batch (fp32, --xla, --amp); the applied gradient must be the average of the
  ranks' gradients. Then rank 1 is lost (killed under horovodrun, frozen under mpiexec)
  and rank 0 must end with one line instead of waiting forever.
- `stopped_run`: main.py training until a SIGTERM to rank 1 stops both ranks.
- `resumed_run`: main.py train_and_evaluate resuming from that checkpoint.
`tests/dump_weights_main.py` (main.py that saves each rank's final variables) runs both.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.support import logged, read_log

# Its module-scoped fixtures are built once: pytest-xdist runs the whole file on one worker.
pytestmark = pytest.mark.xdist_group("horovod")

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SMALL = ["--image_size", "32", "--num_classes", "10"]
# CPU-only, as root in a container: mpiexec needs --allow-run-as-root, and --bind-to none
# (its default binds each of 2 processes to one core, about 4x slower here).
MPIEXEC = ["mpiexec", "--allow-run-as-root", "--bind-to", "none", "-np", "2"]
LAUNCHERS = {  # "tfdist": mpiexec with the tf.distribute engine instead of Horovod
    "mpiexec": MPIEXEC,
    "horovodrun": [str(VENV_BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2"],
    "tfdist": MPIEXEC,
}
ENGINES = {"mpiexec": "horovod", "horovodrun": "horovod", "tfdist": "tfdist"}


# How rank 1 is lost in `worker_job`: SIGKILL makes Horovod fail rank 0's next collective
# (Gloo: connection reset); under SIGSTOP Open MPI would wait forever, and the watchdog
# (RNXT_HOROVOD_TIMEOUT, short here) ends rank 0.
LOST_RANK = {"horovodrun": "killed", "mpiexec": "frozen"}
WATCHDOG_SECONDS = 10


def _launcher(name):
    command = LAUNCHERS[name]
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed")
    module = {"horovod": "horovod.tensorflow", "tfdist": "mpi4py"}[ENGINES[name]]
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f"{module.split('.')[0]} is not installed ({name} needs it)")
    return command


def _env(tag=None, **extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}
    if tag:
        env["RNXT_TEST_TAG"] = tag
    return env


def _launch(name, argv, env, timeout=600):
    command = [*_launcher(name), sys.executable, *argv]
    env = {**env, "RNXT_DIST_BACKEND": ENGINES[name]}
    proc = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )
    return proc


def _check(proc):
    if proc.returncode != 0:
        raise AssertionError(f"job failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _rank_tracebacks(launcher, proc):
    """Tracebacks printed by the ranks (horovodrun prints one of its own when a rank fails)."""
    lines = proc.stderr.splitlines()
    if launcher == "horovodrun":
        lines = [line.split(">:", 1)[1] for line in lines if re.match(r"\[\d+\]<std", line)]
    return [line for line in lines if line.startswith("Traceback")]


def _dumps(directory):
    ranks = [np.load(directory / f"rank{r}.npz") for r in (0, 1)]
    assert ranks[0].files == ranks[1].files and len(ranks[0].files) > 100
    return ranks


def _assert_same_weights(directory):
    """Weights and optimizer state are identical on both ranks; batch-norm moving statistics
    are each rank's own (from its own batches), as in the original recipe."""
    rank0, rank1 = _dumps(directory)
    shared = [name for name in rank0.files if "moving_" not in name]
    assert len(shared) > 100
    for name in shared:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    return rank0


def _checkpoint_weights(model_dir):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    return {
        n: reader.get_tensor(n)
        for n in reader.get_variable_to_shape_map()
        if n.startswith("model/") and "OPTIMIZER" not in n
    }


def _rank_pid(tag, rank):
    """The pid of the process of rank `rank` started with RNXT_TEST_TAG=tag."""
    wanted = {f"RNXT_TEST_TAG={tag}".encode()}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"main.py" not in cmdline or not wanted <= environ:
            continue
        if {f"OMPI_COMM_WORLD_RANK={rank}".encode(), f"HOROVOD_RANK={rank}".encode()} & environ:
            return int(proc.name)
    return None


def _single_process_evaluation(model_dir, data_dir):
    """evaluate() of the checkpoint in this (single) process, as `--mode evaluate` runs it."""
    from model import ModelConfig, build
    from runtime import checkpoints, evaluation, inputs
    from utils.cmdline_helper import parse_cmdline
    from utils.distributed import SingleProcess

    args = parse_cmdline(
        ["--arch", "resnet50", "--mode", "evaluate", "--batch_size", "16", "--data_dir",
         str(data_dir), "--image_size", "32", "--num_classes", "10"]
    )  # fmt: skip
    config = ModelConfig.from_args(args)
    model = build(config)
    checkpoints.restore_model_only(model, str(model_dir), config)
    dist = SingleProcess()
    return evaluation.evaluate(model, inputs.evaluation_dataset(args, dist), dist, False)


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def launcher(request):
    _launcher(request.param)
    return request.param


@pytest.fixture(scope="module")
def worker_job(launcher):
    if ENGINES[launcher] != "horovod":
        pytest.skip("the engine-level checks of tf.distribute are in tests/test_tfdist.py")
    argv = ["-m", "tests.test_horovod", "worker", LOST_RANK[launcher]]
    env = _env(RNXT_HOROVOD_TIMEOUT=str(WATCHDOG_SECONDS))
    started = time.time()
    proc = _launch(launcher, argv, env, timeout=300)
    return proc, time.time() - started


def _common_argv(sample_data, results):
    return [
        str(REPO / "tests" / "dump_weights_main.py"), "--arch", "resnet50",
        "--data_dir", sample_data,
        "--batch_size", "4", "--num_iter", "100000", "--iter_unit", "batch",
        "--lr_init", "0.05", "--lr_warmup_epochs", "0", "--weight_init", "fan_in",
        "--display_every", "1", "--results_dir", str(results), *SMALL,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def stopped_run(launcher, sample_data, tmp_path_factory):
    """Training that a SIGTERM to rank 1 (not rank 0) stops after step 21 (the first
    logged step: the first 20 are not logged, as in the original)."""
    tmp = tmp_path_factory.mktemp(f"stopped-{launcher}")
    results, dump, tag = tmp / "results", tmp / "dump", uuid.uuid4().hex
    command = [
        *_launcher(launcher), sys.executable, *_common_argv(sample_data, results),
        "--mode", "train",
    ]  # fmt: skip
    env = {**_env(tag, RNXT_TEST_DUMP=str(dump)), "RNXT_DIST_BACKEND": ENGINES[launcher]}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    deadline = time.time() + 300
    for line in proc.stdout:
        if "step 21 " in line or time.time() > deadline:
            break
    pid = _rank_pid(tag, 1)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    else:
        proc.kill()
    out, err = proc.communicate(timeout=180)
    assert pid is not None, f"rank 1 not found:\n{out}\n{err}"
    assert proc.returncode == 0, out + err
    return {"out": out, "results": results, "dump": dump}


def _stop_step(stopped_run):
    match = re.search(r"training stopped by SIGTERM on rank 1 at step (\d+)", stopped_run["out"])
    assert match, stopped_run["out"]
    return int(match.group(1))


@pytest.fixture(scope="module")
def resumed_run(launcher, stopped_run, sample_data):
    """train_and_evaluate from the stopped run's checkpoint: 2 more steps, then evaluation."""
    results = stopped_run["results"]
    dump = results.parent / "dump-resumed"
    argv = [*_common_argv(sample_data, results), "--mode", "train_and_evaluate", "--run_iter", "2"]
    proc = _check(_launch(launcher, argv, _env(RNXT_TEST_DUMP=str(dump))))
    return {"out": proc.stdout, "results": results, "dump": dump}


def test_applied_gradient_is_the_average_of_the_ranks_gradients(worker_job):
    proc, _ = worker_job
    for rank in (0, 1):
        for case in ("fp32", "xla", "amp"):
            assert f"rank {rank} {case}: ok" in proc.stdout, proc.stdout + proc.stderr


def test_a_lost_rank_ends_the_job_with_one_line_instead_of_a_hang(launcher, worker_job):
    proc, seconds = worker_job
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "main.py: error: rank 0:" in line]
    expected = {
        "killed": "another process of this job failed",
        "frozen": f"waited more than {WATCHDOG_SECONDS} s",
    }[LOST_RANK[launcher]]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert not _rank_tracebacks(launcher, proc), proc.stderr
    assert seconds < 150


def test_sigterm_to_one_rank_stops_both_at_one_step_with_one_checkpoint(stopped_run):
    step = _stop_step(stopped_run)
    assert step >= 21
    assert [p.name for p in stopped_run["results"].glob("ckpt-*.index")] == [f"ckpt-{step}.index"]


def test_both_ranks_hold_the_same_weights_after_training(stopped_run, resumed_run):
    _assert_same_weights(stopped_run["dump"])
    rank0 = _assert_same_weights(resumed_run["dump"])
    # Rank 0 saved what it holds (batch-norm statistics included).
    dumped = {np.asarray(rank0[n]).tobytes() for n in rank0.files}
    saved = _checkpoint_weights(resumed_run["results"])
    assert all(np.asarray(v).tobytes() in dumped for v in saved.values())


def test_throughput_is_logged_for_the_job_and_per_rank(stopped_run):
    records = read_log(stopped_run["results"])
    params = next(r for r in records if r.get("step") == "PARAMETER")["data"]
    assert params["num_processes"] == 2
    per_rank = logged(records, "train_throughput_per_rank")[-1]
    assert len(per_rank) == 2 and all(v > 0 for v in per_rank)
    slowest_seconds = max(4 / v for v in per_rank)  # per rank: batch 4 x steps / seconds
    assert logged(records, "train_throughput")[-1] == pytest.approx(2 * 4 / slowest_seconds)
    # The learning rate and epochs follow the global batch (2 x 4): 600 images, 75 steps.
    from utils.learning_rate import WarmupDecaySchedule

    schedule = WarmupDecaySchedule(
        lr_init=0.05, global_batch_size=8, steps_per_epoch=75, total_steps=100000,
        lr_warmup_epochs=0, cosine=False,
    )  # fmt: skip
    steps = [r["step"][1] for r in records if r["type"] == "LOG" and len(r["step"]) == 2]
    expected = [float(schedule(step - 1)) for step in steps]
    assert logged(records, "learning_rate") == pytest.approx(expected)


def test_a_two_process_run_resumes_from_the_checkpoint(stopped_run, resumed_run):
    step = _stop_step(stopped_run)
    results = resumed_run["results"]
    assert f"resuming from {results}/ckpt-{step} at step {step}" in resumed_run["out"]
    assert (results / f"ckpt-{step + 2}.index").exists()
    # The launcher's output went to a pipe: no progress redraws in it (Open MPI gives each
    # rank a pseudo-terminal all the same).
    assert "\r" not in resumed_run["out"], resumed_run["out"][:300]


def test_distributed_evaluation_equals_single_process_evaluation(resumed_run, sample_data):
    records = read_log(resumed_run["results"])
    single = _single_process_evaluation(resumed_run["results"], sample_data)
    assert single["eval_images"] == logged(records, "eval_images")[-1] == 200
    assert logged(records, "top1_accuracy")[-1] == single["top1_accuracy"]
    assert logged(records, "top5_accuracy")[-1] == single["top5_accuracy"]


@pytest.mark.parametrize("name", ["mpiexec", "tfdist"])
def test_a_user_error_under_mpiexec_is_one_line_and_fails_the_job(tmp_path, name):
    argv = [
        str(REPO / "main.py"), "--mode", "train", "--data_dir", str(tmp_path / "missing"),
        "--batch_size", "4", "--results_dir", str(tmp_path), *SMALL,
    ]  # fmt: skip
    proc = _launch(name, argv, _env(), timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "main.py: error:" in line]
    assert len(lines) == 1 and "missing" in lines[0], proc.stderr
    assert not _rank_tracebacks("mpiexec", proc), proc.stderr


# ------------------------------------------------------------------------------------------
# Run under a launcher from the repository: `python -m tests.test_horovod worker killed`.


def _gradient_worker():
    """On each rank: a tiny model, this rank's own batch, one training step per case; the
    weights must move by -lr x the mean of the ranks' gradients, the same on every rank."""
    import tensorflow as tf

    from runtime.training import make_train_step
    from utils.core.tf_compat import keras
    from utils.distributed.horovod import HorovodProcesses
    from utils.losses import cross_entropy, decayed_variables, l2_loss
    from utils.optimizers import build_optimizer

    dist = HorovodProcesses()
    hvd = dist._hvd
    lr, weight_decay, batch, classes = 0.5, 1e-3, 4, 3

    def data(rank, overflow=False):
        rng = np.random.default_rng(100 + rank)
        images = rng.normal(size=(batch, 6)).astype(np.float32)
        if overflow:
            images *= 1e6  # float16 activations overflow: inf/NaN gradients on this rank
        targets = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]
        return tf.constant(images), tf.constant(targets)

    def local_gradients(model, optimizer, amp, images, targets):
        with tf.GradientTape() as tape:
            total = cross_entropy(model(images, training=True), targets) + l2_loss(
                decayed_variables(model), weight_decay
            )
            scaled = optimizer.get_scaled_loss(total) if amp else total
        grads = tape.gradient(scaled, model.trainable_variables)
        grads = optimizer.get_unscaled_gradients(grads) if amp else grads
        return [g.numpy().astype(np.float64) for g in grads]

    def everyone(arrays):
        return [hvd.allgather(tf.constant(a[None])).numpy() for a in arrays]

    for case in ("fp32", "xla", "amp"):
        amp, xla = case == "amp", case == "xla"
        keras.mixed_precision.set_global_policy("mixed_float16" if amp else "float32")
        keras.utils.set_random_seed(dist.rank)  # different on purpose: broadcast fixes it
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(5, activation="tanh"),
                keras.layers.Dense(classes),
            ]
        )
        optimizer = build_optimizer(lr, 0.0, amp, -1)
        getattr(optimizer, "inner_optimizer", optimizer).build(model.trainable_variables)
        dist.broadcast_variables(model.variables)
        before = [v.numpy() for v in model.trainable_variables]
        for a in everyone(before):
            np.testing.assert_array_equal(a[0], a[1])

        images, targets = data(dist.rank)
        mine = local_gradients(model, optimizer, amp, images, targets)
        mean = [g.mean(0) for g in everyone(mine)]
        assert any(not np.allclose(g[0], g[1]) for g in everyone(mine)), "same data on ranks"
        if not amp:
            # The ranks' gradients averaged = the gradient of both batches as one batch.
            both = [tf.concat(t, 0) for t in zip(data(0), data(1))]
            joint = local_gradients(model, optimizer, amp, *both)
            for m, j in zip(mean, joint):
                np.testing.assert_allclose(m, j, rtol=1e-5, atol=1e-6)
        step = make_train_step(model, optimizer, dist, weight_decay, amp, xla)
        step(images, targets)
        after = [v.numpy() for v in model.trainable_variables]
        tolerance = {"rtol": 2e-3, "atol": 2e-4} if amp else {"rtol": 1e-5, "atol": 1e-6}
        for b, a, m in zip(before, after, mean):
            np.testing.assert_allclose(a, b - lr * m, **tolerance)
        for a in everyone(after):
            np.testing.assert_array_equal(a[0], a[1])

        if amp:
            # An overflow on rank 1 alone: both ranks skip the step and halve the loss scale.
            scale = float(optimizer.loss_scale)
            step(*data(dist.rank, overflow=dist.rank == 1))
            for a, b in zip(after, model.trainable_variables):
                np.testing.assert_array_equal(a, b.numpy())
            assert float(optimizer.loss_scale) == scale / 2, (scale, float(optimizer.loss_scale))
            assert int(optimizer.iterations) == 2
        print(f"rank {dist.rank} {case}: ok", flush=True)


def _lose_rank_1(how):
    """Rank 1 dies (SIGKILL) or freezes (SIGSTOP) after a barrier; rank 0 goes on with
    collectives and ends as main.py does (one `main.py: error:` line, status 1)."""
    from utils.core.errors import UserError
    from utils.distributed.horovod import HorovodProcesses

    dist = HorovodProcesses()
    try:
        with dist.failures_as_errors():
            dist.barrier()
            if dist.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            for _ in range(100):
                dist.barrier()
                time.sleep(0.5)
    except UserError as error:
        print(f"main.py: error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _gradient_worker()
    _lose_rank_1(sys.argv[2])
