"""One rank of tests/test_tfdist.py: a tiny Keras model trained a few steps with the
tf.distribute engine, then a scenario (argv[1]): "train" writes what it saw to
argv[2]/rank<N>.npz; "raise" makes rank 1 fail in an agreed phase; "kill" makes rank 1
SIGKILL itself before a collective; "sleep" makes rank 1 hang.
"""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from utils.core.errors import UserError  # noqa: E402
from utils.distributed.tfdist import TfDistProcesses  # noqa: E402


def main(scenario, out_dir):
    dist = TfDistProcesses()
    keras = tf.keras
    tf.random.set_seed(dist.rank)  # different initial weights: the broadcast must fix them
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1)
    variables = model.trainable_variables
    optimizer.build(variables)
    dist.broadcast_variables(model.variables)
    rng = np.random.default_rng(100 + dist.rank)  # each rank its own data

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        local = tape.gradient(loss, variables)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = dist.gradient_tape(tape).gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss, local, grads

    before, locals_, applied = [], [], []
    for _ in range(3):
        x = rng.normal(size=(8, 4)).astype(np.float32)
        y = rng.normal(size=(8, 2)).astype(np.float32)
        before.append([v.numpy() for v in variables])
        with dist.failures_as_errors():
            _, local, grads = step(x, y)
        locals_.append([g.numpy() for g in local])
        applied.append([g.numpy() for g in grads])
    if scenario == "train":
        arrays = {"weights": np.concatenate([v.numpy().ravel() for v in variables])}
        for i, (lo, ap) in enumerate(zip(locals_, applied)):
            arrays[f"local{i}"] = np.concatenate([g.ravel() for g in lo])
            arrays[f"applied{i}"] = np.concatenate([g.ravel() for g in ap])
        arrays["sum"] = dist.sum(np.array([dist.rank + 1, 10], np.int64))
        arrays["mean"] = dist.mean([dist.rank, 2.0])
        arrays["gather"] = dist.gather([dist.rank, 7 * dist.rank], name="pair")
        dist.barrier()
        np.savez(os.path.join(out_dir, f"rank{dist.rank}.npz"), **arrays)
        print(f"rank {dist.rank} done", flush=True)
        return 0
    if scenario == "raise":
        with dist.failures_as_errors(), dist.agree_on_errors():
            if dist.rank == 1:
                raise UserError("rank 1's shard is unreadable")
        return 0
    if scenario in ("kill", "sleep"):
        if dist.rank == 1:
            if scenario == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        with dist.failures_as_errors():
            dist.sum(1)
            print("rank 0 passed a collective without rank 1", flush=True)
        return 0
    raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "."))
    except UserError as error:
        print(f"main.py: error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
