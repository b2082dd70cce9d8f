"""The launch scripts of resnext101-32x4d/ and the flags the README names.

Every script runs here with DRY_RUN=1, which prints the commands it would run (one per line,
shell-quoted) and runs nothing. Each main.py argument list in them goes through the real
parser (`utils.cmdline_helper.parse_cmdline`), so a flag main.py does not know (like the
original's `--muxup`) fails here, and the values are checked against the recipe's table.
The scripts' real mode runs with stand-ins for python and mpiexec (no training here).
"""

import contextlib
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from utils.cmdline_helper import build_parser, parse_cmdline

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "resnext101-32x4d"
TRAINING = SCRIPTS / "training"
MAIN = str(REPO / "main.py")
TRAINING_PERF = TRAINING / "training_perf.sh"
INFERENCE_BENCHMARK = SCRIPTS / "inference_benchmark.sh"

# The recipe's training scripts: processes, epochs, batch per GPU, AMP, MixUp alpha.
# Port: the DGX-2 250-epoch scripts use all 16 GPUs (the original's launched 8).
TRAINING_SCRIPTS = {
    "DGX1_RNxt101-32x4d_AMP_90E.sh": (8, 90, 128, True, 0.0),
    "DGX1_RNxt101-32x4d_AMP_250E.sh": (8, 250, 128, True, 0.2),
    "DGX1_RNxt101-32x4d_FP32_90E.sh": (8, 90, 64, False, 0.0),
    "DGX1_RNxt101-32x4d_FP32_250E.sh": (8, 250, 64, False, 0.2),
    "DGX2_RNxt101-32x4d_AMP_90E.sh": (16, 90, 128, True, 0.0),
    "DGX2_RNxt101-32x4d_AMP_250E.sh": (16, 250, 128, True, 0.2),
    "DGX2_RNxt101-32x4d_FP32_90E.sh": (16, 90, 64, False, 0.0),
    "DGX2_RNxt101-32x4d_FP32_250E.sh": (16, 250, 64, False, 0.2),
    "DGXA100_RNxt101-32x4d_AMP_90E.sh": (8, 90, 256, True, 0.0),
    "DGXA100_RNxt101-32x4d_TF32_90E.sh": (8, 90, 128, False, 0.0),
}
# What every training script passes besides the table's columns.
RECIPE = {
    "arch": "resnext101-32x4d",
    "mode": "train_and_evaluate",
    "iter_unit": "epoch",
    "warmup_steps": 100,
    "cosine_lr": True,
    "label_smoothing": 0.1,
    "lr_init": 0.256,
    "lr_warmup_epochs": 8,
    "momentum": 0.875,
    "weight_decay": 6.103515625e-05,
    "weight_init": "fan_in",
}
MPIEXEC = ["mpiexec", "--allow-run-as-root", "--bind-to", "socket"]
SCRIPT_VARS = ("DRY_RUN", "PYTHON", "BIND_TO", "MPIEXEC", "NUM_GPUS", "DATA_DIR")
SCRIPT_VARS += ("RESULTS_DIR", "BATCH_SIZES")


def _default_python():
    venv_python = REPO / ".venv" / "bin" / "python"
    return str(venv_python) if os.access(venv_python, os.X_OK) else "python3"


