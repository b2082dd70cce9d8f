"""DLLogger-format output, the disabled logger, and the TTY-only progress display."""

import io
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.support import read_log
from utils.logs import dllogger_compat
from utils.logs.dllogger_compat import Logger, format_step, to_builtin
from utils.logs.progress import Progress, format_duration, interactive

LOG_KEYS = {"timestamp", "datetime", "elapsedtime", "type", "step", "data"}
METADATA_KEYS = {"timestamp", "datetime", "elapsedtime", "type", "metric", "metadata"}


@pytest.fixture(autouse=True)
def own_writer(monkeypatch):
    """Test this module's own writer even where NVIDIA's dllogger is installed."""
    monkeypatch.setattr(dllogger_compat, "dllogger", None)


def read_records(path):
    return read_log(path.parent, path.name)


def write_sample_run(results_dir):
    with Logger(str(results_dir), "log.json") as logger:
        logger.log_parameters({"arch": "resnext101-32x4d", "batch_size": 2, "amp": False})
        logger.metadata("imgs_per_sec", {"unit": "img/s", "format": ":.2f"})
        logger.log(
            (np.int64(0), 10),
            {
                "imgs_per_sec": np.float32(123.5),
                "cross_entropy": tf.constant(6.9),
                "learning_rate": 0.0256,
            },
        )
        logger.log((), {"train_throughput": np.float64(120.0)})


def test_lines_are_dllogger_json_with_the_documented_keys(tmp_path):
    write_sample_run(tmp_path / "results")
    params, meta, train, summary = read_records(tmp_path / "results" / "log.json")

    for record in (params, train, summary):
        assert set(record) == LOG_KEYS
        assert record["type"] == "LOG"
        float(record["timestamp"]), float(record["elapsedtime"])
    assert params["step"] == "PARAMETER"
    assert params["data"] == {"arch": "resnext101-32x4d", "batch_size": 2, "amp": False}
    assert train["step"] == [0, 10]
    assert train["data"]["imgs_per_sec"] == 123.5
    assert train["data"]["cross_entropy"] == pytest.approx(6.9, rel=1e-6)
    assert summary["step"] == []

    assert set(meta) == METADATA_KEYS
    assert meta["type"] == "METADATA"
    assert meta["metric"] == "imgs_per_sec"
    assert meta["metadata"] == {"unit": "img/s", "format": ":.2f"}


def test_stdout_gets_one_readable_line_per_record(tmp_path, capsys):
    write_sample_run(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "PARAMETER" in lines[0] and "arch : resnext101-32x4d" in lines[0]
    assert "epoch 0 step 10" in lines[1]
    assert "imgs_per_sec : 123.50 img/s" in lines[1]
    assert "summary" in lines[2] and "train_throughput : 120" in lines[2]


def test_a_resumed_run_appends(tmp_path):
    write_sample_run(tmp_path)
    write_sample_run(tmp_path)
    assert len(read_records(tmp_path / "log.json")) == 8


def test_disabled_logger_writes_nothing(tmp_path, capsys):
    results = tmp_path / "rank1"
    logger = Logger(str(results), "log.json", enabled=False)
    logger.log_parameters({"a": 1})
    logger.metadata("a", {"unit": "s"})
    logger.log((0, 1), {"a": 1.0})
    logger.flush()
    logger.close()
    assert not results.exists()
    assert capsys.readouterr().out == ""


def test_values_become_plain_python():
    value = {"t": tf.constant([1, 2]), "n": np.int32(3), "b": b"x", "o": object}
    converted = to_builtin(value)
    assert converted["t"] == [1, 2] and converted["n"] == 3 and converted["b"] == "x"
    assert isinstance(converted["o"], str)
    json.dumps(converted)


def test_step_formatting():
    assert format_step("PARAMETER") == "PARAMETER"
    assert format_step((2, 300)) == "epoch 2 step 300"
    assert format_step((2,)) == "epoch 2"
    assert format_step(()) == "summary"


# --- progress ----------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize(
    "tty, environ, parent, expected",
    [
        (True, {}, None, True),
        (False, {}, None, False),
        (False, {"RNXT_PROGRESS": "1"}, None, True),
        (True, {"RNXT_PROGRESS": "0"}, None, False),
        (True, {"OMPI_COMM_WORLD_SIZE": "2"}, "/dev/pts/3", True),  # mpiexec on a terminal
        (True, {"OMPI_COMM_WORLD_SIZE": "2"}, "pipe:[81]", False),  # mpiexec ... | tee log
        (True, {"PMIX_RANK": "0"}, "/work/train.log", False),
    ],
)
def test_interactive_under_a_launcher_follows_the_launchers_stdout(tty, environ, parent, expected):
    stream = FakeTerminal() if tty else io.StringIO()
    assert interactive(stream, environ=environ, parent_stdout=parent) is expected


def test_progress_prints_nothing_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(10, batch_size=32, stream=stream)
    for done in range(1, 11):
        progress.update(done)
    progress.close()
    assert stream.getvalue() == ""


def test_progress_draws_steps_throughput_and_eta_on_a_terminal():
    stream, clock = FakeTerminal(), FakeClock()
    progress = Progress(100, batch_size=32, label="train", stream=stream, clock=clock)
    progress.update(10)
    clock.now += 2.0
    progress.update(30)  # 20 steps in 2 s: 10 steps/s, 320 img/s, 70 steps left = 7 s
    frames = stream.getvalue().split("\r")[1:]
    assert frames[0].startswith("train 10/100")
    assert frames[1].startswith("train 30/100 | 320.0 img/s | ETA 0:00:07")
    progress.close()
    assert stream.getvalue().endswith("\n")


def test_progress_redraws_at_most_every_interval_but_always_at_the_end():
    stream, clock = FakeTerminal(), FakeClock()
    progress = Progress(3, batch_size=1, stream=stream, clock=clock, min_interval=10)
    progress.update(1)
    clock.now += 1
    progress.update(2)
    clock.now += 1
    progress.update(3)
    assert stream.getvalue().count("\r") == 2


def test_progress_disabled_on_other_ranks_even_on_a_terminal():
    stream = FakeTerminal()
    progress = Progress(3, batch_size=1, stream=stream, enabled=False)
    progress.update(3)
    assert stream.getvalue() == ""


def test_format_duration():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(-3) == "0:00:00"
