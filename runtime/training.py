"""The training step and loop: loss, weight decay, loss scaling, logging, checkpoints, stop.

One compiled step (`tf.function`, `jit_compile` with --xla) takes a batch of images and
float32 targets; for a QAT model (--quantize) it first tells the quantizers the step. The
loop logs as the original did, saves every `CHECKPOINT_EVERY` steps and at the end, and
stops cleanly on SIGTERM/SIGUSR1/SIGINT with a checkpoint. With several processes (Horovod) the
gradients are averaged in the step, and before every step the ranks exchange a stop
signal and a data error, so a SIGTERM or a failing input on any rank stops all of them
after the same step. Logged losses are averages over ranks; throughput is the job's
(all ranks) plus each rank's.
"""

import functools
import os
import signal
import sys
import time

import numpy as np
import tensorflow as tf

from model import quantization
from utils import distributed
from utils.core.errors import UserError
from utils.logs.progress import Progress
from utils.losses import cross_entropy, decayed_variables, l2_loss
from utils.precision import loss_scaling

CHECKPOINT_EVERY = 1000
LOG_WARMUP_STEPS = 20  # the original's training hook logs from the 21st step on


def _divergence(total_loss, step, args):
    """The error that stops a diverged run before it overwrites good checkpoints with NaN
    weights, or None while the loss is finite."""
    if np.isfinite(total_loss):
        return None
    hint = "lower --lr_init"
    if loss_scaling(args) and args.static_loss_scale != -1:
        hint = "drop --static_loss_scale for dynamic loss scaling, or use a smaller scale"
    return UserError(
        f"training diverged at step {step}: total_loss is {total_loss}; {hint} "
        f"(checkpoints in {args.model_dir} are from before this point)"
    )


