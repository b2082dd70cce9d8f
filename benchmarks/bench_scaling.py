"""Weak scaling of training throughput: one process vs N processes on this machine.

    .venv/bin/python -m benchmarks.bench_scaling [--backend horovod|tfdist ...]
        [--launcher mpiexec|horovodrun] [--np 2] [--arch resnext101-32x4d]
        [--image_size 32] [--batch_size 8] [--repeats 3]

Runs `main.py --mode training_benchmark` on synthetic data, alone and as --np processes
with the same per-process batch, and prints the median job and per-rank img/s and the
scaling efficiency, one table per engine (--backend, repeatable: sets RNXT_DIST_BACKEND
for the launched ranks; default: the engine this venv picks). tfdist needs mpi4py to
find its peers under mpiexec (the current stack's venv has it); an engine this venv
cannot run is reported and skipped. Without GPUs the processes share the CPU cores, so
the efficiency measures the engine's averaging and synchronisation cost, not multi-GPU
scaling.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LAUNCHERS = {
    # --bind-to none: Open MPI's default binds each of 2 processes to one core (slower here).
    "mpiexec": ["mpiexec", "--allow-run-as-root", "--quiet", "--bind-to", "none", "-np"],
    "horovodrun": [str(VENV_BIN / "horovodrun"), "--gloo", "-np"],
}


def _command(args, processes):
    main = [
        sys.executable, str(REPO / "main.py"), "--mode", "training_benchmark",
        "--arch", args.arch, "--batch_size", str(args.batch_size),
        "--synthetic_data_size", str(args.image_size), "--num_classes", "1000",
        "--iter_unit", "batch", "--num_iter", str(args.num_iter),
        "--warmup_steps", str(args.warmup_steps), "--display_every", str(args.num_iter),
    ]  # fmt: skip
    if processes == 1:
        return main
    launcher = [*LAUNCHERS[args.launcher], str(processes)]
    if args.launcher == "horovodrun":
        launcher += ["-H", f"localhost:{processes}"]
    return launcher + main


BACKENDS = ("horovod", "tfdist")


def default_backend():
    """The engine a launched rank of this venv picks when RNXT_DIST_BACKEND is unset."""
    return "horovod" if importlib.util.find_spec("horovod") is not None else "tfdist"


def unavailable(backend, launcher):
    """Why `backend` cannot run from this venv under `launcher`, or "" if it can."""
    if backend == "horovod" and importlib.util.find_spec("horovod") is None:
        return "Horovod is not installed in this venv (the classic stack has it)"
    if backend == "tfdist":
        if launcher == "horovodrun":
            return "horovodrun starts Horovod ranks; use --launcher mpiexec"
        if importlib.util.find_spec("mpi4py") is None:
            return "mpi4py is not installed in this venv (the current stack has it)"
    return ""


def _run(args, processes, backend):
    """(job img/s, [img/s of each rank], seconds) of one benchmark run."""
    with tempfile.TemporaryDirectory(prefix="bench_scaling-") as results:
        command = _command(args, processes) + ["--results_dir", results]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RNXT_DIST_BACKEND": backend}
        t0 = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"benchmark run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        summary = {}
        for line in Path(results, "log.json").read_text().splitlines():
            record = json.loads(line[len("DLLL ") :])
            if record["type"] == "LOG" and record["step"] == []:
                summary.update(record["data"])
    return summary["train_throughput"], summary["train_throughput_per_rank"], seconds


def measure(args, backend):
    """[(processes, job img/s, [img/s per rank])] for 1 and --np processes."""
    rows = []
    for processes in (1, args.np):
        runs = []
        for i in range(args.repeats):
            runs.append(_run(args, processes, backend))
            job, per_rank, seconds = runs[-1]
            ranks = ", ".join(f"{v:.2f}" for v in per_rank)
            print(
                f"# {backend}, {processes} process(es), run {i + 1}: {job:.2f} img/s "
                f"(ranks: {ranks}) in {seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        job = statistics.median(r[0] for r in runs)
        per_rank = [statistics.median(r[1][k] for r in runs) for k in range(processes)]
        rows.append((processes, job, per_rank))
    return rows


def cpu_name():
    """The CPU's model name from /proc/cpuinfo with its AVX-512/AMX support named."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    extras = [
        label for flag, label in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if flag in flags
    ]
    return f"{name} ({', '.join(extras)})" if extras else name


def print_table(args, backend, rows):
    single = rows[0][1]
    print(
        f"\n{backend}: {args.arch}, synthetic {args.image_size}x{args.image_size}, batch "
        f"{args.batch_size} per process, median of {args.repeats} runs ({args.num_iter} steps, "
        f"{args.warmup_steps} left out), launcher for N>1: {args.launcher}\n"
    )
    print("| engine | processes | global batch | job img/s | img/s per rank | efficiency |")
    print("|---|---|---|---|---|---|")
    for processes, job, per_rank in rows:
        ranks = " / ".join(f"{v:.2f}" for v in per_rank)
        efficiency = job / (processes * single)
        print(
            f"| {backend} | {processes}{' (no launcher)' if processes == 1 else ''} | "
            f"{processes * args.batch_size} | {job:.2f} | {ranks} | {efficiency:.0%} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        action="append",
        help="engine of the N-process runs (RNXT_DIST_BACKEND), repeatable; "
        "default: this venv's (Horovod where installed)",
    )
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), default="mpiexec")
    parser.add_argument("--np", type=int, default=2, help="processes of the scaled run")
    parser.add_argument("--arch", default="resnext101-32x4d")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8, help="per process")
    parser.add_argument("--num_iter", type=int, default=12)
    parser.add_argument("--warmup_steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    load = os.getloadavg()
    print(
        f"{cpu_name()}, {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, "
        f"venv {VENV_BIN.parent}, load average at start {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}",
        flush=True,
    )
    for backend in dict.fromkeys(args.backend or [default_backend()]):
        reason = unavailable(backend, args.launcher)
        if reason:
            print(f"\n{backend}: not available here, skipped: {reason}", flush=True)
            continue
        print_table(args, backend, measure(args, backend))
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
