"""NVIDIA DALI input pipelines over the same TFRecords as utils/data_utils.py.

`train_dataset` and `eval_dataset` give `DALIDataset`s with the structure of the tf.data
pipelines (images float32 [B, S, S, 3] NHWC RGB, labels int32 [B] 0-based), normalised by
DALI unless `normalize=False`; `real_batches` cuts the evaluation stream to the shard's
real images. They run on the GPU ("mixed" JPEG decoding) or on the CPU, and need one
index file per record file (utils/dali_index.sh). How they shard, crop, pad and fail, and
how they differ from tf.data: docs/design.md, "DALI".
"""

import os
import shlex

import tensorflow as tf

from model.config import IMAGENET_MEAN, IMAGENET_STD
from utils import data_utils, image_processing
from utils.core.errors import UserError
from utils.data.files import check_shard
from utils.data.tfrecord import count_index_records, index_problem

DEVICES = ("cpu", "gpu")
MAX_THREADS = 8  # DALI worker threads per process
_INDEX_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dali_index.sh")


# ---------------------------------------------------------------------------------------
# Index files and shards


def index_command(data_dir, idx_dir):
    """The shell command that writes the index files for `data_dir` into `idx_dir`."""
    script = os.path.relpath(_INDEX_SCRIPT)
    if script.startswith(os.pardir):
        script = _INDEX_SCRIPT
    return f"bash {shlex.quote(script)} {shlex.quote(data_dir)} {shlex.quote(idx_dir)}"


def index_files(data_dir, idx_dir, split):
    """(record files, index files) of `split`; UserError if an index is missing or stale."""
    files = data_utils.list_files(data_dir, split)
    if not idx_dir:
        raise UserError(
            "DALI needs index files: pass --data_idx_dir, after writing them with "
            + index_command(data_dir, "IDX_DIR")
        )
    if os.path.isdir(idx_dir) and os.path.samefile(data_dir, idx_dir):
        raise UserError(
            f"--data_idx_dir {idx_dir} is the data directory; the index files need their own "
            f"(they take the record files' names): {index_command(data_dir, 'IDX_DIR')}"
        )
    indexes = [os.path.join(idx_dir, os.path.basename(path)) for path in files]
    for path, index in zip(files, indexes):
        problem = index_problem(path, index)
        if problem:
            raise UserError(
                f"DALI index file {index} (for {path}) {problem}; "
                f"write the index files with: {index_command(data_dir, idx_dir)}"
            )
    return files, indexes


def dali_shard_size(total, num_shards, shard_index):
    """Records in DALI's shard `shard_index` of `num_shards` over `total` records: DALI
    gives shard i the contiguous range [total * i // n, total * (i + 1) // n)."""
    check_shard(num_shards, shard_index)
    return total * (shard_index + 1) // num_shards - total * shard_index // num_shards


def _total(data_dir, indexes, num_shards):
    """Records listed by `indexes`. DALI fails to build (and, inside a DALIDataset, aborts
    the process) when a split has fewer records than shards, so that is a UserError here."""
    total = sum(count_index_records(index) for index in indexes)
    if total < num_shards:
        split = os.path.basename(indexes[0]).split("-")[0]
        raise UserError(
            f"{data_dir} has {total} {split} records, fewer than the {num_shards} processes; "
            "DALI needs at least one record per process"
        )
    return total


# ---------------------------------------------------------------------------------------
# Devices


def resolve_device(device=None):
    """(device, tf_device, dali_device_id) for device None (auto), "cpu" or "gpu"."""
    gpus = tf.config.get_visible_devices("GPU")
    if device is None:
        device = "gpu" if gpus else "cpu"
    if device not in DEVICES:
        raise ValueError(f"device must be None, 'cpu' or 'gpu', not {device!r}")
    if device == "cpu":
        return "cpu", "/cpu:0", None
    if not gpus:
        raise UserError("DALI on the GPU was asked for, but TensorFlow sees no GPU")
    # The runtime leaves one GPU visible to TensorFlow, which calls it /gpu:0; DALI wants
    # its CUDA ordinal, the number in its physical name ("/physical_device:GPU:3").
    return "gpu", "/gpu:0", int(gpus[0].name.rsplit(":", 1)[1])


def _num_threads():
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


def _dali():
    """The DALI modules, or a UserError saying how to install them."""
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.plugin.tf as dali_tf
        import nvidia.dali.tfrecord as tfrec
        import nvidia.dali.types as types
        from nvidia.dali import Pipeline
    except ImportError as e:
        raise UserError(
            f"--dali needs NVIDIA DALI and its TensorFlow plugin ({e}); install "
            "nvidia-dali-cuda120 and nvidia-dali-tf-plugin-cuda120 (scripts/setup_env.sh does)"
        ) from None
    return fn, types, tfrec, Pipeline, dali_tf


# ---------------------------------------------------------------------------------------
# Pipelines


def _read(fn, tfrec, files, indexes, num_shards, shard_index, training, shuffle_buffer=0):
    """The TFRecord reader of both pipelines: (encoded JPEGs, 1-based labels [1])."""
    options = {"random_shuffle": True, "initial_fill": shuffle_buffer} if training else {}
    inputs = fn.readers.tfrecord(
        path=files,
        index_path=indexes,
        features={
            "image/encoded": tfrec.FixedLenFeature((), tfrec.string, ""),
            "image/class/label": tfrec.FixedLenFeature([1], tfrec.int64, -1),
        },
        shard_id=shard_index,
        num_shards=num_shards,
        stick_to_shard=True,
        pad_last_batch=not training,
        name="Reader",
        **options,
    )
    return inputs["image/encoded"], inputs["image/class/label"]


