"""Training and inference img/s of the classic and the current stack, alternating.

    python -m benchmarks.bench_stacks [--rounds 3] [--arch resnext101-32x4d]
        [--batch_size 8] [--image_size 64] [--num_iter 12] [--warmup_steps 4]

Runs `main.py --mode training_benchmark` and `--mode inference_benchmark` on synthetic
data with each stack's venv (.venv-classic or .venv for classic, .venv-current or .venv
for current: the stack is read from the venv's TensorFlow version), classic then current,
for --rounds rounds, so drifting load hits both alike. Reads `train_throughput` /
`eval_throughput` (warm-up steps left out) from each run's log.json and prints the
medians and the ratio current/classic. A stack whose venv is missing is skipped, saying so.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_scaling import cpu_name  # noqa: E402 (no TensorFlow import)

MODES = {"train": ("training_benchmark", "train_throughput"),
         "infer": ("inference_benchmark", "eval_throughput")}  # fmt: skip
STACKS = ("classic", "current")


def stack_of(python):
    """ "classic" (TensorFlow 2.15) or "current" (2.21) for a venv's python, or None."""
    if not Path(python).exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('tensorflow'))"
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return "classic" if proc.stdout.strip().startswith("2.15") else "current"


def find_pythons(root):
    """{stack: python} of the venvs in `root` (.venv, .venv-classic, .venv-current)."""
    found = {}
    for name in (".venv", ".venv-classic", ".venv-current"):
        python = Path(root, name, "bin", "python")
        stack = stack_of(python)
        if stack and stack not in found:
            found[stack] = python
    return found


def version_of(python):
    probe = (
        "import importlib.metadata as m, sys; "
        "print(sys.version.split()[0], m.version('tensorflow'))"
    )
    return subprocess.run([str(python), "-c", probe], capture_output=True, text=True).stdout.split()


def run_once(python, mode, args):
    """(img/s, seconds) of one main.py benchmark run."""
    main_mode, key = MODES[mode]
    with tempfile.TemporaryDirectory(prefix="bench_stacks-") as results:
        command = [
            str(python), str(REPO / "main.py"), "--mode", main_mode, "--arch", args.arch,
            "--batch_size", str(args.batch_size), "--synthetic_data_size", str(args.image_size),
            "--num_classes", "1000", "--iter_unit", "batch", "--num_iter", str(args.num_iter),
            "--warmup_steps", str(args.warmup_steps), "--display_every", str(args.num_iter),
            "--results_dir", results,
        ]  # fmt: skip
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        for name in ("RNXT_DIST_BACKEND", "TF_USE_LEGACY_KERAS"):  # each stack sets its own
            env.pop(name, None)
        t0 = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{python} {main_mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        value = None
        for line in Path(results, "log.json").read_text().splitlines():
            record = json.loads(line[len("DLLL ") :])
            if record["type"] == "LOG" and key in record.get("data", {}):
                value = record["data"][key]
    if value is None:
        sys.exit(f"{python} {main_mode}: no {key} in log.json")
    return float(value), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--arch", default="resnext101-32x4d")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--num_iter", type=int, default=12)
    parser.add_argument("--warmup_steps", type=int, default=4)
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["train", "infer"])
    parser.add_argument("--root", default=str(REPO), help="where the venvs are")
    args = parser.parse_args()

    pythons = find_pythons(args.root)
    load = os.getloadavg()
    print(f"{cpu_name()}, {os.cpu_count()} CPU cores, load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)  # fmt: skip
    for stack in STACKS:
        if stack in pythons:
            py, tf = version_of(pythons[stack])
            print(f"{stack}: {pythons[stack]} (Python {py}, TensorFlow {tf})", flush=True)
        else:
            print(f"{stack}: no venv in {args.root}; skipped", flush=True)
    stacks = [s for s in STACKS if s in pythons]
    if not stacks:
        sys.exit("no stack's venv found")

    values = {(stack, mode): [] for stack in stacks for mode in args.modes}
    for round_ in range(args.rounds):
        for mode in args.modes:
            for stack in stacks:
                img_s, seconds = run_once(pythons[stack], mode, args)
                values[stack, mode].append(img_s)
                print(f"# round {round_ + 1}, {mode}, {stack}: {img_s:.2f} img/s "
                      f"({seconds:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip

    load = os.getloadavg()
    print(
        f"\n{args.arch}, synthetic {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"{args.num_iter} steps ({args.warmup_steps} warm-up left out), median of "
        f"{args.rounds} alternating rounds; load average at end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    header = " | ".join(f"{s} img/s" for s in stacks)
    ratio = len(stacks) == 2
    print(f"| mode | {header} |" + (" current/classic |" if ratio else ""))
    print("|---|" + "---|" * (len(stacks) + ratio))
    for mode in args.modes:
        medians = [statistics.median(values[s, mode]) for s in stacks]
        cells = " | ".join(f"{m:.2f}" for m in medians)
        tail = f" {medians[1] / medians[0]:.2f} |" if ratio else ""
        print(f"| {mode} | {cells} |{tail}")


if __name__ == "__main__":
    main()
