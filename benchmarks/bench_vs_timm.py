"""Our ResNeXt101-32x4d against timm's PyTorch resnext101_32x4d on this machine's CPU.

    .venv/bin/python -m benchmarks.bench_vs_timm [--rows MODE:BATCH:SIZE ...] [--threads 2]
        [--rounds 3] [--block 2] [--warmup 1] [--variant NAME:key=value,...] [--json FILE]

Times main.py's compiled training step and inference function against timm's in
alternating blocks, at the same batch, size and threads; rows `mode:batch:size` (default:
train and infer, 16 @ 224 and 32 @ 64; about 12 minutes). The first run installs PyTorch
and timm into a separate venv (benchmarks/setup_peer_env.sh: several GB, about 12
minutes). Method: benchmarks/RESULTS.md; worker protocol and --variant: docs/design.md.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from utils.core import perf_env  # noqa: E402 (no TensorFlow import)
from utils.core.errors import UserError  # noqa: E402

DEFAULT_ROWS = ("train:16:224", "train:32:64", "infer:16:224", "infer:32:64")
MAIN_MODES = {"train": "training_benchmark", "infer": "inference_benchmark"}
PEER_SCRIPT = os.path.join(REPO, "benchmarks", "peer_timm.py")
SETUP_PEER = os.path.join(REPO, "benchmarks", "setup_peer_env.sh")


# --------------------------------------------------------------------------------------
# Our side: a worker process speaking the same protocol as peer_timm.py.


class OursWorker:
    """Runs in the project's venv: builds our model and steps as main.py does."""

    def hello(self, threads, inter_op=None, intra_op=None):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        intra = int(intra_op or threads)
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
        self.tf = tf
        from model.layers import grouped_conv

        impl = grouped_conv.resolve_implementation("auto", 32)
        native = impl == "cpu" and grouped_conv.native_grads_supported("float32")
        return {
            "tensorflow": tf.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "grouped_conv": f"{impl} ({'native oneDNN' if native else 'split'})",
            "env": {
                k: v
                for k, v in os.environ.items()
                if k.startswith(("TF_", "OMP_", "KMP_", "ONEDNN_", "DNNL_"))
                and k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_CLI_CONFIG_FILE")
            },
        }

    def setup(self, mode, batch, size, data_format="NHWC", precision="float32", seed=0):
        import gc

        tf = self.tf
        from model import build_model
        from runtime.evaluation import make_predict_fn
        from runtime.training import make_train_step
        from utils.core.tf_compat import keras
        from utils.distributed import SingleProcess
        from utils.optimizers import build_optimizer

        self.step = None
        keras.backend.clear_session()
        gc.collect()
        keras.utils.set_random_seed(seed)
        # "mixed_float16" is main.py's --amp --amp_dtype float16 (dynamic loss scaling);
        # "mixed_bfloat16" its --amp --amp_dtype bfloat16 (no loss scaling).
        amp = precision == "mixed_float16"
        keras.mixed_precision.set_global_policy(precision)
        model = build_model("resnext101-32x4d", num_classes=1000, data_format=data_format)
        images = tf.random.uniform([batch, size, size, 3], 0, 255)
        targets = tf.one_hot(tf.random.uniform([batch], 0, 1000, tf.int32), 1000)
        if mode == "train":
            optimizer = build_optimizer(0.01, 0.9, amp, -1)
            train_step = make_train_step(model, optimizer, SingleProcess(), 1e-4, amp, xla=False)
            self.step = lambda: train_step(images, targets)[2].numpy()
            self.traced = train_step
        elif mode == "infer":
            predict = make_predict_fn(model, xla=False)
            self.step = lambda: predict(images).numpy()
            self.traced = predict
        else:
            raise ValueError(f"mode must be train or infer, got {mode!r}")
        return {"params": int(sum(v.shape.num_elements() for v in model.trainable_variables))}

    def run(self, steps):
        times, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            self.step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)  # CPU seconds of all the process's threads
        # A count that grows after warm-up means retracing inside the timed steps.
        return {"times": times, "cpu": cpu, "traces": self.traced.experimental_get_tracing_count()}


def serve(worker):
    """The worker loop: one JSON request per stdin line, one `PEER {json}` answer each."""
    out = sys.stdout
    sys.stdout = sys.stderr  # so nothing but answers reaches the harness

    def answer(obj):
        out.write("PEER " + json.dumps(obj) + "\n")
        out.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        cmd = request.pop("cmd")
        if cmd == "quit":
            answer({"ok": True})
            return
        try:
            answer({"ok": True, **getattr(worker, cmd)(**request)})
        except Exception as error:  # reported to the harness, which stops
            answer({"ok": False, "error": f"{type(error).__name__}: {error}"})


# --------------------------------------------------------------------------------------
# The harness side.