class StopRequest:
    """Remembers a SIGTERM, SIGUSR1 or SIGINT (Ctrl-C) so the loop can stop at the next
    step boundary and save; a second SIGINT exits at once (130) without saving.
    `StopRequest.exit_code` is 130 once a run was stopped by SIGINT, else 0."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    exit_code = 0

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
        if self.signal == signal.SIGINT:
            StopRequest.exit_code = 128 + signal.SIGINT

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            print("main.py: second Ctrl-C: exiting without saving", file=sys.stderr, flush=True)
            os._exit(128 + signal.SIGINT)
        if signum == signal.SIGINT:
            print(
                "Ctrl-C: stopping after this step (press again to exit without saving)",
                file=sys.stderr,
                flush=True,
            )
        self.signal = signum


def make_train_step(model, optimizer, dist, weight_decay, amp, xla):
    """The compiled training step: (images, targets) -> (cross_entropy, l2, total loss).
    `amp`: scale the loss (float16; the optimizer is a LossScaleOptimizer)."""
    variables = model.trainable_variables
    decayed = decayed_variables(model)

    def losses_and_gradients(images, targets, tape_wrapper):
        # QAT (a no-op for float models): the quantization delay counts applied steps.
        # A LossScaleOptimizer's `iterations` is its inner optimizer's, which also counts
        # the steps skipped for overflow.
        quantization.set_quant_step(model, optimizer.iterations)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            ce = cross_entropy(logits, targets)
            l2 = l2_loss(decayed, weight_decay)
            total = ce + l2
            loss_to_differentiate = optimizer.get_scaled_loss(total) if amp else total
        grads = tape_wrapper(tape).gradient(loss_to_differentiate, variables)
        return ce, l2, total, grads

    def apply(grads):
        # Horovod has averaged the still-scaled gradients over ranks; unscaling comes after,
        # so an overflow on any rank reaches every rank, and all of them skip the step and
        # lower the (shared) loss scale together (LossScaleOptimizer.apply_gradients).
        if amp:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, variables))

    if xla and dist.size > 1:
        # Horovod's collectives have no XLA kernels: compile the forward and backward pass,
        # and average and apply the gradients outside it.
        compiled = tf.function(
            functools.partial(losses_and_gradients, tape_wrapper=lambda tape: tape),
            jit_compile=True,
            reduce_retracing=True,
        )

        @tf.function(reduce_retracing=True)
        def train_step_xla(images, targets):
            ce, l2, total, grads = compiled(images, targets)
            apply(dist.average_gradients(grads))
            return ce, l2, total

        return train_step_xla

    @tf.function(jit_compile=xla, reduce_retracing=True)
    def train_step(images, targets):
        ce, l2, total, grads = losses_and_gradients(images, targets, dist.gradient_tape)
        apply(grads)
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
            model, optimizer, dist, args.weight_decay, loss_scaling(args), args.xla
        )
        self.summary = None
        if dist.is_chief and keeper is not None:
            self.summary = tf.summary.create_file_writer(f"{args.results_dir}/tensorboard")

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    def _epoch(self, step):
        return int(step // self.plan.steps_per_epoch)

    def run(self, dataset, targets_fn, steps, benchmark_warmup=None):
        """Train for `steps` steps; returns a dict of throughput figures.

        `dataset` yields (images, labels); `targets_fn(images, labels, step)` turns them into
        (images, float32 targets) for the step (inputs.make_targets_fn).

        A step's time, as in the original's hooks, runs from asking for the batch to the
        step's end, so it includes waiting for the input. `benchmark_warmup`: in benchmark
        mode, time every step (synchronised) and leave out this many. Otherwise the first
        `LOG_WARMUP_STEPS` steps are neither logged nor in `train_throughput`.
        """
        dist = self.dist
        start = self.step
        iterator = iter(dataset)
        progress = Progress(start + steps, self.global_batch, label="train", enabled=dist.is_chief)
        self._window = [time.perf_counter(), 0]  # start time, steps since the last log line
        self._warned_nan = False
        step_times, compute_times, marks, stopped_by = [], [], {}, []
        with StopRequest() as stop:
            for i in range(steps):
                t_ask = time.perf_counter()
                batch, error = None, None
                try:
                    batch = next(iterator)
                except Exception as caught:  # this rank's input failed: all ranks end below
                    error = caught
                stopped_by = self._sync(stop, error)
                if stopped_by:
                    break
                step = start + i + 1
                t0 = time.perf_counter()
                factor = distributed.FIRST_STEP_FACTOR if i == 0 else 1  # compiles
                with dist.watch(f"training step {step}", factor):
                    images, targets = targets_fn(*batch, tf.constant(step - 1, tf.int64))
                    losses = self.step_fn(images, targets)
                    if benchmark_warmup is not None:
                        losses[2].numpy()
                        step_times.append(time.perf_counter() - t_ask)
                        compute_times.append(time.perf_counter() - t0)
                self._after_step(step, i, losses, last=i == steps - 1, benchmark=benchmark_warmup)
                progress.update(step)
                marks.setdefault(min(i + 1, LOG_WARMUP_STEPS), time.perf_counter())
            else:
                stopped_by = self._sync(stop, None)  # a signal during the last step
        train_end = time.perf_counter()
        progress.close()
        ran = self._finish(start, stopped_by)
        result = {"steps": ran, "stopped": bool(stopped_by)}
        if benchmark_warmup is not None:
            result.update(self._benchmark_figures(step_times, compute_times, benchmark_warmup))
        elif ran > 1:
            skipped = LOG_WARMUP_STEPS if ran > LOG_WARMUP_STEPS else 1
            result.update(self._throughput(ran - skipped, train_end - marks[skipped]))
        return result

    def _benchmark_figures(self, step_times, compute_times, warmup):
        """Whole-step throughput (input wait included) after `warmup` steps; compute-only."""
        measured = step_times[warmup:]
        if not measured:
            return {}
        result = self._throughput(len(measured), sum(measured))
        result["train_compute_throughput"] = (
            self.global_batch * len(measured) / sum(compute_times[warmup:])
        )
        result["train_step_time_median_ms"] = 1000 * float(np.median(measured))
        return result

    def _after_step(self, step, index, losses, last, benchmark):
        """As the original: log every --display_every steps (and at the last step and
        before a save) once this run is past its first LOG_WARMUP_STEPS steps, and the
        losses at the end of every epoch (step [epoch]). Check for a diverged loss at those
        points from the start (a benchmark only warns); save every CHECKPOINT_EVERY steps."""
        args, dist = self.args, self.dist
        self._window[1] += 1
        save_now = self.keeper is not None and step % CHECKPOINT_EVERY == 0
        display = step % args.display_every == 0 or last or save_now
        epoch_end = self._epoch(step) > self._epoch(step - 1)
        if display or epoch_end:
            values = [float(v) for v in dist.mean(list(losses))]
            diverged = _divergence(values[2], step, args)
            if diverged is not None and benchmark is None:
                dist.fail(diverged)
            if diverged is not None and not self._warned_nan and dist.is_chief:
                self._warned_nan = True  # a benchmark measures speed: it goes on
                print(f"warning: {values[2]} loss at step {step}", file=sys.stderr)
            if display and index >= LOG_WARMUP_STEPS:
                now = time.perf_counter()
                img_s = self.global_batch * self._window[1] / (now - self._window[0])
                self._window = [now, 0]
                self._log_step(step, img_s, *values)
            if epoch_end:
                names = ("cross_entropy", "l2_loss", "total_loss")
                data = {**dict(zip(names, values)), "learning_rate": self._lr(step)}
                self.logger.log((self._epoch(step - 1),), data)
        if index + 1 == LOG_WARMUP_STEPS:
            self._window = [time.perf_counter(), 0]  # imgs_per_sec starts after them
        if save_now:
            self.keeper.save(step)

    def _finish(self, start, stopped_by):
        """Save the last step unless just saved, say who stopped training; steps run."""
        dist = self.dist
        ran = self.step - start
        if self.keeper is not None and ran and self.step % CHECKPOINT_EVERY:
            self.keeper.save(self.step)
        if stopped_by and dist.is_chief:
            names = sorted({signal.Signals(sig).name for _, sig in stopped_by})
            where = ""
            if dist.size > 1:
                where = " on rank " + ", ".join(str(rank) for rank, _ in stopped_by)
            saved = "; checkpoint saved" if self.keeper is not None else ""
            print(
                f"training stopped by {'/'.join(names)}{where} at step {self.step}{saved}",
                flush=True,
            )
        return ran

    def _sync(self, stop, error):
        """Before each step (and after the last): every rank learns whether any rank has a
        stop signal or an input error. Returns [(rank, signal)] of the ranks that want to
        stop; an input error on any rank ends every rank (`dist.check`)."""
        status = self.dist.gather([stop.signal or 0, int(error is not None)], name="status")
        if status[:, 1].any():
            self.dist.check(error)
        return [(rank, int(sig)) for rank, (sig, _) in enumerate(status) if sig]

    def _throughput(self, steps, seconds):
        """The job's img/s (all ranks, paced by the slowest) and each rank's img/s."""
        per_rank_seconds = self.dist.gather([seconds], name="train_seconds")[:, 0]
        images = self.args.batch_size * steps
        return {
            "train_throughput": images * self.dist.size / float(per_rank_seconds.max()),
            "train_throughput_per_rank": [images / float(s) for s in per_rank_seconds],
        }

    def _lr(self, step):
        """The learning rate step `step` (1-based) was taken with."""
        return float(self.schedule(step - 1))

    def _log_step(self, step, img_s, ce, l2, total):
        lr = self._lr(step)
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
