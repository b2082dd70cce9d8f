"""Which data a run reads (tf.data or DALI over TFRecords, or synthetic), how many steps
that makes, and the training targets (smoothed one-hot, mixup) of each batch.

Targets are made by `make_targets_fn`, a small `tf.function` the training loop calls
between the input pipeline and the training step: mixup draws from a Gamma distribution,
which XLA cannot compile, and a DALI dataset on a GPU cannot be followed by tf.data maps.
"""

import argparse
import math
import os
from dataclasses import dataclass

import tensorflow as tf

from utils import data_utils
from utils.core.errors import UserError, tf_error_message
from utils.losses import mixup, smoothed_one_hot
from utils.modes import MODES


@dataclass
class StepPlan:
    steps_per_epoch: float  # fractional with --iter_unit batch, as the original
    total_steps: int
    decay_steps: int  # length of the cosine decay
    num_train_records: int  # 0 for synthetic data


def image_size(args):
    return args.image_size if args.data_dir else args.synthetic_data_size


def plan_steps(args: argparse.Namespace, dist) -> StepPlan:
    """Steps as the original counts them (its `count_steps`): epochs of the global batch,
    or batches; with --iter_unit batch the decay still spans 90 epochs of the data.

    Args:
        args: the parsed command line (data_dir, batch_size, num_iter, iter_unit).
        dist: the process group (its size makes the global batch).
    """
    global_batch = args.batch_size * dist.size
    if not args.data_dir:
        # Synthetic data has no epochs: --num_iter counts batches whatever --iter_unit says.
        return StepPlan(args.num_iter, args.num_iter, args.num_iter, num_train_records=0)
    records = data_utils.count_records(data_utils.list_files(args.data_dir, "train"))
    steps_per_epoch = records // global_batch
    if steps_per_epoch < 1:
        raise UserError(
            f"{args.data_dir} has {records} training images, fewer than one global batch "
            f"({global_batch} = --batch_size {args.batch_size} x {dist.size} processes)"
        )
    if args.iter_unit == "epoch":
        total = steps_per_epoch * args.num_iter
        return StepPlan(steps_per_epoch, total, total, records)
    epochs = math.ceil(args.num_iter / steps_per_epoch)
    decay = 90 * records // global_batch
    return StepPlan(args.num_iter / epochs, args.num_iter, decay, records)


def steps_this_run(args: argparse.Namespace, plan: StepPlan, start: int) -> int:
    """Steps this invocation trains: --run_iter counts in --iter_unit (run_iter epochs of
    steps_per_epoch steps, or run_iter batches), -1 all remaining.

    Args:
        args: the parsed command line (run_iter, iter_unit).
        plan: the run's `plan_steps`.
        start: the step training resumes from.
    """
    remaining = plan.total_steps - start
    if args.run_iter == -1:
        return remaining
    per_unit = plan.steps_per_epoch if args.iter_unit == "epoch" else 1
    return min(max(1, int(args.run_iter * per_unit)), remaining)


def _dali():
    from utils import dali_utils  # imports DALI only for --dali runs

    return dali_utils


def training_dataset(args, dist, seed, start_step=0):
    """Batches of (images, labels) from step `start_step` on."""
    size = image_size(args)
    shard = {"num_shards": dist.size, "shard_index": dist.rank}
    if args.dali:
        # DALI restarts its own stream on resume: the batches differ from an uninterrupted
        # run's, the schedule and weights do not.
        return _dali().train_dataset(
            args.data_dir, args.data_idx_dir, args.batch_size, size, seed=seed, **shard
        )
    if args.data_dir:
        return data_utils.train_dataset(
            args.data_dir,
            args.batch_size,
            size,
            seed=seed,
            num_classes=args.num_classes,
            start_batch=start_step,
            **shard,
        )
    # One batch repeated: every step sees the same data.
    return data_utils.synthetic_dataset(args.batch_size, size, args.num_classes, seed=seed)


def make_targets_fn(args, seed):
    """(images, labels, step) -> (images, float32 targets) with label smoothing and mixup.

    With a seed, mixup's draws depend only on (seed, step), so a resumed run repeats them.
    """
    num_classes, smoothing, alpha = args.num_classes, args.label_smoothing, args.mixup

    @tf.function(reduce_retracing=True)
    def targets(images, labels, step):
        one_hot = smoothed_one_hot(labels, num_classes, smoothing)
        if alpha > 0:
            mix_seed = None if seed is None else tf.stack([tf.constant(seed, tf.int64), step])
            images, one_hot = mixup(images, one_hot, alpha, seed=mix_seed)
        return images, one_hot

    return targets