def _build(
    *,
    training,
    files,
    indexes,
    batch_size,
    image_size,
    num_shards,
    shard_index,
    seed,
    normalize,
    device,
    shuffle_buffer=0,
):
    """The DALIDataset of one pipeline; see the module docstring."""
    fn, types, tfrec, Pipeline, dali_tf = _dali()
    device, tf_device, device_id = resolve_device(device)
    decoder = "mixed" if device == "gpu" else "cpu"
    num_threads = _num_threads()
    if seed is not None:  # one stream per shard, reproducible from the run's seed
        seed = (seed * 1_000_003 + shard_index) % (2**31 - 1)
    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
    )
    # Same JPEG decoding as tf.image.decode_jpeg: fast integer IDCT, fancy chroma upsampling.
    decode_options = {
        "output_type": types.RGB,
        "use_fast_idct": True,
        "jpeg_fancy_upsampling": True,
        "device": decoder,
    }
    resize_options = {
        "interp_type": types.INTERP_LINEAR,
        "antialias": False,  # as tf.image.resize(method="bilinear")
        "subpixel_scale": False,  # scale = output size / input size, as tf.image.resize
    }  # uint8 output (DALI's default): about 15% faster on the CPU than float here
    with pipe:
        jpegs, labels = _read(
            fn, tfrec, files, indexes, num_shards, shard_index, training, shuffle_buffer
        )
        if training:
            images = fn.decoders.image_random_crop(
                jpegs,
                random_area=list(image_processing.AREA_RANGE),
                random_aspect_ratio=list(image_processing.ASPECT_RATIO_RANGE),
                num_attempts=image_processing.MAX_ATTEMPTS,
                **decode_options,
            )
            images = fn.resize(images, resize_x=image_size, resize_y=image_size, **resize_options)
            crop = {"mirror": fn.random.coin_flip(probability=0.5)}
        else:
            images = fn.decoders.image(jpegs, **decode_options)
            images = fn.resize(
                images,
                resize_shorter=image_processing.eval_resize_size(image_size),
                **resize_options,
            )
            crop = {"crop": (image_size, image_size), "rounding": "truncate"}
        if normalize:
            crop.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="HWC", **crop)
        labels = fn.cast(labels - 1, dtype=types.INT32)
        if device == "gpu":
            labels = labels.gpu()  # every output of a GPU-placed DALIDataset is on the GPU
        pipe.set_outputs(images, labels)

    with tf.device(tf_device):
        return dali_tf.DALIDataset(
            pipeline=pipe,
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=device_id,
            output_shapes=((batch_size, image_size, image_size, 3), (batch_size,)),
            output_dtypes=(tf.float32, tf.int32),
        )


def train_dataset(
    data_dir,
    idx_dir,
    batch_size,
    image_size,
    num_shards=1,
    shard_index=0,
    seed=None,
    normalize=True,
    device=None,
):
    """Infinite DALIDataset of augmented training batches of this process's shard:
    (images float32 [B, S, S, 3], labels int32 [B] 0-based). See the module docstring."""
    check_shard(num_shards, shard_index)
    files, indexes = index_files(data_dir, idx_dir, "train")
    size = dali_shard_size(_total(data_dir, indexes, num_shards), num_shards, shard_index)
    return _build(
        training=True,
        files=files,
        indexes=indexes,
        batch_size=batch_size,
        image_size=image_size,
        num_shards=num_shards,
        shard_index=shard_index,
        seed=seed,
        normalize=normalize,
        device=device,
        shuffle_buffer=min(data_utils.TRAIN_SHUFFLE_BUFFER, size),
    )


def eval_dataset(
    data_dir,
    idx_dir,
    batch_size,
    image_size,
    num_shards=1,
    shard_index=0,
    normalize=True,
    device=None,
):
    """(dataset, num_images) for this process's shard of the validation set.

    `dataset`: infinite DALIDataset of centrally cropped batches (images float32
    [B, S, S, 3], labels int32 [B] 0-based) going over the shard again and again; after the
    shard's images, padding (copies of its last image) fills the last batch, and with
    pad_last_batch DALI may add a whole batch of it when the shards' batch counts differ.
    `num_images`: the shard's number of images; the shards of all processes add up to the
    validation set. Iterate `real_batches(dataset, num_images)` to see each image once.
    """
    check_shard(num_shards, shard_index)
    files, indexes = index_files(data_dir, idx_dir, "validation")
    num_images = dali_shard_size(_total(data_dir, indexes, num_shards), num_shards, shard_index)
    dataset = _build(
        training=False,
        files=files,
        indexes=indexes,
        batch_size=batch_size,
        image_size=image_size,
        num_shards=num_shards,
        shard_index=shard_index,
        seed=None,
        normalize=normalize,
        device=device,
    )
    return dataset, num_images


def real_batches(dataset, num_images):
    """One pass over an `eval_dataset` shard without the padding: its first
    ceil(num_images / B) batches, the last cut to the real images (then smaller than B).

    A generator: each call makes a fresh DALI pipeline that starts at the shard's first
    image, so every evaluation sees the same images in the same order. Works on GPU
    tensors too (plain slicing, no tf.data ops).
    """
    remaining = num_images
    if remaining <= 0:
        return
    for images, labels in dataset:
        count = int(labels.shape[0])
        if count > remaining:
            images, labels = images[:remaining], labels[:remaining]
            count = remaining
        yield images, labels
        remaining -= count
        if remaining == 0:
            return
