"""What one `main.py` run in a test costs, part by part (docs/testing.md quotes the table).

    .venv/bin/python -m benchmarks.bench_test_costs [--repeats 3]

Times, in fresh interpreters: Python's start-up, `import tensorflow`, and a whole small
`main.py --mode training_benchmark` run (resnet50, 32 px, 4 steps); in this process:
building each architecture's Keras model at 32 px and its first training step (tracing and
compiling) against a later one, and the same whole run through `tests.support.run_main`
(in-process). Medians of --repeats; the CPU is named in the first line.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_models import _median_time
from benchmarks.bench_scaling import cpu_name

REPO = Path(__file__).resolve().parents[1]
RUN = ["--arch", "resnet50", "--mode", "training_benchmark", "--batch_size", "4",
       "--num_iter", "4", "--warmup_steps", "1", "--iter_unit", "batch", "--image_size", "32",
       "--synthetic_data_size", "32", "--num_classes", "10"]  # fmt: skip


def _timed(fn, repeats: int) -> float:
    return _median_time(fn, warmup=0, repeats=repeats)


def _process(argv) -> None:
    subprocess.run([sys.executable, *argv], check=True, capture_output=True, cwd=REPO)


def _model_costs(arch: str):
    import tensorflow as tf

    from model import build_model
    from runtime.training import make_train_step
    from utils.core.tf_compat import keras
    from utils.distributed import SingleProcess
    from utils.optimizers import build_optimizer

    start = time.perf_counter()
    model = build_model(arch, num_classes=10)
    built = time.perf_counter() - start
    optimizer = build_optimizer(0.01, 0.9, False, -1)
    step = make_train_step(model, optimizer, SingleProcess(), 1e-4, amp=False, xla=False)
    images = tf.random.uniform((4, 32, 32, 3), 0, 255)
    targets = tf.one_hot([1, 2, 3, 4], 10)
    start = time.perf_counter()
    step(images, targets)
    first = time.perf_counter() - start
    start = time.perf_counter()
    step(images, targets)
    later = time.perf_counter() - start
    del model
    keras.backend.clear_session()
    return built, first, later


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; Python {sys.version.split()[0]}; medians of {args.repeats}")
    rows = []
    rows.append(("python -c pass", _timed(lambda: _process(["-c", "pass"]), args.repeats)))
    rows.append(
        ("import tensorflow", _timed(lambda: _process(["-c", "import tensorflow"]), args.repeats))
    )
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["main.py", *RUN, "--results_dir", tmp]
        rows.append(("main.py run, subprocess", _timed(lambda: _process(argv), args.repeats)))
        from tests.support import run_main

        run_main(*RUN, "--results_dir", tmp)  # the first in-process run imports TensorFlow
        rows.append(
            (
                "main.py run, in-process",
                _timed(lambda: run_main(*RUN, "--results_dir", tmp), args.repeats),
            )
        )
    for arch in ("resnet50", "resnext101-32x4d", "se-resnext101-32x4d"):
        costs = [_model_costs(arch) for _ in range(args.repeats)]
        built, first, later = (statistics.median(c[i] for c in costs) for i in range(3))
        rows.append((f"{arch}: build at 32 px", built))
        rows.append((f"{arch}: first training step (trace) - later step", first - later))
        rows.append((f"{arch}: later training step (4 @ 32)", later))
    print("| what | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
