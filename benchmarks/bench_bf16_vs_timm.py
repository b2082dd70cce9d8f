"""bfloat16 rows of bench_vs_timm: ours `--amp --amp_dtype bfloat16` vs timm under bf16 autocast.

    .venv/bin/python -m benchmarks.bench_bf16_vs_timm [--rows MODE:BATCH:SIZE ...] [--rounds 3]
        [--block 2] [--warmup 1] [--threads N] [--peer_python PATH] [--json FILE]

Same harness as `benchmarks/bench_vs_timm.py` (persistent workers, ABBA alternation in one
run, medians): ours float32, ours mixed_bfloat16 (main.py's policy and step for --amp
--amp_dtype bfloat16: no loss scaling) and timm's resnext101_32x4d with PEER_AUTOCAST=bfloat16
(`benchmarks/peer_timm.py`). Default rows: training 16 @ 224 and 32 @ 64, inference 16 @ 224
and 1 @ 224. On a CPU without bfloat16 instructions it says so and skips every row.
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import bench_vs_timm as harness  # noqa: E402
from utils.core import cpu_features  # noqa: E402

DEFAULT_ROWS = ("train:16:224", "train:32:64", "infer:16:224", "infer:1:224")
OURS_ARGV = [sys.executable, "-m", "benchmarks.bench_vs_timm", "--worker", "ours"]
CONTESTANTS = (  # name, environment, worker options
    ("ours_fp32", {}, {}),
    ("ours_bf16", {}, {"precision": "mixed_bfloat16"}),
)


def start(mode: str, args: argparse.Namespace, peer_argv: list) -> list:
    """The row's workers: ours in float32 and bfloat16 (main.py's environment for `mode`),
    timm under bf16 autocast; each has said hello.

    Args:
        mode: "train" or "infer".
        args: this script's command line.
        peer_argv: the command that starts timm's worker.
    """
    contestants = [
        harness.Contestant(name, OURS_ARGV, harness.worker_env(mode, env), options)
        for name, env, options in CONTESTANTS
    ]
    peer_env = {
        "OMP_NUM_THREADS": str(args.threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "PEER_AUTOCAST": "bfloat16",
    }
    contestants.append(harness.Contestant("timm_bf16", peer_argv, peer_env))
    for c in contestants:
        c.info = c.call("hello", threads=args.threads)
        c.info["variant"] = {**c.env, **c.options}
        print(f"  {c.name}: {json.dumps(c.info)}", flush=True)
    return contestants


def print_table(results: list) -> None:
    """One line per row: img/s of each, ours_bf16/timm_bf16 (median steps, and CPU time)
    and ours_bf16/ours_fp32 (median steps, and its range over the rounds).

    Args:
        results: bench_vs_timm.bench_row's results (their baseline is ours_fp32).
    """
    print(
        "| row | batch | size | ours fp32 img/s | ours bf16 img/s | timm bf16 img/s | "
        "ours bf16 / timm bf16 | CPU time | ours bf16 / ours fp32 | round ratios | load |"
    )
    print("|" + "---|" * 11)
    for res in results:
        img = res["img_s"]
        rounds = res["round_ratios"]["ours_bf16"]
        per_cpu = res["img_per_cpu_s"]["ours_bf16"] / res["img_per_cpu_s"]["timm_bf16"]
        load = res["loadavg_1min"]
        print(
            f"| {res['mode']} | {res['batch']} | {res['size']} | {img['ours_fp32']:.2f} | "
            f"{img['ours_bf16']:.2f} | {img['timm_bf16']:.2f} | "
            f"**{img['ours_bf16'] / img['timm_bf16']:.2f}** | {per_cpu:.2f} | "
            f"**{img['ours_bf16'] / img['ours_fp32']:.2f}** | "
            f"{min(rounds):.2f}-{max(rounds):.2f} | {min(load):.1f}-{max(load):.1f} |",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", type=harness.parse_row, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--block", type=int, default=2, help="steps per block")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps after the first")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds before each block")
    parser.add_argument("--peer_python", default=None, help="python of the peer venv")
    parser.add_argument("--json", default=None, help="write all step times here")
    args = parser.parse_args()
    args.peer_channels_last = False  # read by harness.bench_row
    facts = harness.machine_facts()
    print(f"machine: {json.dumps(facts)}", flush=True)
    if not cpu_features.native_bf16():
        print(
            "this CPU has no bfloat16 instructions (avx512_bf16 or amx_bf16): skipping the "
            "bfloat16 rows",
            flush=True,
        )
        return 0
    peer_argv = [harness.peer_python(args), harness.PEER_SCRIPT]
    results = []
    for row in args.rows or [harness.parse_row(r) for r in DEFAULT_ROWS]:
        print(f"row {row[0]} batch {row[1]} @ {row[2]}:", flush=True)
        contestants = []
        try:
            contestants = start(row[0], args, peer_argv)
            results.append(harness.bench_row(contestants, row, args))
        finally:
            for c in contestants:
                c.close()
        results[-1]["workers"] = {c.name: c.info for c in contestants}
    print(f"\nintra-op threads {args.threads}; medians of {args.rounds} rounds x {args.block}")
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": sys.argv[1:], "machine": facts, "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
