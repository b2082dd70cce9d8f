"""Which data a run reads (TFRecords or synthetic), how many steps that makes, and the
training targets (smoothed one-hot, mixup) added to each batch in the input pipeline.

Mixup draws from a Gamma distribution, which XLA cannot compile, so targets are built in
tf.data rather than inside the (possibly jit-compiled) training step.
"""

from dataclasses import dataclass

import tensorflow as tf

from utils import data_utils
from utils.errors import UserError
from utils.losses import mixup, smoothed_one_hot


@dataclass
class StepPlan:
    steps_per_epoch: float
    total_steps: int
    num_train_records: int  # 0 for synthetic data


def image_size(args):
    return args.image_size if args.data_dir else args.synthetic_data_size


def plan_steps(args, dist):
    """Steps as the original counts them: epochs of the global batch, or batches."""
    global_batch = args.batch_size * dist.size
    if not args.data_dir:
        # Synthetic data has no epochs: --num_iter counts batches whatever --iter_unit says.
        return StepPlan(
            steps_per_epoch=args.num_iter, total_steps=args.num_iter, num_train_records=0
        )
    records = data_utils.count_records(data_utils.list_files(args.data_dir, "train"))
    steps_per_epoch = records // global_batch
    if steps_per_epoch < 1:
        raise UserError(
            f"{args.data_dir} has {records} training images, fewer than one global batch "
            f"({global_batch} = --batch_size {args.batch_size} x {dist.size} processes)"
        )
    total = steps_per_epoch * args.num_iter if args.iter_unit == "epoch" else args.num_iter
    return StepPlan(steps_per_epoch, total, records)


def training_dataset(args, dist, seed, start_step=0):
    """Batches of (images, targets) from step `start_step` on."""
    size = image_size(args)
    if args.data_dir:
        ds = data_utils.train_dataset(
            args.data_dir,
            args.batch_size,
            size,
            num_shards=dist.size,
            shard_index=dist.rank,
            seed=seed,
            num_classes=args.num_classes,
            start_batch=start_step,
        )
    else:  # one batch repeated: every step sees the same data
        ds = data_utils.synthetic_dataset(args.batch_size, size, args.num_classes, seed=seed)
    return with_targets(ds, args, seed, start_step)


def with_targets(ds, args, seed, start_step=0):
    """(images, labels) -> (images, float32 targets) with label smoothing and mixup."""
    num_classes, smoothing, alpha = args.num_classes, args.label_smoothing, args.mixup

    def targets(step, batch):
        images, labels = batch
        one_hot = smoothed_one_hot(labels, num_classes, smoothing)
        if alpha > 0:
            mix_seed = None if seed is None else tf.stack([tf.cast(seed, tf.int64), step])
            images, one_hot = mixup(images, one_hot, alpha, seed=mix_seed)
        return images, one_hot

    ds = ds.enumerate(start=start_step).map(targets, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(args, dist):
    return data_utils.eval_dataset(
        args.data_dir,
        args.batch_size,
        args.image_size,
        num_shards=dist.size,
        shard_index=dist.rank,
    )


def inference_dataset(args):
    """Real validation images when --data_dir is given, else one synthetic batch repeated."""
    if args.data_dir:
        return evaluation_dataset(args, _single).repeat()
    return data_utils.synthetic_dataset(
        args.batch_size, args.synthetic_data_size, args.num_classes, seed=args.seed
    )


class _SingleShard:
    size = 1
    rank = 0


_single = _SingleShard()
