"""The tf.distribute engine (utils/distributed): the bootstrap and backend choice here in
the test process, then two CPU processes (tests/tfdist_worker.py) under mpiexec, or started
directly with a TF_CONFIG each, for what the ranks must agree on and how they fail.
The multi-process tests run on the current stack only (TensorFlow >= 2.16 with tf_keras,
mpi4py, mpiexec); elsewhere they are skipped with the reason.
"""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from utils.core.errors import UserError
from utils.distributed import bootstrap

REPO = Path(__file__).resolve().parents[1]
WORKER = str(REPO / "tests" / "tfdist_worker.py")
TIMEOUT = 20  # RNXT_HOROVOD_TIMEOUT for the failure scenarios


def _missing():
    try:
        major, minor = map(int, importlib.metadata.version("tensorflow").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return "TensorFlow is not installed"
    if (major, minor) < (2, 16):
        return f"TensorFlow {major}.{minor} < 2.16: the classic stack uses Horovod"
    for module in ("tf_keras", "mpi4py"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (not the current stack)"
    if shutil.which("mpiexec") is None:
        return "mpiexec is not installed"
    return None


MISSING = _missing()
needs_current = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
if MISSING:
    print(f"tests/test_tfdist.py: multi-process tests skipped: {MISSING}", file=sys.stderr)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    env.pop("TF_CONFIG", None)
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _mpiexec(scenario, out_dir, timeout=240, **env):
    cmd = ["mpiexec", "--allow-run-as-root", "-np", "2", "--oversubscribe"]
    cmd += [sys.executable, WORKER, scenario, str(out_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=timeout)


def _free_ports(count):
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def _direct(scenario, tmp_path):
    """Two ranks started without a launcher, each with its TF_CONFIG: the engine alone
    must notice a peer's death (no mpiexec aborts the job for it)."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for rank in (1, 0):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}
        env = _env(TF_CONFIG=json.dumps(config), RNXT_HOROVOD_TIMEOUT=TIMEOUT)
        log = open(tmp_path / f"rank{rank}.log", "w")  # noqa: SIM115
        procs.append(
            subprocess.Popen([sys.executable, WORKER, scenario], stdout=log, stderr=log, env=env)
        )
    rank1, rank0 = procs
    start = time.monotonic()
    try:
        status = rank0.wait(timeout=TIMEOUT + 120)
    finally:
        rank1.kill()
        rank1.wait()
    return status, time.monotonic() - start, (tmp_path / "rank0.log").read_text()


def _error_lines(text):
    return [line for line in text.splitlines() if line.startswith("main.py: error:")]


# -- without processes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "forced, horovod, expected",
    [("", True, "horovod"), ("", False, "tfdist"), ("tfdist", True, "tfdist")]
    + [("horovod", False, "horovod")],
)
def test_backend_choice(monkeypatch, forced, horovod, expected):
    monkeypatch.setenv(bootstrap.BACKEND_VAR, forced)
    assert bootstrap.choose_backend(horovod) == expected


def test_unknown_backend_is_a_user_error(monkeypatch):
    monkeypatch.setenv(bootstrap.BACKEND_VAR, "gloo")
    with pytest.raises(UserError, match="RNXT_DIST_BACKEND='gloo': choose horovod or tfdist"):
        bootstrap.choose_backend(True)


def test_user_tf_config(monkeypatch):
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_RANK", raising=False)
    config = {
        "cluster": {"chief": ["a:1"], "worker": ["a:2", "b:3", "b:4"]},
        "task": {"type": "worker", "index": 2},
    }
    cluster = bootstrap.from_tf_config(json.dumps(config))
    assert (cluster.rank, cluster.size, cluster.local_rank, cluster.local_size) == (3, 4, 1, 2)
    with pytest.raises(UserError, match="TF_CONFIG is not a usable cluster description"):
        bootstrap.from_tf_config('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps"}}')


def test_exchange_binds_loopback_on_one_host():
    """One host: every rank's address is loopback, on a port that is free."""
    sent = []

    def allgather(value):
        sent.append(value)
        return [value, value] if len(sent) == 1 else [value, "127.0.0.1:1"]

    cluster = bootstrap.exchange(allgather, 0, 2, (0, 2))
    try:
        host, port = cluster.workers[0].rsplit(":", 1)
        assert host == "127.0.0.1" and cluster.reserved.getsockname() == (host, int(port))
        assert json.loads(cluster.tf_config())["task"] == {"type": "worker", "index": 0}
    finally:
        cluster.release()


def test_several_hosts_use_the_given_address(monkeypatch):
    monkeypatch.setenv(bootstrap.ADDRESS_VAR, "192.0.2.7")
    assert bootstrap.job_address(["a", "b"], "a") == "192.0.2.7"
    monkeypatch.delenv(bootstrap.ADDRESS_VAR)
    with pytest.raises(UserError, match="set RNXT_DIST_ADDRESS"):
        bootstrap.job_address(["a", "b"], "localhost")


# -- two processes ----------------------------------------------------------------------


@needs_current
def test_two_ranks_agree(tmp_path):
    proc = _mpiexec("train", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [np.load(tmp_path / f"rank{rank}.npz") for rank in (0, 1)]
    assert np.array_equal(ranks[0]["weights"], ranks[1]["weights"])
    for step in range(3):
        local = [r[f"local{step}"] for r in ranks]
        assert not np.allclose(local[0], local[1])  # each rank its own data
        for r in ranks:
            np.testing.assert_allclose(r[f"applied{step}"], (local[0] + local[1]) / 2, 1e-6, 1e-7)
    for r in ranks:
        assert r["sum"].tolist() == [3, 20]
        assert r["mean"].tolist() == [0.5, 2.0]
        assert r["gather"].tolist() == [[0, 0], [1, 7]]


@needs_current
def test_error_on_one_rank_ends_all(tmp_path):
    proc = _mpiexec("raise", tmp_path)
    assert proc.returncode == 1
    assert _error_lines(proc.stderr) == ["main.py: error: rank 1: rank 1's shard is unreadable"]


@needs_current
def test_killed_rank_under_mpiexec_ends_the_job(tmp_path):
    start = time.monotonic()
    proc = _mpiexec("kill", tmp_path, RNXT_HOROVOD_TIMEOUT=TIMEOUT)
    assert proc.returncode != 0
    assert "passed a collective" not in proc.stdout
    assert time.monotonic() - start < TIMEOUT + 60


@needs_current
def test_killed_rank_without_launcher(tmp_path):
    status, seconds, log = _direct("kill", tmp_path)
    assert status == 1, log
    lines = _error_lines(log)
    assert len(lines) == 1 and "another process of this job failed" in lines[0], log
    assert seconds < TIMEOUT + 60


@needs_current
def test_hung_rank_trips_the_watchdog(tmp_path):
    status, seconds, log = _direct("sleep", tmp_path)
    assert status == 1, log
    lines = _error_lines(log)
    assert len(lines) == 1 and f"waited more than {TIMEOUT:g} s" in lines[0], log
    assert seconds < TIMEOUT + 60
