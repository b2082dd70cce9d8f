"""Helper of benchmarks/gpu/run_matrix.sh: checks that a run used the GPU, and writes tables.

    python3 benchmarks/gpu/matrix_table.py check RUN_OUTPUT DLLOG_JSON KEY MIN_IMG_S
        "ok <value> <gpu name> (compute capability X.Y)" and status 0 when the output shows
        a GPU device and the log holds KEY >= MIN_IMG_S; else why, status 3 (ran on CPU)
        or 4 (no result in the log).
    python3 benchmarks/gpu/matrix_table.py table MANIFEST OUT_MD [NOTE]
        The original README's tables from the runs in MANIFEST (tab-separated: kind,
        config, batch, status, results dir, output file); NOTE goes into the heading.
Only the standard library: it runs with any Python 3.
"""

import json
import os
import re
import sys

# TensorFlow's INFO line when it creates a GPU device (needs TF_CPP_MIN_LOG_LEVEL=0):
#   Created device /job:localhost/replica:0/task:0/device:GPU:0 with 38224 MB memory:
#   -> device: 0, name: NVIDIA A100-SXM4-40GB, pci bus id: 0000:07:00.0, compute capability: 8.0
GPU_DEVICE = re.compile(r"Created device \S*device:GPU:\d+ with .*")
GPU_NAME = re.compile(r"name: (?P<name>[^,]+),.*compute capability: (?P<cc>\d+\.\d+)")

TRAIN_CONFIGS = ("fp32", "fp32_xla", "amp", "amp_xla")
INFER_CONFIGS = ("fp32", "fp32_xla", "amp", "amp_xla", "amp_xla_dali")
INFER_KEYS = (
    "eval_throughput",
    "eval_latency_avg",
    "eval_latency_p90",
    "eval_latency_p95",
    "eval_latency_p99",
)


def dllog_values(path):
    """The last value of every key of the DLLogger `DLLL {json}` lines in `path`."""
    found = {}
    try:
        with open(path, encoding="utf-8") as log:
            for line in log:
                if line.startswith("DLLL "):
                    try:
                        data = json.loads(line[5:]).get("data") or {}
                    except ValueError:
                        continue
                    if isinstance(data, dict):
                        found.update(data)
    except OSError:
        pass
    return found


def gpu_of(run_output):
    """(name, compute capability) of the GPU the run's TensorFlow created, or None."""
    try:
        with open(run_output, encoding="utf-8", errors="replace") as out:
            for line in out:
                match = GPU_DEVICE.search(line)
                if match:
                    name = GPU_NAME.search(match.group(0))
                    if name:
                        return name.group("name").strip(), name.group("cc")
                    return "GPU", "?"
    except OSError:
        pass
    return None


def check(run_output, dllog, key, min_img_s):
    gpu = gpu_of(run_output)
    if gpu is None:
        print(
            f"the model ran on CPU: TensorFlow created no GPU device in this run "
            f"(no 'Created device ...GPU' line in {run_output})"
        )
        return 3
    value = dllog_values(dllog).get(key)
    if not isinstance(value, (int, float)):
        print(f"no {key} in {dllog}; see {run_output}")
        return 4
    if value < float(min_img_s):
        print(
            f"the model ran on CPU: {key} {value:.1f} img/s is below MIN_GPU_IMG_S="
            f"{min_img_s} (CPU speed; a GPU is far faster); see {run_output}"
        )
        return 3
    print(f"ok {value:.2f} {gpu[0]} (compute capability {gpu[1]})")
    return 0


def read_manifest(path):
    runs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 6:
                kind, config, batch, status, results_dir, output = parts
                runs.append(
                    {
                        "kind": kind,
                        "config": config,
                        "batch": int(batch),
                        "status": status,
                        "log": os.path.join(results_dir, "log.json"),
                        "output": output,
                    }
                )
    return runs


def _cell(run, key, unit):
    if run is None:
        return "-"
    if run["status"] != "ok":
        return run["status"]
    value = dllog_values(run["log"]).get(key)
    return f"{value:.2f} {unit}" if isinstance(value, (int, float)) else "no result"


def _value(run, key):
    if run is None or run["status"] != "ok":
        return None
    value = dllog_values(run["log"]).get(key)
    return value if isinstance(value, (int, float)) else None


