"""Checkpoints: save every N steps and at the end, keep the last 5, resume, fine-tune.

A checkpoint is found on disk (`ckpt-N.index` and all its data shards), not only through
TF's `checkpoint` state file, and read in full before use, so a corrupt one is named. A
save never writes over a `ckpt-N` this run did not write; a failed save is one line.
`model_config.json` beside the checkpoints records the architecture and QAT flags; a
checkpoint of another model is refused with one line instead of a shape traceback.
Fine-tuning (`--finetune_checkpoint`) copies float weights across the QAT boundary. The
sidecar's `padding` ("symmetric" for imported PyTorch weights) comes from the checkpoint.
"""

import contextlib
import os
import shutil
import signal
import threading

import tensorflow as tf

from model.config import ModelConfig
from model.weights import copy_float_weights
from runtime.checkpoint_files import complete_checkpoints, corruption, pick_checkpoint, quiet_tf
from utils.core import fileio
from utils.core.errors import UserError, tf_error_message

CONFIG_FILE = "model_config.json"
MAX_TO_KEEP = 5
HEAD_LAYERS = ("logits_dense", "logits_conv")
SAVE_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def recorded_fields(args) -> dict:
    """The `ModelConfig.RECORDED` fields (padding, SE width) of the checkpoint this run
    starts from: --model_dir's sidecar, else --finetune_checkpoint's, else the defaults
    (training from scratch builds the original's model).

    Args:
        args: the parsed flags (`model_dir`, `finetune_checkpoint` are read if present).
    """
    for path in (getattr(args, "model_dir", None), getattr(args, "finetune_checkpoint", None)):
        saved = _read_config(_checkpoint_dir(path)) if path else None
        if saved is not None:
            return {key: saved.get(key, value) for key, value in ModelConfig.RECORDED.items()}
    return dict(ModelConfig.RECORDED)


def write_model_config(directory: str, config: ModelConfig) -> None:
    """Write `config` as `directory`/model_config.json (atomically).

    Args:
        directory: an existing checkpoint directory.
        config: the model's config.
    """
    fileio.write_json(os.path.join(directory, CONFIG_FILE), config.saved())


def _read_config(directory):
    path = os.path.join(directory, CONFIG_FILE)
    try:
        return fileio.read_json_object(path)
    except ValueError as error:
        raise UserError(
            f"{path} is corrupt ({error}): restore it, or move it away to skip the "
            "architecture check"
        ) from None
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror}): fix its permissions") from None


def _recorded(key, value):
    return f"{value} padding" if key == "padding" else f"SE width {value or 'by ratio'}"


def _restore(checkpoint, prefix, problem):
    """Restore `prefix` into `checkpoint`; a mismatch is one line: `problem`, then TF's."""
    try:
        checkpoint.restore(prefix).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, IndexError, tf.errors.OpError) as error:
        quiet_tf()
        raise UserError(f"{problem}: {tf_error_message(error, limit=200)}") from None


def _checkpoint_dir(path):
    return path if os.path.isdir(path) else os.path.dirname(path)


def resolve_checkpoint(path):
    """A checkpoint prefix from a directory (its newest complete one) or a prefix; None
    if none found."""
    if os.path.isdir(path):
        found = complete_checkpoints(path)
        return found[0] if found else None
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