def _run(script, *args, cwd, dry=True, **env):
    clean = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS}
    if dry:
        clean["DRY_RUN"] = "1"
    clean.update({key: str(value) for key, value in env.items()})
    return subprocess.run(
        ["bash", str(script), *map(str, args)],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _commands(script, *args, cwd, **env):
    """The commands a script prints under DRY_RUN=1, each split back into its words."""
    proc = _run(script, *args, cwd=cwd, **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def _split(argv):
    """(launcher words, python, main.py arguments) of one command."""
    assert MAIN in argv, argv
    at = argv.index(MAIN)
    return argv[: at - 1], argv[at - 1], argv[at + 1 :]


def _parse(args):
    """main.py's parser on `args`; a rejected command fails the test with main.py's words."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_cmdline(args)
    except SystemExit:
        pytest.fail(f"main.py rejects {shlex.join(args)}: {err.getvalue().strip()}")


def _usage_error(proc, script_name):
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script_name}: "), proc.stderr


def test_training_folder_holds_the_recipe_scripts():
    names = {p.name for p in TRAINING.iterdir()}
    assert names == {*TRAINING_SCRIPTS, "common.sh", "training_perf.sh"}
    for name in (*TRAINING_SCRIPTS, "training_perf.sh"):
        assert (TRAINING / name).stat().st_mode & stat.S_IXUSR, f"{name} is not executable"
    assert INFERENCE_BENCHMARK.stat().st_mode & stat.S_IXUSR


@pytest.mark.parametrize("name", sorted(TRAINING_SCRIPTS))
def test_training_script_runs_the_recipe(name, tmp_path):
    nproc, epochs, batch, amp, mixup = TRAINING_SCRIPTS[name]
    workspace, data = tmp_path / "work space", tmp_path / "data"
    workspace.mkdir()
    data.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()

    commands = _commands(TRAINING / name, workspace, data, "--xla", "--dali", cwd=elsewhere)
    assert len(commands) == 1
    launcher, python, args = _split(commands[0])
    assert launcher == [*MPIEXEC, "-np", str(nproc)]
    assert python == _default_python()
    parsed = _parse(args)
    for key, value in RECIPE.items():
        assert getattr(parsed, key) == value, key
    assert (parsed.num_iter, parsed.batch_size) == (epochs, batch)
    assert parsed.amp is amp
    assert parsed.static_loss_scale == (128 if amp else -1)
    assert parsed.mixup == mixup
    assert parsed.data_dir == f"{data}/tfrecords"
    assert parsed.data_idx_dir == f"{data}/dali_idx"
    assert parsed.results_dir == f"{workspace}/results"
    assert parsed.xla and parsed.dali  # passed through
    # Each script states only what differs; the command lives in common.sh.
    code = [line for line in (TRAINING / name).read_text().splitlines() if line[:1] != "#"]
    assert "main.py" not in "\n".join(code) and code[-1].startswith("rnxt_train ")


def test_training_script_without_workspace_or_data_is_a_usage_error(tmp_path):
    script = TRAINING / "DGX1_RNxt101-32x4d_AMP_90E.sh"
    for args in ((), (tmp_path,), (tmp_path, "")):
        _usage_error(_run(script, *args, cwd=tmp_path), script.name)
        _usage_error(_run(script, *args, cwd=tmp_path, dry=False), script.name)


def test_training_script_settings_from_the_environment(tmp_path):
    script = TRAINING / "DGX2_RNxt101-32x4d_FP32_90E.sh"

    def launcher(**env):
        (argv,) = _commands(script, "/ws/", "/data/", cwd=tmp_path, **env)
        return _split(argv)

    assert launcher(BIND_TO="none")[0][:4] == [*MPIEXEC[:3], "none"]
    assert "--bind-to" not in launcher(BIND_TO="")[0]
    assert launcher(MPIEXEC="/opt/mpi/bin/mpirun")[0][0] == "/opt/mpi/bin/mpirun"
    assert launcher(PYTHON="/opt/py/bin/python3")[1] == "/opt/py/bin/python3"
    args = launcher()[2]
    assert "--data_dir=/data/tfrecords" in args and "--results_dir=/ws/results" in args


def test_training_script_passes_extra_flags_last_and_intact(tmp_path):
    script = TRAINING / "DGXA100_RNxt101-32x4d_AMP_90E.sh"
    extra = ["--num_iter=1", "--export_dir", "/tmp/it's a dir", "--display_every", "1"]
    (argv,) = _commands(script, tmp_path, tmp_path, *extra, cwd=tmp_path)
    args = _split(argv)[2]
    assert args[-len(extra) :] == extra
    parsed = _parse(args)
    assert parsed.num_iter == 1  # the caller's flag overrides the recipe's
    assert parsed.export_dir == "/tmp/it's a dir"


def test_training_perf_matrix(tmp_path):
    results = tmp_path / "perf"
    commands = _commands(
        TRAINING_PERF, cwd=tmp_path, NUM_GPUS="8", DATA_DIR="/d/tfrecords", RESULTS_DIR=results
    )
    assert len(commands) == 8
    seen = []
    for index, argv in enumerate(commands):
        launcher, python, args = _split(argv)
        assert python == _default_python()
        if index < 4:
            assert launcher == []  # 1 GPU: one process, no MPI
        else:
            assert launcher == [*MPIEXEC, "-np", "8"]
        parsed = _parse(args)
        assert (parsed.arch, parsed.mode) == ("resnext101-32x4d", "training_benchmark")
        assert (parsed.warmup_steps, parsed.num_iter, parsed.iter_unit) == (200, 500, "batch")
        assert parsed.data_dir == "/d/tfrecords"
        assert parsed.batch_size == (128 if parsed.amp else 64)
        assert parsed.static_loss_scale == (128 if parsed.amp else -1)
        assert Path(parsed.results_dir).parent == results
        seen.append((len(launcher) > 0, parsed.amp, parsed.xla, parsed.results_dir))
    assert {s[:3] for s in seen} == {(m, a, x) for m in (0, 1) for a in (0, 1) for x in (0, 1)}
    assert len({s[3] for s in seen}) == 8  # every run has its own results folder


def test_training_perf_one_gpu_batch_sizes_synthetic_data(tmp_path):
    commands = _commands(
        TRAINING_PERF, 32, 96, "--data_format", "NCHW", cwd=tmp_path, NUM_GPUS="1", DATA_DIR=""
    )
    assert len(commands) == 4
    for argv in commands:
        launcher, _, args = _split(argv)
        assert launcher == []
        parsed = _parse(args)
        assert parsed.batch_size == (96 if parsed.amp else 32)
        assert parsed.data_dir is None  # synthetic data
        assert parsed.data_format == "NCHW"


def test_training_perf_counts_gpus_with_nvidia_smi(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    gpus = "".join(f"GPU {i}: NVIDIA A100-SXM4-40GB (UUID: GPU-{i})\\n" for i in range(4))
    smi.write_text(f'#!/bin/sh\n[ "$1" = -L ] && printf "{gpus}"\n')
    smi.chmod(0o755)
    commands = _commands(TRAINING_PERF, cwd=tmp_path, PATH=path)
    assert [_split(argv)[0][-2:] for argv in commands[4:]] == [["-np", "4"]] * 4

    smi.write_text("#!/bin/sh\nexit 0\n")  # no GPU listed
    _usage_error(_run(TRAINING_PERF, cwd=tmp_path, PATH=path), "training_perf.sh")
    if shutil.which("nvidia-smi") is None:
        _usage_error(_run(TRAINING_PERF, cwd=tmp_path), "training_perf.sh")


def test_training_perf_rejects_bad_batch_sizes(tmp_path):
    for args in (("x",), ("64", "0"), ("--xla",)):
        _usage_error(_run(TRAINING_PERF, *args, cwd=tmp_path, NUM_GPUS="1"), "training_perf.sh")


@pytest.mark.parametrize("with_dali", [False, True])
def test_inference_benchmark_matrix(with_dali, tmp_path):
    results = tmp_path / "infer"
    args = ["/d/tfrecords", "/d/dali_idx"] if with_dali else ["/d/tfrecords"]
    commands = _commands(INFERENCE_BENCHMARK, *args, cwd=tmp_path, RESULTS_DIR=results)
    variants = 5 if with_dali else 4
    assert len(commands) == variants * 8
    runs = {}
    for argv in commands:
        launcher, python, main_args = _split(argv)
        assert launcher == [] and python == _default_python()
        parsed = _parse(main_args)
        assert (parsed.arch, parsed.mode) == ("resnext101-32x4d", "inference_benchmark")
        assert (parsed.warmup_steps, parsed.num_iter, parsed.iter_unit) == (50, 400, "batch")
        assert parsed.data_dir == "/d/tfrecords"
        assert parsed.static_loss_scale == -1
        assert Path(parsed.results_dir).parent == results
        if parsed.dali:
            assert parsed.data_idx_dir == "/d/dali_idx"
        variant = (parsed.amp, parsed.xla, parsed.dali)
        runs.setdefault(variant, []).append(parsed.batch_size)
    expected = {(False, False, False), (False, True, False), (True, False, False)}
    expected |= {(True, True, False)} | ({(True, True, True)} if with_dali else set())
    assert set(runs) == expected
    assert all(sizes == [1, 2, 4, 8, 16, 32, 64, 128] for sizes in runs.values())


def test_inference_benchmark_usage_and_batch_sizes(tmp_path):
    _usage_error(_run(INFERENCE_BENCHMARK, cwd=tmp_path), "inference_benchmark.sh")
    _usage_error(_run(INFERENCE_BENCHMARK, "", cwd=tmp_path), "inference_benchmark.sh")
    bad = _run(INFERENCE_BENCHMARK, "/d", cwd=tmp_path, BATCH_SIZES="8 x")
    _usage_error(bad, "inference_benchmark.sh")
    commands = _commands(
        INFERENCE_BENCHMARK, "/d", "", "--gpu_id", "1", cwd=tmp_path, BATCH_SIZES="3 5"
    )
    assert len(commands) == 8
    assert {_parse(_split(argv)[2]).batch_size for argv in commands} == {3, 5}
    assert all(_parse(_split(argv)[2]).gpu_id == 1 for argv in commands)


# Stand-ins for the real mode: python runs main.py's "work" by writing a DLLogger record
# (or failing when its results folder contains $FAKE_FAIL); `python -c` is the real one.
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ $1 == -c ]]; then exec "$REAL_PYTHON" "$@"; fi
for arg in "$@"; do [[ $arg == --results_dir=* ]] && dir=${arg#--results_dir=}; done
echo "python $*"
[[ -n ${FAKE_FAIL:-} && $dir == *"$FAKE_FAIL"* ]] && exit 3
mkdir -p "$dir"
{
  echo 'DLLL {"type": "LOG", "step": [], "data": {"train_throughput": 12.345}}'
  echo 'DLLL {"type": "LOG", "step": [], "data": {"eval_throughput": 99.0,'\\
    '"eval_latency_avg": 1.5}}'
} >>"$dir/log.json"
"""
FAKE_MPIEXEC = """#!/usr/bin/env bash
while [[ $1 != -np ]]; do shift; done
echo "mpiexec -np $2"
shift 2
exec "$@"
"""


@pytest.fixture
def fakes(tmp_path):
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for name, text in (("python", FAKE_PYTHON), ("mpiexec", FAKE_MPIEXEC)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        "PYTHON": str(bin_dir / "python"),
        "MPIEXEC": str(bin_dir / "mpiexec"),
        "REAL_PYTHON": sys.executable,
    }


def test_benchmarks_real_mode_logs_and_summary(tmp_path, fakes):
    results = tmp_path / "infer"
    proc = _run(
        INFERENCE_BENCHMARK,
        "/d",
        cwd=tmp_path,
        dry=False,
        RESULTS_DIR=results,
        BATCH_SIZES="1 2",
        FAKE_FAIL="amp_xla_bs2",
        **fakes,
    )
    assert proc.returncode == 1, proc.stderr  # one run failed, the others still ran
    summary = (results / "summary.txt").read_text().splitlines()
    assert len(summary) == 1 + 8
    assert "fp32_bs1: eval_throughput=99.00 eval_latency_avg=1.50" in summary
    assert any(line.startswith("amp_xla_bs2: FAILED (exit status 3)") for line in summary)
    assert f"python {MAIN} " in (results / "fp32_xla_bs2.log").read_text()

    results = tmp_path / "perf"
    proc = _run(
        TRAINING_PERF,
        cwd=tmp_path,
        dry=False,
        RESULTS_DIR=results,
        NUM_GPUS="2",
        DATA_DIR="/d",
        **fakes,
    )
    assert proc.returncode == 0, proc.stderr
    summary = (results / "summary.txt").read_text().splitlines()
    assert summary[1:] == [
        f"{name}: train_throughput=12.35"
        for name in (
            *("amp_bs128_1gpu", "amp_bs128_1gpu_xla", "fp32_bs64_1gpu", "fp32_bs64_1gpu_xla"),
            *("amp_bs128_2gpu", "amp_bs128_2gpu_xla", "fp32_bs64_2gpu", "fp32_bs64_2gpu_xla"),
        )
    ]
    assert "mpiexec -np 2" in (results / "fp32_bs64_2gpu.log").read_text()


def test_training_script_real_mode_execs_mpiexec(tmp_path, fakes):
    script = TRAINING / "DGX1_RNxt101-32x4d_FP32_90E.sh"
    proc = _run(script, tmp_path, tmp_path, cwd=tmp_path, dry=False, **fakes)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"mpiexec -np 8\npython {MAIN} --arch=resnext101-32x4d ")
    missing = _run(
        script, tmp_path, tmp_path, cwd=tmp_path, dry=False, MPIEXEC=str(tmp_path / "no-mpiexec")
    )
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "no-mpiexec not found" in missing.stderr


def _shell_scripts():
    return sorted(SCRIPTS.rglob("*.sh"))


def test_scripts_pass_shellcheck():
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    shellcheck = shutil.which("shellcheck", path=search)
    assert shellcheck, "shellcheck is missing: pip install -r requirements-dev.txt"
    scripts = [str(p.relative_to(REPO)) for p in _shell_scripts()]
    proc = subprocess.run(
        [shellcheck, "-x", *scripts], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- Flags the README names ---------------------------------------------------------------
#
# Which `--flags` of README.md are main.py's (and so must exist in its parser):
#  1. in a command, fenced or inline, that runs main.py or one of the resnext101-32x4d/*.sh
#     scripts (they pass their extra flags to main.py): the flags after `main.py` / the
#     script, up to a `|`, `;` or `&&`. Fenced lines ending in `\` are joined first, so the
#     flags of mpiexec (`--allow-run-as-root`, `--bind-to`) before main.py are left out;
#  2. every flag of a fenced block that starts with `usage: main.py` (the --help text);
#  3. an inline code span that starts with a flag (`--amp`, `--data_format NCHW`,
#     `[--xla]`): its first flag, unless it has a hyphen after the leading `--` (main.py's
#     flags have none; `--bind-to`, `--build-arg`, `--no-build-isolation` are other tools')
#     or is one of OTHER_TOOLS_FLAGS.
# Any other command (docker, pip, python -m utils.tools.build_tfrecords or benchmarks.*, bash
# utils/dali_index.sh, horovodrun) has its own flags and is not checked.
# Single-word flags of docker, mpiexec, horovodrun and utils/dali_index.sh, and the
# original's typo `--muxup`, which the README may name in prose.
OTHER_TOOLS_FLAGS = {"--gpus", "--ipc", "--rm", "--ulimit", "--volume", "--env", "--user"}
OTHER_TOOLS_FLAGS |= {"--network", "--oversubscribe", "--hostfile", "--host", "--gloo"}
OTHER_TOOLS_FLAGS |= {"--tfrecord2idx", "--muxup"}
_FENCE = re.compile(r"^\s*(```|~~~)")
_FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
_LAUNCHES_MAIN = re.compile(r"(?<![\w-])main\.py\b|resnext101-32x4d/\S*\.sh\b")


def _command_flags(command):
    flags = []
    for part in re.split(r"&&|\|\||[|;]", command):
        found = _LAUNCHES_MAIN.search(part)
        if found:
            flags += [(flag, part.strip()) for flag in _FLAG.findall(part[found.end() :])]
    return flags


def readme_main_py_flags(markdown):
    """(flag, where) for every flag the README names as main.py's, by the rule above."""
    flags, prose, block = [], [], None
    for line in markdown.splitlines():
        if _FENCE.match(line):
            if block is None:
                block = []
                continue
            if block and block[0].lstrip().startswith("usage: main.py"):
                flags += [(f, "main.py usage") for text in block for f in _FLAG.findall(text)]
            else:
                for command in "\n".join(block).replace("\\\n", " ").splitlines():
                    flags += _command_flags(command)
            block = None
        elif block is not None:
            block.append(line)
        else:
            prose.append(line)
    for span in re.findall(r"`([^`]+)`", "\n".join(prose)):
        span = " ".join(span.split())
        if span.lstrip("[").startswith("--"):
            flag = _FLAG.search(span).group(0)
            if "-" not in flag[2:] and flag not in OTHER_TOOLS_FLAGS:
                flags.append((flag, span))
        else:
            flags += _command_flags(span)
    return flags


def test_readme_flag_rule():
    sample = "\n".join(
        [
            "Run `python main.py --arch=resnet50 [--xla]` or `--amp`, `--data_format NCHW`;",
            "not `--bind-to socket`, `--gpus all`, `docker run --ipc=host img` or `--muxup`.",
            "```bash",
            "mpiexec --allow-run-as-root --bind-to socket -np 8 python main.py \\",
            "    --batch_size=128 --cosine_lr | tee log && pip install --no-cache-dir x",
            "bash ./resnext101-32x4d/training/DGX1_RNxt101-32x4d_AMP_90E.sh /r /data --dali",
            "python -m utils.tools.build_tfrecords --train_dir train/",
            "```",
            "```",
            "usage: main.py [-h] [--arch ARCH]",
            "               [--mode MODE]",
            "```",
        ]
    )
    assert [flag for flag, _ in readme_main_py_flags(sample)] == [
        "--batch_size",
        "--cosine_lr",
        "--dali",
        "--arch",
        "--mode",
        "--arch",
        "--xla",
        "--amp",
        "--data_format",
    ]


def test_readme_names_only_flags_main_py_has():
    known = {option for action in build_parser()._actions for option in action.option_strings}
    named = readme_main_py_flags((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(named) > 20  # the rule still finds the README's commands
    unknown = sorted({f"{flag} (in: {where})" for flag, where in named if flag not in known})
    assert not unknown, "README.md names flags main.py does not have:\n" + "\n".join(unknown)


def test_readme_usage_block_is_main_py_usage(monkeypatch):
    """The README's `usage: main.py` block is what `main.py --help` prints (80 columns)."""
    monkeypatch.setenv("COLUMNS", "80")
    markdown = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```\n(usage: main\.py.*?)^```", markdown, re.S | re.M)
    assert block, "README.md has no usage block"
    assert block.group(1).strip() == build_parser().format_usage().strip()


# --- benchmarks/gpu/run_matrix.sh --------------------------------------------------------

GPU_MATRIX = REPO / "benchmarks" / "gpu" / "run_matrix.sh"


def test_gpu_matrix_commands_parse_and_cover_the_original_matrix(tmp_path):
    commands = _commands(GPU_MATRIX, "/data/tfrecords", "/data/dali_idx", cwd=tmp_path)
    assert commands[0][1] == "-c"  # the GPU check comes first
    cells = set()
    for argv in commands[1:]:
        assert argv[:2] == ["env", "TF_CPP_MIN_LOG_LEVEL=0"]
        args = _parse(_split(argv[2:])[2])
        assert args.arch == "resnext101-32x4d" and args.data_dir == "/data/tfrecords"
        precision = ("amp" if args.amp else "fp32") + ("_xla" if args.xla else "")
        precision += "_dali" if args.dali else ""
        cells.add((args.mode, precision, args.batch_size))
    assert len(cells) == len(commands) - 1  # no run twice
    for precision in ("fp32", "fp32_xla", "amp", "amp_xla"):
        assert {("training_benchmark", precision, bs) for bs in (64, 128, 256)} <= cells
    for precision in ("fp32", "fp32_xla", "amp", "amp_xla", "amp_xla_dali"):
        assert {("inference_benchmark", precision, 2**k) for k in range(8)} <= cells


def test_gpu_matrix_refuses_to_run_without_a_gpu(tmp_path):
    proc = _run(GPU_MATRIX, cwd=tmp_path, dry=False, RESULTS_DIR=tmp_path / "out")
    assert proc.returncode == 1, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("run_matrix.sh: error: TensorFlow sees no GPU")
    )
    assert not (tmp_path / "out").exists()  # nothing ran