def evaluation_dataset(args, dist):
    """Batches of this rank's shard of the validation images, each image once."""
    shard = {"num_shards": dist.size, "shard_index": dist.rank}
    if args.dali:
        dali = _dali()
        ds, num_images = dali.eval_dataset(
            args.data_dir, args.data_idx_dir, args.batch_size, args.image_size, **shard
        )
        return dali.real_batches(ds, num_images)
    return data_utils.eval_dataset(args.data_dir, args.batch_size, args.image_size, **shard)


def counts_whole_set(args: argparse.Namespace) -> bool:
    """True when an evaluation scores every validation image once (the port's rule for
    the evaluation after training and a plain `--mode evaluate`), False when it runs a
    number of fixed-size batches as the original (--iter_unit batch or --num_iter N).

    Args:
        args: the parsed command line (mode, iter_unit, num_iter).
    """
    mode = MODES[args.mode]
    if mode.trains:
        return not mode.benchmark
    return mode.evaluates and args.iter_unit == "epoch" and args.num_iter == 1


def evaluation_steps(args: argparse.Namespace, dist) -> int:
    """Batches per process for a fixed-count evaluation or inference benchmark: --num_iter
    batches, or --num_iter epochs of (validation images // global batch) batches.

    Args:
        args: the parsed command line (data_dir, batch_size, num_iter, iter_unit).
        dist: the process group.
    """
    if args.iter_unit == "batch" or not args.data_dir:
        return args.num_iter
    records = data_utils.count_records(data_utils.list_files(args.data_dir, "validation"))
    per_epoch = records // (args.batch_size * dist.size)
    if per_epoch < 1:
        raise UserError(
            f"{args.data_dir} has {records} validation images, fewer than one batch per "
            f"process ({args.batch_size} x {dist.size}): lower --batch_size"
        )
    return per_epoch * args.num_iter


def _full_batches(dali, ds, num_images, batch_size):
    """DALI's shard over and over, full batches only (no padding, no short last batch)."""
    while True:
        for images, labels in dali.real_batches(ds, num_images):
            if int(labels.shape[0]) == batch_size:
                yield images, labels


def _check_one_batch(shard_images, batch_size):
    if shard_images < batch_size:
        raise UserError(
            f"this process's share of the validation set has {shard_images} images, fewer "
            f"than one batch of --batch_size {batch_size}: lower --batch_size"
        )


def fixed_batches_dataset(args: argparse.Namespace, dist):
    """Endless fixed-size batches of this rank's validation shard (repeated as needed),
    or without --data_dir one synthetic batch repeated.

    Args:
        args: the parsed command line (data_dir, dali, batch_size, image sizes).
        dist: the process group (this rank's shard).
    """
    if not args.data_dir:
        return data_utils.synthetic_dataset(
            args.batch_size, args.synthetic_data_size, args.num_classes, seed=args.seed
        )
    shard = {"num_shards": dist.size, "shard_index": dist.rank}
    if args.dali:
        dali = _dali()
        ds, num_images = dali.eval_dataset(
            args.data_dir, args.data_idx_dir, args.batch_size, args.image_size, **shard
        )
        _check_one_batch(num_images, args.batch_size)
        return _full_batches(dali, ds, num_images, args.batch_size)
    files = data_utils.list_files(args.data_dir, "validation")
    _check_one_batch(
        data_utils.shard_size(data_utils.count_records(files), **shard), args.batch_size
    )
    ds = data_utils.eval_dataset(
        args.data_dir, args.batch_size, args.image_size, drop_remainder=True, **shard
    )
    return ds.repeat()


def check_validation_data(args) -> int:
    """Before training in train_and_evaluate: the `validation-*` files are all there (the
    whole `-of-NNNNN` set), each ends on a record boundary and its first record reads
    (payload checksum included), and the first records decode with labels within
    1..num_classes, so a broken validation set fails now, in one line, not after training.
    Returns the number of validation images (0: no data_dir).

    Args:
      args: the parsed command line (data_dir, num_classes).
    """
    if not args.data_dir:
        return 0
    files = data_utils.list_files(args.data_dir, "validation")
    counts = data_utils.record_counts(files)  # walks every record header
    if not sum(counts):
        raise UserError(f"the validation-* files in {args.data_dir} hold no records")
    for path, count in zip(files, counts):
        if not count:
            continue
        try:
            for _ in tf.data.TFRecordDataset(os.fsencode(path)).take(1):
                pass
        except tf.errors.OpError as e:
            raise UserError(
                f"{path}: cannot read its first record ({tf_error_message(e)}); re-create "
                "the validation files (utils/tools/build_tfrecords.py)"
            ) from None
    data_utils.probe_records(files, args.num_classes)  # images decode, labels fit the model
    return sum(counts)