class Contestant:
    """A persistent worker subprocess; `call` sends one command and waits for its answer."""

    def __init__(self, name, argv, env=None, options=None):
        self.name = name
        self.options = dict(options or {})
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lives as long as the worker)
            "w+", prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        self.env = dict(env or {})
        self.info = {}
        self.is_peer = argv[-1] == PEER_SCRIPT

    def call(self, cmd, **kwargs):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.log.flush()
                self.log.seek(0)
                tail = "".join(self.log.readlines()[-15:])
                raise SystemExit(
                    f"bench_vs_timm: {self.name} worker died during {cmd!r} "
                    f"(log {self.log.name}):\n{tail}"
                )
            if line.startswith("PEER "):
                reply = json.loads(line[5:])
                if not reply.pop("ok"):
                    raise SystemExit(f"bench_vs_timm: {self.name} failed in {cmd!r}: {reply}")
                return reply

    def close(self):
        """Ends the worker; keeps its log (stderr) only if it did not exit cleanly."""
        if self.proc.poll() is None:
            with contextlib.suppress(SystemExit):
                self.call("quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        if self.proc.returncode == 0:
            os.unlink(self.log.name)


def worker_env(mode, env):
    """The environment variables of one of our workers beyond the harness's own: `env` (the
    variant's), plus what main.py sets for the row's mode."""
    merged = {**os.environ, **env}
    try:
        perf_env.configure(MAIN_MODES[mode], merged)
    except UserError as error:
        raise SystemExit(f"bench_vs_timm: {error}") from None
    return {k: v for k, v in merged.items() if k in env or os.environ.get(k) != v}


def peer_python(args):
    if args.peer_python:
        return args.peer_python
    result = subprocess.run(["bash", SETUP_PEER], stdout=subprocess.PIPE, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def parse_row(text):
    try:
        mode, batch, size = text.split(":")
        if mode not in ("train", "infer"):
            raise ValueError
        return mode, int(batch), int(size)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"row must be train|infer:BATCH:SIZE, got {text!r}"
        ) from None


def parse_variant(text):
    name, _, spec = text.partition(":")
    if name in ("ours", "timm"):
        raise argparse.ArgumentTypeError(f"variant names 'ours' and 'timm' are taken: {text!r}")
    if not name or not spec:
        raise argparse.ArgumentTypeError(f"variant must be NAME:key=value,..., got {text!r}")
    env, options = {}, {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"variant item must be key=value, got {item!r}")
        (env if key.isupper() else options)[key] = value
    return name, env, options


def machine_facts():
    facts = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        lscpu = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Flags"):
                value = value.strip()
                if key.strip() == "Flags":
                    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
                    value = " ".join(f for f in value.split() if f in wanted)
                facts[key.strip()] = value
    except OSError:
        pass
    facts["python"] = platform.python_version()
    facts["loadavg_start"] = os.getloadavg()
    return facts


def median_img_s(times, batch):
    return batch / statistics.median(times)


def bench_row(contestants, row, args):
    mode, batch, size = row
    t_row = time.perf_counter()
    load = [os.getloadavg()[0]]
    base = "timm" if any(c.name == "timm" for c in contestants) else contestants[0].name
    for c in contestants:
        setup = {"mode": mode, "batch": batch, "size": size}
        if c.is_peer:
            if args.peer_channels_last or c.options.get("channels_last") == "1":
                setup["channels_last"] = True
        else:
            for key in ("data_format", "precision"):
                if key in c.options:
                    setup[key] = c.options[key]
        c.call("setup", **setup)
        t0 = time.perf_counter()
        # The first step compiles (ours: a tf.function traces twice when its first call
        # creates the optimizer's variables) or allocates (timm).
        c.traces = c.call("run", steps=1 + args.warmup).get("traces")
        print(f"  {c.name}: set up and warmed up in {time.perf_counter() - t0:.0f} s", flush=True)
    times = {c.name: [] for c in contestants}
    cpu = {c.name: [] for c in contestants}
    rounds = []
    for r in range(args.rounds):
        order = contestants if r % 2 == 0 else contestants[::-1]
        this_round = {}
        for c in order:
            time.sleep(args.pause)
            reply = c.call("run", steps=args.block)
            block = reply["times"]
            if reply.get("traces") != c.traces:  # a retrace inside the timed steps
                print(f"  warning: {c.name} traced again ({reply['traces']} traces)", flush=True)
                c.traces = reply.get("traces")
            times[c.name].extend(block)
            cpu[c.name].extend(reply["cpu"])
            this_round[c.name] = statistics.median(block)
        rounds.append(this_round)
        load.append(os.getloadavg()[0])
        summary = ", ".join(f"{n} {batch / s:.2f}" for n, s in this_round.items())
        print(f"  round {r + 1}/{args.rounds}: img/s {summary}", flush=True)
    result = {
        "mode": mode,
        "batch": batch,
        "size": size,
        "baseline": base,
        "steps_each": len(times[base]),
        "img_s": {n: median_img_s(t, batch) for n, t in times.items()},
        "best_img_s": {n: batch / min(t) for n, t in times.items()},
        "img_per_cpu_s": {n: median_img_s(t, batch) for n, t in cpu.items()},
        "times": times,
        "cpu_times": cpu,
        "round_ratios": {n: [r[base] / r[n] for r in rounds] for n in times if n != base},
        "loadavg_1min": load,
        "seconds": time.perf_counter() - t_row,
    }
    return result


def print_table(results):
    base = results[0]["baseline"]
    names = [n for n in results[0]["img_s"] if n != base]
    header = "| row | batch | size | steps each |"
    header += "".join(f" {n} img/s |" for n in names) + f" {base} img/s |"
    header += "".join(
        f" {n}/{base} | {n} round ratios | {n}/{base} best step | {n}/{base} CPU time |"
        for n in names
    )
    header += " load (1-min) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for res in results:
        line = f"| {res['mode']} | {res['batch']} | {res['size']} | {res['steps_each']} |"
        line += "".join(f" {res['img_s'][n]:.2f} |" for n in names)
        line += f" {res['img_s'][base]:.2f} |"
        for n in names:
            ratio = res["img_s"][n] / res["img_s"][base]
            rr = res["round_ratios"][n]
            best = res["best_img_s"][n] / res["best_img_s"][base]
            per_cpu = res["img_per_cpu_s"][n] / res["img_per_cpu_s"][base]
            line += f" **{ratio:.2f}** | {min(rr):.2f}-{max(rr):.2f} | {best:.2f} | {per_cpu:.2f} |"
        load = res["loadavg_1min"]
        line += f" {min(load):.1f}-{max(load):.1f} |"
        print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", type=parse_row, default=None, metavar="MODE:B:S")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    parser.add_argument(
        "--inter_op", type=int, default=None, help="our inter-op threads (default: TF's)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--block", type=int, default=2, help="steps per block")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps after the first")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds before each block")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[])
    parser.add_argument("--no_ours", action="store_true", help="only the variants vs timm")
    parser.add_argument(
        "--no_peer", action="store_true", help="no timm: the variants against ours only"
    )
    parser.add_argument("--peer_python", default=None, help="python of the peer venv")
    parser.add_argument("--peer_channels_last", action="store_true")
    parser.add_argument(
        "--peer_omp_wait",
        choices=("passive", "active", "default"),
        default="passive",
        help="timm's OMP_WAIT_POLICY (default passive: see benchmarks/RESULTS.md)",
    )
    parser.add_argument("--json", default=None, help="write all step times here")
    parser.add_argument("--worker", choices=("ours",), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        serve(OursWorker())
        return
    rows = args.rows or [parse_row(r) for r in DEFAULT_ROWS]
    specs = [] if args.no_ours else [("ours", {}, {})]
    specs += args.variant
    if len(specs) + (not args.no_peer) < 2:
        parser.error("nothing to compare: give --variant with --no_ours or --no_peer")
    if args.no_peer and any(options.get("peer") == "1" for _, _, options in specs):
        parser.error("a timm variant (peer=1) needs timm: drop --no_peer")
    facts = machine_facts()
    peer_argv = None if args.no_peer else [peer_python(args), PEER_SCRIPT]
    print(f"machine: {json.dumps(facts)}", flush=True)
    results = []
    for row in rows:
        print(f"row {row[0]} batch {row[1]} @ {row[2]}:", flush=True)
        contestants = []
        try:
            start_contestants(contestants, specs, row[0], args, peer_argv)
            result = bench_row(contestants, row, args)
        finally:
            for c in contestants:
                c.close()
        result["workers"] = {c.name: c.info for c in contestants}
        results.append(result)
    facts["loadavg_end"] = os.getloadavg()
    print(
        f"\nintra-op threads {args.threads} (both); medians of {args.rounds} rounds x "
        f"{args.block} steps each, after 1 + {args.warmup} warm-up steps; ABBA alternation\n"
    )
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": sys.argv[1:], "machine": facts, "rows": results}, f, indent=1)


def start_contestants(contestants, specs, mode, args, peer_argv):
    """Starts the workers of one row into `contestants` (the caller closes them), ours with
    main.py's environment for the row's mode, and says hello to each."""
    ours_argv = [sys.executable, "-m", "benchmarks.bench_vs_timm", "--worker", "ours"]
    peer_env = {"OMP_NUM_THREADS": str(args.threads)}
    if args.peer_omp_wait != "default":
        peer_env["OMP_WAIT_POLICY"] = args.peer_omp_wait.upper()
    for name, env, options in specs:
        if options.get("peer") == "1":
            contestants.append(Contestant(name, peer_argv, {**peer_env, **env}, options))
            continue
        argv = [sys.executable, options["worker"]] if "worker" in options else ours_argv
        contestants.append(Contestant(name, argv, worker_env(mode, env), options))
    if peer_argv:
        contestants.append(Contestant("timm", peer_argv, peer_env))
    for c in contestants:
        hello = {"threads": args.threads}
        if not c.is_peer:
            if args.inter_op is not None:
                hello["inter_op"] = args.inter_op
            for key in ("inter_op", "intra_op"):
                if key in c.options:
                    hello[key] = int(c.options[key])
        c.info = c.call("hello", **hello)
        c.info["variant"] = {**c.env, **c.options}
        print(f"  {c.name}: {json.dumps(c.info)}", flush=True)


if __name__ == "__main__":
    main()
