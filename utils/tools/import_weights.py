"""Import pretrained weights into a checkpoint directory of this port (`--model_dir` ready).

Sources are opened in `weight_sources`, mapped onto the port in `weight_names`. PyTorch
weights get `padding="symmetric"` in model_config.json, so every mode rebuilds the model
that reproduces PyTorch's outputs.
"""

import argparse
import os
import sys
import tempfile
from typing import Callable, List, Optional

import numpy as np

from model.config import ModelConfig
from utils.core.errors import UserError
from utils.tools.weight_names import build_mapping, check_accounting
from utils.tools.weight_sources import (
    Source,
    architectures,
    describe_tf1,
    describe_torch,
    open_source,
)

ORIGINAL_CLASSES = 1001  # the original's head: logit i = class i, logit 1000 never trained


# --------------------------------------------------------------------------------------
# Writing the checkpoint directory.


def _check_output(output: str) -> None:
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise UserError(f"--output {output} exists and is not empty: pick a new directory")


def write_checkpoint(model, config: ModelConfig, output: str) -> str:
    """Save `model` and its model_config.json to `output` via a temp dir renamed at the end.

    Args:
        model: the Keras model with the imported weights.
        config: the model's config (written as model_config.json).
        output: the directory to create (absent or empty).
    """
    import tensorflow as tf

    from runtime import checkpoints

    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.tmp-")
    try:
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), staging, 1)
        manager.save(checkpoint_number=0)
        checkpoints.write_model_config(staging, config)
        _check_output(output)  # again: it may have been filled meanwhile
        os.rename(staging, output)  # replaces an empty directory, never a full one
    except BaseException:
        for name in os.listdir(staging) if os.path.isdir(staging) else ():
            os.remove(os.path.join(staging, name))
        if os.path.isdir(staging):
            os.rmdir(staging)
        raise
    return output


def import_weights(
    src: str,
    arch: str,
    output: str,
    num_classes: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> str:
    """Import `src` into a new checkpoint directory `output` of `arch`; returns its path.

    Args:
        src: TF1 checkpoint (prefix or directory), .pth/.pt or .safetensors file.
        arch: a key of `model.resnet.ARCHITECTURES`.
        output: new (absent or empty) directory for the checkpoint and model_config.json.
        num_classes: head size; None: the source's. 1000 from a 1001-class TF1 source
            drops the never-trained last logit.
        log: prints the summary lines.
    """
    _check_output(output)
    source = open_source(src)
    describe = describe_tf1 if source.kind == "tf1" else describe_torch
    found, looks, classes = describe(source)
    if found != arch:
        raise UserError(f"{src} looks like a {looks} with {classes} classes, not {arch}")
    num_classes = num_classes or classes
    drop_last = source.kind == "tf1" and classes == ORIGINAL_CLASSES and num_classes == 1000
    if num_classes != classes and not drop_last:
        raise UserError(
            f"{src} looks like a {looks} with {classes} classes, not {num_classes}: import "
            f"with --num_classes {classes}, then fine-tune with --finetune_checkpoint for "
            "another class count"
        )
    mapping = build_mapping(source, arch)
    check_accounting(source, mapping)
    se_width = _se_width(source, mapping, arch, looks)

    import tensorflow as tf

    from model import build_model

    padding = "tf" if source.kind == "tf1" else "symmetric"
    model = build_model(arch, num_classes=num_classes, padding=padding, se_width=se_width)
    variables = {w.name.split(":")[0]: w for layer in model.layers for w in layer.weights}
    if set(variables) != set(mapping):  # a bug in port_units, not the user's problem
        raise RuntimeError(f"mapping and model differ: {sorted(set(variables) ^ set(mapping))[:4]}")
    for name, variable in variables.items():
        key, transform = mapping[name]
        value = transform(np.asarray(source.read(key), dtype=np.float32))
        if drop_last and name.startswith("logits_dense/"):
            value = value[..., :num_classes]
        if tuple(value.shape) != tuple(variable.shape):
            raise UserError(
                f"{src}: {key} has shape {list(source.shapes[key])}, which does not fit "
                f"{name} {variable.shape.as_list()} of {arch}"
            )
        variable.assign(tf.constant(value, dtype=variable.dtype))
    config = ModelConfig(arch=arch, num_classes=num_classes, padding=padding, se_width=se_width)
    path = write_checkpoint(model, config, output)
    dropped = ", last head column (never trained) dropped" if drop_last else ""
    log(f"imported {len(mapping)} tensors of {looks} ({classes} classes{dropped}) from {src}")
    log(f"ignored training state: {'; '.join(source.ignored) or 'none'}")
    log(
        f"wrote {path} ({num_classes} classes, {padding} padding"
        f"{f', SE width {se_width}' if se_width else ''}): use it as --model_dir "
        "or --finetune_checkpoint"
    )
    return path


def _se_width(source: Source, mapping: dict, arch: str, looks: str) -> int:
    """The model's `se_width` that holds the source's SE gates: 0 when every gate has the
    block's channels / the arch's ratio (timm, the original), else the one width all gates
    share (NVIDIA PyTorch squeezes to 16 channels everywhere)."""
    ratio = architectures()[arch].se_ratio
    gates = []  # (hidden, channels) of each SE gate
    for name in mapping:
        if name.endswith("_se_reduce/bias"):
            expand = name.replace("_reduce/", "_expand/")
            gates.append((source.shapes[mapping[name][0]][0], source.shapes[mapping[expand][0]][0]))
    if all(hidden * ratio == channels for hidden, channels in gates):
        return 0
    widths = {hidden for hidden, _ in gates}
    if len(widths) > 1:
        raise UserError(
            f"{source.path} looks like a {looks} whose SE gates differ in width from block "
            "to block, neither the block's channels / 16 nor one width everywhere"
        )
    return widths.pop()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of `python -m utils.import_weights`.

    Args:
        argv: the arguments; None: sys.argv[1:].
    """
    ARCHITECTURES = architectures()
    parser = argparse.ArgumentParser(
        prog="import_weights",
        description="Import a TF1 checkpoint of the original or PyTorch weights (.pth, .pt, "
        ".safetensors of timm, torchvision, NVIDIA PyTorch) into a checkpoint directory for "
        "--model_dir / --finetune_checkpoint.",
    )
    parser.add_argument("src", metavar="SRC", help="TF1 checkpoint prefix or dir, or a file")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--output", required=True, help="new directory to write")
    parser.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="head size (default: the source's); 1000 from the original's 1001-class TF1 "
        "checkpoint drops its never-trained last logit",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool; user errors are one line on stderr and exit status 1.

    Args:
        argv: the arguments; None: sys.argv[1:].
    """
    # Keep TensorFlow's C++ start-up chatter out of the output, as main.py does.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    try:
        import_weights(args.src, args.arch, args.output, args.num_classes)
    except UserError as error:
        print(f"import_weights: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0
