"""Time the CPU formulations of ResNeXt101-32x4d's grouped 3x3 convolutions.

For each grouped-conv shape of resnext101-32x4d (batch 8 at 224x224 by default) prints the
median time of the forward pass and of forward + backward for each implementation of
`model.layers.grouped_conv`, plus a dense 3x3 conv of the same shape for context. The
implementations alternate within each repetition so machine drift hits them alike.

    .venv/bin/python -m benchmarks.bench_grouped_conv [--batch 8] [--reps 7]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from model.layers.grouped_conv import grouped_conv2d  # noqa: E402

# (input H=W, channels, stride): the 3x3 grouped conv keeps the channel count.
SHAPES_224 = [
    (56, 128, 1),
    (28, 256, 1),
    (14, 512, 1),
    (7, 1024, 1),
    (56, 256, 2),
    (28, 512, 2),
    (14, 1024, 2),
]
OLD = ("depthwise", "split")
NEW = "cpu"
# "native" is TensorFlow's own gradient of the grouped conv: on CPU it needs oneDNN and
# fails for float16; "dense" is a groups=1 conv of the same shape (32x the FLOPs).
CONTEXT = ("native", "dense")
GROUPS = 32


def make_fns(impl, stride, groups):
    if impl == "dense":
        groups, impl = 1, "native"

    @tf.function
    def fwd(x, kernel):
        return grouped_conv2d(x, kernel, groups, stride, implementation=impl)

    @tf.function
    def fwd_bwd(x, kernel, dy):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = grouped_conv2d(x, kernel, groups, stride, implementation=impl)
        return tape.gradient(y, [x, kernel], output_gradients=dy)

    return fwd, fwd_bwd


def time_once(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    for t in tf.nest.flatten(out):
        t.numpy()
    return time.perf_counter() - start


def bench_shape(batch, size, channels, stride, reps, impls):
    out_size = -(-size // stride)
    x = tf.random.normal([batch, size, size, channels])
    dy = tf.random.normal([batch, out_size, out_size, channels])
    kernels = {
        "grouped": tf.random.normal([3, 3, channels // GROUPS, channels]) * 0.1,
        "dense": tf.random.normal([3, 3, channels, channels]) * 0.01,
    }
    fns = {impl: make_fns(impl, stride, GROUPS) for impl in impls}
    times = {impl: ([], []) for impl in impls}
    failed = set()
    for rep in range(reps + 1):  # rep 0 traces and warms up
        for impl in impls:
            if impl in failed:
                continue
            kernel = kernels["dense" if impl == "dense" else "grouped"]
            fwd, fwd_bwd = fns[impl]
            try:
                t_f = time_once(fwd, x, kernel)
                t_fb = time_once(fwd_bwd, x, kernel, dy)
            except tf.errors.OpError as err:  # e.g. "native" without oneDNN
                print(f"  {impl}: {type(err).__name__}: {err.message.splitlines()[0][:100]}")
                failed.add(impl)
                continue
            if rep:
                times[impl][0].append(t_f)
                times[impl][1].append(t_fb)
    nan = float("nan")
    return {
        impl: (statistics.median(f), statistics.median(fb)) if f else (nan, nan)
        for impl, (f, fb) in times.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument(
        "--image_size", type=int, default=224, help="feature maps scale with it (224: 56..7)"
    )
    parser.add_argument(
        "--no_context", action="store_true", help="time only the old and new CPU formulations"
    )
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")  # one tf.function per shape and formulation retraces

    impls = [*OLD, NEW] + ([] if args.no_context else list(CONTEXT))
    print(
        f"grouped 3x3 conv, groups={GROUPS}, batch {args.batch}, median of {args.reps} reps, "
        f"seconds; fwd / fwd+bwd; ratio = old time / new ('{NEW}') time; "
        f"TF {tf.__version__}, {os.cpu_count()} CPUs"
    )
    header = f"{'shape':<22}" + "".join(f"{impl:>16}" for impl in impls)
    header += "".join(f"{o + '/' + NEW:>18}" for o in OLD)
    print(header)
    print("-" * len(header))
    totals = {impl: [0.0, 0.0] for impl in impls}
    for size, channels, stride in SHAPES_224:
        size = max(1, size * args.image_size // 224)
        res = bench_shape(args.batch, size, channels, stride, args.reps, impls)
        out = -(-size // stride)
        label = f"{size}x{size}x{channels}" + (f" s{stride}->{out}" if stride > 1 else "")
        row = f"{label:<22}" + "".join(f"{res[i][0]:>7.4f}/{res[i][1]:<8.4f}" for i in impls)
        row += "".join(
            f"{res[o][0] / res[NEW][0]:>8.2f}/{res[o][1] / res[NEW][1]:<9.2f}" for o in OLD
        )
        print(row, flush=True)
        for impl in impls:
            totals[impl][0] += res[impl][0]
            totals[impl][1] += res[impl][1]
    row = f"{'sum of shapes':<22}" + "".join(
        f"{totals[i][0]:>7.4f}/{totals[i][1]:<8.4f}" for i in impls
    )
    row += "".join(
        f"{totals[o][0] / totals[NEW][0]:>8.2f}/{totals[o][1] / totals[NEW][1]:<9.2f}" for o in OLD
    )
    print("-" * len(header))
    print(row)


if __name__ == "__main__":
    main()
