"""Checkpoints: save every N steps and at the end, keep the last 5, resume, fine-tune.

TensorFlow writes a checkpoint's data and index before it atomically rewrites the
`checkpoint` state file, so a run killed mid-save still resumes from the previous one.
A small `model_config.json` beside the checkpoints records the architecture; a checkpoint
of another architecture is refused with one line instead of a shape traceback.
"""

import json
import os
import tempfile

import tensorflow as tf

from utils.errors import UserError

CONFIG_FILE = "model_config.json"
MAX_TO_KEEP = 5
HEAD_LAYERS = ("logits_dense", "logits_conv")


def model_config(args):
    return {
        "arch": args.arch,
        "num_classes": args.num_classes,
        "use_final_conv": bool(args.use_final_conv),
        "quantize": bool(getattr(args, "quantize", False)),
    }


def _write_json_atomically(path, data):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


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
        raise UserError(f"{problem}: {str(error).splitlines()[0][:200]}") from None


def _checkpoint_dir(path):
    return path if os.path.isdir(path) else os.path.dirname(path)


def resolve_checkpoint(path):
    """A checkpoint prefix from a directory (its latest) or a prefix; None if none found."""
    if os.path.isdir(path):
        return tf.train.latest_checkpoint(path)
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


def check_compatible(directory, config, flag="--model_dir"):
    saved = _read_config(directory)
    if saved is None:
        return
    for key in ("arch", "num_classes", "use_final_conv"):
        if saved.get(key) != config[key]:
            raise UserError(
                f"checkpoint in {directory} was trained with {key}={saved.get(key)}, "
                f"not {config[key]}: pass the same --{key} or another {flag}"
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
            f"cannot restore {path}: it does not match this model (--arch "
            f"{self.config['arch']}, --num_classes {self.config['num_classes']})",
        )
        return path

    def save(self, step):
        if not self.enabled:
            return None
        os.makedirs(self.model_dir, exist_ok=True)
        _write_json_atomically(os.path.join(self.model_dir, CONFIG_FILE), self.config)
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
        f"cannot restore {prefix} into --arch {config['arch']}",
    )
    return prefix


def load_finetune_weights(model, path, config, build_fn, log=print):
    """Copy every layer's weights from `path`; a head of another class count is skipped."""
    prefix = resolve_checkpoint(path)
    if prefix is None:
        raise UserError(f"--finetune_checkpoint {path}: no checkpoint found there")
    saved = _read_config(_checkpoint_dir(prefix)) or {}
    if saved.get("arch", config["arch"]) != config["arch"]:
        raise UserError(
            f"--finetune_checkpoint {path} holds a {saved['arch']} model, not {config['arch']}"
        )
    source_classes = saved.get("num_classes", config["num_classes"])
    source = build_fn(source_classes)
    _restore(
        tf.train.Checkpoint(model=source),
        prefix,
        f"--finetune_checkpoint {path} does not match --arch {config['arch']}",
    )
    skipped = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in HEAD_LAYERS and source_classes != config["num_classes"]:
            skipped.append(layer.name)
            continue
        layer.set_weights(source.get_layer(layer.name).get_weights())
    if skipped:
        log(
            f"fine-tuning from {prefix}: its head has {source_classes} classes, this model "
            f"{config['num_classes']}; {', '.join(skipped)} keeps its fresh initialisation"
        )
    return prefix
