"""Checkpoints: save every N steps and at the end, keep the last 5, resume, fine-tune.

TensorFlow writes a checkpoint's data and index before it atomically rewrites the
`checkpoint` state file, so a run killed mid-save still resumes from the previous one.
A small `model_config.json` beside the checkpoints records the architecture and whether
the model is quantization-aware (QAT); a checkpoint of another architecture, or a float
checkpoint where a QAT one is expected (and the reverse), is refused with one line instead
of a shape traceback. Fine-tuning (`--finetune_checkpoint`) copies float weights across
that boundary. The sidecar's `padding` ("tf", or "symmetric" for imported PyTorch weights;
absent means "tf") is not a flag: the checkpoint a run starts from decides it.
"""

import json
import os

import tensorflow as tf

from model.config import ModelConfig
from model.weights import copy_float_weights
from utils.core import fileio
from utils.core.errors import UserError, tf_error_message

CONFIG_FILE = "model_config.json"
MAX_TO_KEEP = 5
HEAD_LAYERS = ("logits_dense", "logits_conv")


def recorded_padding(args) -> str:
    """The padding of the checkpoint this run starts from: --model_dir's sidecar, else
    --finetune_checkpoint's, else "tf" (training from scratch keeps TF padding).

    Args:
        args: the parsed flags (`model_dir`, `finetune_checkpoint` are read if present).
    """
    for path in (getattr(args, "model_dir", None), getattr(args, "finetune_checkpoint", None)):
        saved = _read_config(_checkpoint_dir(path)) if path else None
        if saved is not None:
            return saved.get("padding", "tf")
    return "tf"


def write_model_config(directory: str, config: ModelConfig) -> None:
    """Write `config` as `directory`/model_config.json (atomically).

    Args:
        directory: an existing checkpoint directory.
        config: the model's config.
    """
    fileio.write_json(os.path.join(directory, CONFIG_FILE), config.saved())


def _read_config(directory):
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _restore(checkpoint, prefix, problem):
    """Restore `prefix` into `checkpoint`; a mismatch is one line: `problem`, then TF's."""
    try:
        checkpoint.restore(prefix).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as error:
        raise UserError(f"{problem}: {tf_error_message(error, limit=200)}") from None


def _checkpoint_dir(path):
    return path if os.path.isdir(path) else os.path.dirname(path)


def resolve_checkpoint(path):
    """A checkpoint prefix from a directory (its latest) or a prefix; None if none found."""
    if os.path.isdir(path):
        return tf.train.latest_checkpoint(path)
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


def check_compatible(directory: str, config: ModelConfig, flag: str = "--model_dir") -> None:
    """Refuse, with one line naming the fix, a checkpoint whose model_config.json differs
    from `config`. A sidecar without the quantization keys is a float model's."""
    saved = _read_config(directory)
    if saved is None:
        return
    was, want = saved.get("padding", "tf"), config.padding
    if was != want:
        raise UserError(
            f"checkpoint in {directory} has {was} padding, this model {want}: use another {flag}"
        )
    for key in ("arch", "num_classes"):
        if saved.get(key) != getattr(config, key):
            raise UserError(
                f"checkpoint in {directory} was trained with {key}={saved.get(key)}, "
                f"not {getattr(config, key)}: pass the same --{key} or another {flag}"
            )
    for key in ModelConfig.FLAGS:
        was = bool(saved.get(key, False))
        if was == bool(getattr(config, key)):
            continue
        fix = f"{'add' if was else 'drop'} --{key} or use another {flag}"
        if key == "quantize" and not was:
            fix += (
                f"; to quantize it, fine-tune from it: --quantize --finetune_checkpoint "
                f"{directory} with a new {flag}"
            )
        raise UserError(
            f"checkpoint in {directory} was trained {'with' if was else 'without'} --{key}: {fix}"
        )


class CheckpointKeeper:
    """Model, optimizer (with its step counter) and data position in `model_dir`."""

    def __init__(self, model_dir, model, optimizer, config, enabled=True):
        self.model_dir = model_dir
        self.config = config
        self.enabled = enabled
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, model_dir, max_to_keep=MAX_TO_KEEP
        )

    @property
    def latest(self):
        return self.manager.latest_checkpoint

    def restore_latest(self):
        """Restore the newest checkpoint in model_dir; return its path or None."""
        path = self.latest
        if path is None:
            return None
        check_compatible(self.model_dir, self.config)
        _restore(
            self.checkpoint,
            path,
            f"cannot restore {path}: it does not match this model ({self.config.describe()})",
        )
        return path

    def save(self, step):
        if not self.enabled:
            return None
        os.makedirs(self.model_dir, exist_ok=True)
        write_model_config(self.model_dir, self.config)
        return self.manager.save(checkpoint_number=int(step))


def restore_model_only(model, path, config):
    """Restore only the model's weights (evaluate, predict, export)."""
    prefix = resolve_checkpoint(path)
    if prefix is None:
        raise UserError(f"no checkpoint in {path}: train first or point --model_dir elsewhere")
    check_compatible(_checkpoint_dir(prefix), config)
    _restore(
        tf.train.Checkpoint(model=model),
        prefix,
        f"cannot restore {prefix} into {config.describe()}",
    )
    return prefix


def load_finetune_weights(model, path, config, build_fn, log=print):
    """Copy every layer's float weights from the checkpoint at `path` into `model`.

    The source model is built (`build_fn(source_config)`) as the checkpoint was saved,
    float or QAT, from its model_config.json (none: a float model of `config`'s
    architecture), so a float checkpoint can seed a QAT model and the reverse. A head of
    another class count is skipped; quantizer ranges and steps are not copied.
    """
    prefix = resolve_checkpoint(path)
    if prefix is None:
        raise UserError(f"--finetune_checkpoint {path}: no checkpoint found there")
    saved = _read_config(_checkpoint_dir(prefix)) or {}
    source_config = config.with_saved(saved)
    if source_config.arch != config.arch:
        raise UserError(
            f"--finetune_checkpoint {path} holds a {source_config.arch} model, not {config.arch}"
        )
    source = build_fn(source_config)
    _restore(
        tf.train.Checkpoint(model=source),
        prefix,
        f"--finetune_checkpoint {path} does not match {source_config.describe()}",
    )
    skipped = []
    if source_config.num_classes != config.num_classes:
        skipped = [layer.name for layer in model.layers if layer.name in HEAD_LAYERS]
    try:
        copy_float_weights(source, model, skip=skipped)
    except ValueError as error:
        raise UserError(f"--finetune_checkpoint {path}: {error}") from None
    if skipped:
        log(
            f"fine-tuning from {prefix}: its head has {source_config.num_classes} classes, "
            f"this model {config.num_classes}; {', '.join(skipped)} keeps its fresh "
            "initialisation"
        )
    return prefix