def table(manifest, out_path, note=""):
    runs = read_manifest(manifest)
    by = {(r["kind"], r["config"], r["batch"]): r for r in runs}
    gpu = next((g for g in (gpu_of(r["output"]) for r in runs if r["status"] == "ok") if g), None)
    tf32 = gpu is not None and gpu[1] != "?" and float(gpu[1]) >= 8.0
    fp = "TF32" if tf32 else "FP32"
    names = {
        "fp32": fp,
        "fp32_xla": f"{fp} + XLA",
        "amp": "mixed precision",
        "amp_xla": "mixed precision + XLA",
        "amp_xla_dali": "mixed precision + XLA + DALI",
    }
    titles = {
        "fp32": fp,
        "fp32_xla": f"{fp} + XLA",
        "amp": "Mixed Precision",
        "amp_xla": "Mixed Precision + XLA",
        "amp_xla_dali": "Mixed Precision + XLA + DALI",
    }
    lines = [
        "# ResNeXt101-32x4d benchmark matrix (benchmarks/gpu/run_matrix.sh)",
        "",
        f"GPU: {gpu[0]} (compute capability {gpu[1]})" if gpu else "GPU: none seen",
        "",
        f"Short runs on one GPU{': ' + note if note else ''}. A cell reads",
        "'-' when the run was not in this matrix, 'skipped' when the time budget ran out,",
        "'OOM' when the batch did not fit, 'timeout' or 'failed' (see the run's output).",
        "",
    ]
    train_batches = sorted({r["batch"] for r in runs if r["kind"] == "train"})
    if train_batches:
        lines += [
            "## Training performance: 1 GPU",
            "",
            "| GPUs | Batch Size / GPU | "
            + " | ".join(f"Throughput - {names[c]}" for c in TRAIN_CONFIGS)
            + f" | Throughput speedup ({fp} - mixed precision)"
            + f" | Throughput speedup ({fp} + XLA - mixed precision + XLA) |",
            "|" + "----|" * (2 + len(TRAIN_CONFIGS) + 2),
        ]
        for bs in train_batches:
            cells = [
                _cell(by.get(("train", c, bs)), "train_throughput", "img/s") for c in TRAIN_CONFIGS
            ]
            speedups = []
            for base, fast in (("fp32", "amp"), ("fp32_xla", "amp_xla")):
                a = _value(by.get(("train", base, bs)), "train_throughput")
                b = _value(by.get(("train", fast, bs)), "train_throughput")
                speedups.append(f"{b / a:.2f}x" if a and b else "-")
            lines.append(f"| 1 | {bs} | " + " | ".join(cells + speedups) + " |")
        lines.append("")
    infer_configs = [
        c for c in INFER_CONFIGS if any(r["config"] == c for r in runs if r["kind"] == "infer")
    ]
    if infer_configs:
        lines += ["## Inference performance: 1 GPU", ""]
    for config in infer_configs:
        batches = sorted(
            {r["batch"] for r in runs if r["kind"] == "infer" and r["config"] == config}
        )
        lines += [
            f"**{titles[config]} Inference Latency**",
            "",
            "|**Batch Size**|**Avg throughput**|**Avg latency**|**90% Latency**|**95% Latency**|"
            "**99% Latency**|",
            "|--------------|------------------|---------------|---------------|---------------|"
            "---------------|",
        ]
        for bs in batches:
            run = by.get(("infer", config, bs))
            units = ("img/s", "ms", "ms", "ms", "ms")
            if run is not None and run["status"] != "ok":
                cells = [run["status"]] + ["-"] * 4
            else:
                cells = [_cell(run, k, u) for k, u in zip(INFER_KEYS, units)]
            lines.append(f"| {bs} | " + " | ".join(cells) + " |")
        lines.append("")
    problems = [r for r in runs if r["status"] not in ("ok", "skipped")]
    if problems:
        lines += ["Runs that did not finish:", ""]
        lines += [
            f"- {r['kind']} {r['config']} bs {r['batch']}: {r['status']} ({r['output']})"
            for r in problems
        ]
        lines.append("")
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return 0


def main(argv):
    if len(argv) == 5 and argv[0] == "check":
        return check(*argv[1:])
    if len(argv) in (3, 4) and argv[0] == "table":
        return table(*argv[1:])
    print(__doc__.strip().splitlines()[0], file=sys.stderr)
    print(
        "usage: matrix_table.py check RUN_OUTPUT DLLOG KEY MIN | table MANIFEST OUT [NOTE]",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
