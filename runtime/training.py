"""The training step and loop: loss, weight decay, loss scaling, logging, checkpoints, stop.

One compiled step (`tf.function`, `jit_compile` with --xla) takes a batch of images and
float32 targets. The loop around it logs, saves checkpoints every `CHECKPOINT_EVERY`
steps and at the end, and stops cleanly on SIGTERM/SIGUSR1 with a checkpoint.
"""

import signal
import time

import numpy as np
import tensorflow as tf

from utils.errors import UserError
from utils.losses import cross_entropy, decayed_variables, l2_loss
from utils.progress import Progress

CHECKPOINT_EVERY = 1000


def _check_finite(total_loss, step, args):
    """Stop a diverged run before it overwrites good checkpoints with NaN weights."""
    if np.isfinite(total_loss):
        return
    hint = "lower --lr_init"
    if args.amp and args.static_loss_scale != -1:
        hint = "drop --static_loss_scale for dynamic loss scaling, or use a smaller scale"
    raise UserError(
        f"training diverged at step {step}: total_loss is {total_loss}; {hint} "
        f"(checkpoints in {args.model_dir} are from before this point)"
    )


class StopRequest:
    """Remembers a SIGTERM or SIGUSR1 so the loop can stop at the next step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        del frame
        self.signal = signum


def make_train_step(model, optimizer, dist, weight_decay, amp, xla):
    variables = model.trainable_variables
    decayed = decayed_variables(model)

    @tf.function(jit_compile=xla, reduce_retracing=True)
    def train_step(images, targets):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            ce = cross_entropy(logits, targets)
            l2 = l2_loss(decayed, weight_decay)
            total = ce + l2
            loss_to_differentiate = optimizer.get_scaled_loss(total) if amp else total
        # Horovod averages the (still scaled) gradients; unscaling after is exact.
        grads = dist.gradient_tape(tape).gradient(loss_to_differentiate, variables)
        if amp:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, variables))
        return ce, l2, total

    return train_step


class Trainer:
    """Runs `steps` training steps from the optimizer's current step."""

    def __init__(self, model, optimizer, schedule, dist, logger, args, plan, keeper=None):
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.dist = dist
        self.logger = logger
        self.args = args
        self.plan = plan
        self.keeper = keeper
        self.global_batch = args.batch_size * dist.size
        self.step_fn = make_train_step(
            model, optimizer, dist, args.weight_decay, args.amp, args.xla
        )
        self.summary = None
        if dist.is_chief and keeper is not None:
            self.summary = tf.summary.create_file_writer(f"{args.results_dir}/tensorboard")

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    def _epoch(self, step):
        return int(step // self.plan.steps_per_epoch)

    def run(self, dataset, steps, benchmark_warmup=None):
        """Train for `steps` steps; returns a dict of throughput figures.

        `benchmark_warmup`: in benchmark mode, time every step and leave out this many.
        """
        args = self.args
        start = self.step
        iterator = iter(dataset)
        progress = Progress(
            start + steps, self.global_batch, label="train", enabled=self.dist.is_chief
        )
        step_times = []
        window_start, window_steps = time.perf_counter(), 0
        stopped_by = None
        with StopRequest() as stop:
            for i in range(steps):
                images, targets = next(iterator)
                t0 = time.perf_counter()
                ce, l2, total = self.step_fn(images, targets)
                step = start + i + 1
                window_steps += 1
                if benchmark_warmup is not None:
                    total.numpy()
                    step_times.append(time.perf_counter() - t0)
                save_now = self.keeper is not None and step % CHECKPOINT_EVERY == 0
                if step % args.display_every == 0 or i == steps - 1 or save_now:
                    values = [float(v) for v in (ce, l2, total)]
                    _check_finite(values[2], step, args)
                    now = time.perf_counter()
                    img_s = self.global_batch * window_steps / (now - window_start)
                    window_start, window_steps = now, 0
                    self._log_step(step, img_s, *values)
                progress.update(step)
                if save_now:
                    self.keeper.save(step)
                if self.dist.any(stop.signal is not None):
                    stopped_by = stop.signal
                    break
        progress.close()
        ran = self.step - start
        if self.keeper is not None and ran and self.step % CHECKPOINT_EVERY:
            self.keeper.save(self.step)
        if stopped_by is not None:
            name = signal.Signals(stopped_by).name if stopped_by else "another rank's signal"
            print(f"training stopped by {name} at step {self.step}; checkpoint saved", flush=True)
        result = {"steps": ran, "stopped": stopped_by is not None}
        if benchmark_warmup is not None:
            measured = step_times[benchmark_warmup:]
            if measured:
                result["train_throughput"] = self.global_batch * len(measured) / sum(measured)
                result["train_throughput_per_rank"] = (
                    args.batch_size * len(measured) / sum(measured)
                )
                result["train_step_time_median_ms"] = 1000 * float(np.median(measured))
        return result

    def _log_step(self, step, img_s, ce, l2, total):
        lr = float(self.schedule(step - 1))
        data = {
            "imgs_per_sec": img_s,
            "cross_entropy": ce,
            "l2_loss": l2,
            "total_loss": total,
            "learning_rate": lr,
        }
        self.logger.log((self._epoch(step), step), data)
        if self.summary is not None:
            with self.summary.as_default(step=step):
                for name, value in data.items():
                    tf.summary.scalar(name, value)