def check_compatible(directory: str, config: ModelConfig, flag: str = "--model_dir") -> None:
    """Refuse, with one line naming the fix, a checkpoint whose model_config.json differs
    from `config`. A sidecar without the quantization keys is a float model's."""
    saved = _read_config(directory)
    if saved is None:
        return
    for key, default in ModelConfig.RECORDED.items():
        was, want = saved.get(key, default), getattr(config, key)
        if was != want:
            raise UserError(
                f"checkpoint in {directory} has {_recorded(key, was)}, this model "
                f"{_recorded(key, want)}: use another {flag}"
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


@contextlib.contextmanager
def _signals_deferred():
    """Signals that arrive during a save are handled, in order, once it is written. (Python
    runs handlers in the main thread between bytecodes, so a signal mask would not do.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {sig: signal.signal(sig, lambda num, _: pending.append(num)) for sig in SAVE_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in pending:
            signal.raise_signal(sig)


class CheckpointKeeper:
    """Model, optimizer (with its step counter) and data position in `model_dir`."""

    def __init__(self, model_dir, model, optimizer, config, enabled=True, log=print):
        self.model_dir = model_dir
        self.config = config
        self.enabled = enabled
        self.log = log
        self.written = set()  # prefixes this run saved
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.manager = self._manager()

    def _manager(self):
        return tf.train.CheckpointManager(self.checkpoint, self.model_dir, max_to_keep=MAX_TO_KEEP)

    @property
    def latest(self):
        return self.manager.latest_checkpoint

    def _adopt(self, prefix):
        """Make TF's state file name `prefix` (and the older complete ones) when it is
        missing or behind, so the keep-last-5 rotation knows them."""
        listed = self.manager.latest_checkpoint
        if listed == prefix:
            return
        if listed is None:
            self.log(
                f"no `checkpoint` state file in {self.model_dir}: resuming from the newest "
                f"complete checkpoint there, {os.path.basename(prefix)}"
            )
        else:
            self.log(
                f"the `checkpoint` state file names {os.path.basename(listed)}, but the newest "
                f"complete checkpoint on disk is {os.path.basename(prefix)}: resuming from it"
            )
        older = [p for p in complete_checkpoints(self.model_dir) if p != prefix][: MAX_TO_KEEP - 1]
        tf.compat.v1.train.update_checkpoint_state(
            self.model_dir, prefix, all_model_checkpoint_paths=[*reversed(older), prefix]
        )
        self.manager = self._manager()

    def restore_latest(self):
        """Restore the newest intact checkpoint in model_dir; return its path or None."""
        if complete_checkpoints(self.model_dir) or self.latest:
            check_compatible(self.model_dir, self.config)
        path = pick_checkpoint(self.model_dir, fall_back=False, log=self.log)
        if path is None:
            return None
        self._adopt(path)
        _restore(
            self.checkpoint,
            path,
            f"cannot restore {path}: it does not match this model ({self.config.describe()})",
        )
        return path

    def save(self, step):
        """Save `ckpt-<step>` (signals wait until it is written); one line on failure."""
        if not self.enabled:
            return None
        prefix = os.path.join(self.model_dir, f"ckpt-{int(step)}")
        if os.path.exists(prefix + ".index") and prefix not in self.written:
            raise UserError(
                f"{prefix} exists and was not written by this run; not writing over it: move "
                f"it away or pass another --model_dir (checkpoints up to {self.latest} are kept)"
            )
        with _signals_deferred():
            self._write(prefix, step)
            path = self.manager.latest_checkpoint
        self.written.add(path)
        return path

    def _write(self, prefix, step):
        try:
            os.makedirs(self.model_dir, exist_ok=True)
            write_model_config(self.model_dir, self.config)
            self.manager.save(checkpoint_number=int(step))
        except (OSError, tf.errors.OpError) as error:
            shutil.rmtree(prefix + "_temp", ignore_errors=True)  # this save's staging
            good = f"{self.latest} is still good" if self.latest else "no checkpoint was saved"
            # TF says "<temp file>; No space left on device": keep the reason.
            reason = getattr(error, "strerror", None) or tf_error_message(error, 400)
            reason = reason.rsplit("; ", 1)[-1][:150]
            raise UserError(
                f"saving {prefix} failed ({reason}); "
                f"{good}: free space or fix permissions, then rerun to resume"
            ) from None


def restore_model_only(model, path, config, log=print):
    """Restore only the model's weights (evaluate, predict, export); a corrupt newest
    checkpoint in a folder falls back to the newest intact one (said with `log`)."""
    if os.path.isdir(path):
        if complete_checkpoints(path):
            check_compatible(path, config)
        prefix = pick_checkpoint(path, fall_back=True, log=log)
    else:
        prefix = resolve_checkpoint(path)
        problem = prefix and corruption(prefix)
        if problem:
            quiet_tf()
            raise UserError(f"corrupt checkpoint ({problem}): pass an intact one")
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
