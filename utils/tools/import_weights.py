"""Import pretrained weights into a checkpoint directory of this port (`--model_dir` ready).

Sources: the original's TF1 checkpoints (NVIDIA ConvNets names), PyTorch `.pth`/`.pt`
(state_dict or a checkpoint dict holding one; timm, torchvision, NVIDIA PyTorch key names,
DDP `module.` prefix too) and `.safetensors`. The name mapping is derived from
`model.resnet.ARCHITECTURES`; every source tensor is used once, every variable set once,
training state is ignored. PyTorch weights get `padding="symmetric"` in model_config.json,
so every mode rebuilds the model that reproduces PyTorch's outputs.
"""

import argparse
import os
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from model.config import ModelConfig
from utils.core.errors import UserError

BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")
TORCH_BN = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
PARTS = {"reduce": "1x1_reduce", "3x3": "3x3", "expand": "1x1_expand", "shortcut": "shortcut"}
TF1_PARTS = {
    "reduce": "bottleneck_1",
    "3x3": "bottleneck_2",
    "expand": "bottleneck_3",
    "shortcut": "shortcut/conv2d",
}
TORCH_PARTS = {
    "reduce": ("conv1", "bn1"),
    "3x3": ("conv2", "bn2"),
    "expand": ("conv3", "bn3"),
    "shortcut": ("downsample.0", "downsample.1"),
}
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
TF1_TRAINING_STATE = re.compile(r"(^|/)(global_step|current_loss_scale(_\d+)?|good_steps(_\d+)?)$")
ORIGINAL_CLASSES = 1001  # the original's head: logit i = class i, logit 1000 never trained


def _architectures() -> dict:
    """`model.resnet.ARCHITECTURES`, imported late: it imports TensorFlow, whose start-up
    log level `main` sets first."""
    from model.config import ARCHITECTURES

    return ARCHITECTURES


@dataclass(frozen=True)
class Unit:
    """One weighted layer of the port: its Keras layer name, kind and place in the net."""

    layer: str
    kind: str  # "conv", "bn" or "dense"
    stage: int = 0  # 0: stem or head
    block: int = 0
    part: str = ""  # a PARTS key, "se_reduce", "se_expand", "stem" or "head"


def port_units(arch: str) -> List[Unit]:
    """The weighted layers of `build_model(arch)`, from the architecture table.

    Args:
        arch: a key of `model.resnet.ARCHITECTURES`.
    """
    ARCHITECTURES = _architectures()
    spec = ARCHITECTURES[arch]
    units = [Unit("stem_conv", "conv", part="stem"), Unit("stem_bn", "bn", part="stem")]
    for stage, blocks in enumerate(spec.blocks, start=1):
        for block in range(1, blocks + 1):
            name = f"stage{stage}_block{block}"
            parts = ["reduce", "3x3", "expand"] + (["shortcut"] if block == 1 else [])
            for part in parts:
                for kind in ("conv", "bn"):
                    units.append(Unit(f"{name}_{PARTS[part]}_{kind}", kind, stage, block, part))
            if spec.se_ratio:
                for part in ("se_reduce", "se_expand"):
                    units.append(Unit(f"{name}_{part}", "dense", stage, block, part))
    units.append(Unit("logits_dense", "dense", part="head"))
    return units


def _params(unit: Unit) -> Tuple[str, ...]:
    return {"conv": ("kernel",), "bn": BN_PARAMS, "dense": ("kernel", "bias")}[unit.kind]


# --------------------------------------------------------------------------------------
# Sources: a name -> shape table, a reader, and how to name each port variable in it.


@dataclass
class Source:
    path: str
    kind: str  # "tf1" or "torch"
    shapes: Dict[str, tuple]  # model tensors only
    read: Callable[[str], np.ndarray]
    ignored: List[str]  # one summary phrase per kind of training state
    family: str = ""  # e.g. "timm", "NVIDIA TF1"
    scheme: str = ""  # torch: "layerN" or "layers"; SE: "se" (timm) or "squeeze" (NVIDIA)
    se_scheme: str = ""


def _open_tf1(prefix: str) -> Source:
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as error:
        raise UserError(
            f"cannot read TF checkpoint {prefix}: {str(error).splitlines()[0]}"
        ) from None
    shapes, momentum, state = {}, 0, []
    for name, shape in reader.get_variable_to_shape_map().items():
        if name.endswith("/Momentum"):
            momentum += 1
        elif TF1_TRAINING_STATE.search(name):
            state.append(name)
        elif name != "_CHECKPOINTABLE_OBJECT_GRAPH":
            shapes[name] = tuple(shape)
    ignored = ([f"{momentum} /Momentum slots"] if momentum else []) + sorted(state)
    return Source(prefix, "tf1", shapes, reader.get_tensor, ignored, family="NVIDIA TF1")


def _is_array_dict(value) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, np.ndarray) for v in value.values())
    )


def _pick_state_dict(path: str, loaded) -> Tuple[dict, List[str]]:
    """The state_dict in what torch.save wrote, and the names of the entries left aside."""
    if _is_array_dict(loaded):
        return loaded, []
    if isinstance(loaded, dict):
        for key in STATE_DICT_KEYS:
            if _is_array_dict(loaded.get(key)):
                return loaded[key], [f"checkpoint entries {sorted(k for k in loaded if k != key)}"]
    raise UserError(
        f"{path} holds no state_dict (a dict of tensors, or one under {STATE_DICT_KEYS})"
    )


def _torch_source(path: str, state: dict, ignored: List[str]) -> Source:
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):  # saved from DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    tracked = [k for k in state if k.endswith("num_batches_tracked")]
    if tracked:
        ignored.append(f"{len(tracked)} BN num_batches_tracked counters")
    arrays = {k: v for k, v in state.items() if k not in tracked}
    source = Source(
        path,
        "torch",
        {k: tuple(np.shape(v)) for k, v in arrays.items()},
        lambda key: np.asarray(arrays[key]),
        ignored,
    )
    if "layers.0.0.conv1.weight" in arrays:
        source.scheme, source.family = "layers", "NVIDIA PyTorch"
    elif "layer1.0.conv1.weight" in arrays:
        source.scheme, source.family = "layerN", "timm/torchvision"
    else:
        raise UserError(
            f"{path} does not look like a ResNet of timm, torchvision or NVIDIA PyTorch "
            f"(no layer1.0.conv1.weight); its first keys: {', '.join(keys[:3])}"
        )
    if any(".se.fc1." in k for k in arrays):
        source.se_scheme, source.family = "se", "timm"
    elif any(".squeeze.squeeze." in k for k in arrays):
        source.se_scheme, source.family = "squeeze", "NVIDIA PyTorch"
    return source


def open_source(path: str) -> Source:
    """Open SRC: a TF1 checkpoint (prefix or directory), a .pth/.pt or a .safetensors file.

    Args:
        path: what the user passed as SRC.
    """
    if os.path.isdir(path):
        import tensorflow as tf

        if os.path.exists(os.path.join(path, "model_config.json")):
            raise UserError(f"{path} is already a checkpoint directory of this port")
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            raise UserError(f"{path}: no TF checkpoint in this directory")
        return _open_tf1(prefix)
    if os.path.exists(path + ".index"):
        return _open_tf1(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file, directory or checkpoint prefix")
    if path.endswith(".safetensors"):
        from utils.tools import safetensors_reader

        return _torch_source(path, safetensors_reader.load(path), [])
    if zipfile.is_zipfile(path) or path.endswith((".pth", ".pt", ".tar", ".bin")):
        from utils.tools import torch_reader

        state, ignored = _pick_state_dict(path, torch_reader.load(path))
        return _torch_source(path, dict(state), ignored)
    raise UserError(f"{path}: not a TF checkpoint, .pth/.pt or .safetensors file")


# --------------------------------------------------------------------------------------
# What the source holds: architecture and class count, from the shapes alone.


def _torch_block(source: Source, stage: int, block: int) -> str:
    if source.scheme == "layers":
        return f"layers.{stage - 1}.{block - 1}"
    return f"layer{stage}.{block - 1}"


def describe_torch(source: Source) -> Tuple[Optional[str], str, int]:
    """(matching arch or None, what it looks like, class count) of a PyTorch source.

    Args:
        source: an opened PyTorch source.
    """
    ARCHITECTURES = _architectures()
    shapes, blocks, widths, groups = source.shapes, [], [], []
    for stage in range(1, 5):
        count = 0
        while f"{_torch_block(source, stage, count + 1)}.conv1.weight" in shapes:
            count += 1
        blocks.append(count)
        first = _torch_block(source, stage, 1)
        conv2 = shapes.get(f"{first}.conv2.weight")
        widths.append(conv2[0] if conv2 else 0)
        groups.append(conv2[0] // conv2[1] if conv2 and conv2[1] else 0)
    classes = shapes.get("fc.weight", (0,))[0]
    se = bool(source.se_scheme)
    arch = next(
        (
            name
            for name, spec in ARCHITECTURES.items()
            if tuple(blocks) == spec.blocks
            and tuple(widths) == spec.widths
            and set(groups) == {spec.groups}
            and se == bool(spec.se_ratio)
        ),
        None,
    )
    looks = arch or (
        f"ResNet with blocks {'-'.join(map(str, blocks))}, widths {'-'.join(map(str, widths))}, "
        f"groups {groups[0]}{', SE' if se else ''}"
    )
    return arch, f"{source.family} {looks}", classes


def describe_tf1(source: Source) -> Tuple[Optional[str], str, int]:
    """(matching arch or None, what it looks like, class count) of a TF1 source.

    Args:
        source: an opened TF1 source.
    """
    ARCHITECTURES = _architectures()
    scopes = sorted({name.split("/")[0] for name in source.shapes if "/" in name})
    arch = scopes[0] if len(scopes) == 1 and scopes[0] in ARCHITECTURES else None
    classes = source.shapes.get(f"{arch}/output/dense/bias", (0,))[0] if arch else 0
    looks = arch or f"TF checkpoint with scopes {', '.join(scopes[:3]) or '(none)'}"
    return arch, f"{source.family} {looks}", classes


# --------------------------------------------------------------------------------------
# The mapping: port variable -> (source key, transform).


def _oihw_to_hwio(w):
    return np.transpose(w, (2, 3, 1, 0))


def _dense_from_torch(w):
    return np.reshape(w, (w.shape[0], w.shape[1])).T  # Linear [out, in] or 1x1 conv


def _identity(w):
    return w


def _tf1_names(unit: Unit, param: str, arch: str) -> Tuple[str, Callable]:
    ARCHITECTURES = _architectures()
    if unit.part == "stem":
        scope = f"{arch}/conv2d"
        return (
            f"{scope}/conv2d/kernel" if unit.kind == "conv" else f"{scope}/BatchNorm/{param}"
        ), _identity
    if unit.part == "head":
        return f"{arch}/output/dense/{param}", _identity
    block = f"{arch}/btlnck_block_{unit.stage - 1}_{unit.block - 1}"
    if unit.kind == "dense":
        dense = "dense" if unit.part == "se_reduce" else "dense_1"
        return f"{block}/bottleneck_se_layer/{dense}/{param}", _identity
    scope = f"{block}/{TF1_PARTS[unit.part]}"
    if unit.kind == "bn":
        return f"{scope}/BatchNorm/{param}", _identity
    if unit.part == "3x3" and ARCHITECTURES[arch].groups > 1:
        return f"{scope}/bottleneck_2group_filter", _identity  # no slash: name + 'group_filter'
    return f"{scope}/conv2d/kernel", _identity


def _torch_names(unit: Unit, param: str, source: Source) -> Tuple[str, Callable]:
    if unit.part in ("stem", "head"):
        module = {"conv": "conv1", "bn": "bn1", "dense": "fc"}[unit.kind]
    else:
        block = _torch_block(source, unit.stage, unit.block)
        if unit.kind == "dense":
            se = {"se": ("se.fc1", "se.fc2"), "squeeze": ("squeeze.squeeze", "squeeze.expand")}
            module = f"{block}.{se[source.se_scheme or 'se'][unit.part == 'se_expand']}"
        else:
            module = f"{block}.{TORCH_PARTS[unit.part][unit.kind == 'bn']}"
    if unit.kind == "conv":
        return f"{module}.weight", _oihw_to_hwio
    if unit.kind == "bn":
        return f"{module}.{TORCH_BN[param]}", _identity
    return f"{module}.{'weight' if param == 'kernel' else 'bias'}", (
        _dense_from_torch if param == "kernel" else _identity
    )


def build_mapping(source: Source, arch: str) -> Dict[str, Tuple[str, Callable]]:
    """{port variable "layer/param": (source key, transform)} for every port variable.

    Args:
        source: the opened source.
        arch: the architecture to import into.
    """
    mapping = {}
    for unit in port_units(arch):
        for param in _params(unit):
            if source.kind == "tf1":
                mapping[f"{unit.layer}/{param}"] = _tf1_names(unit, param, arch)
            else:
                mapping[f"{unit.layer}/{param}"] = _torch_names(unit, param, source)
    return mapping


def check_accounting(source: Source, mapping: Dict[str, Tuple[str, Callable]]) -> None:
    """Refuse a source with a tensor the mapping does not use, or lacking one it needs.

    Args:
        source: the opened source.
        mapping: `build_mapping`'s result.
    """
    wanted = [key for key, _ in mapping.values()]
    assert len(set(wanted)) == len(wanted), "a source key is mapped twice"
    missing = [key for key in wanted if key not in source.shapes]
    leftover = sorted(set(source.shapes) - set(wanted))
    for problem, keys in (("leftover", leftover), ("missing", missing)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            what = "tensor not used by" if problem == "leftover" else "tensor needed by"
            raise UserError(
                f"{source.path}: {problem} key {keys[0]}{more}: {what} this port's model"
            )


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
    if source.se_scheme == "squeeze":
        _check_se_widths(source, mapping, looks)

    import tensorflow as tf

    from model import build_model

    padding = "tf" if source.kind == "tf1" else "symmetric"
    model = build_model(arch, num_classes=num_classes, padding=padding)
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
    config = ModelConfig(arch=arch, num_classes=num_classes, padding=padding)
    path = write_checkpoint(model, config, output)
    dropped = ", last head column (never trained) dropped" if drop_last else ""
    log(f"imported {len(mapping)} tensors of {looks} ({classes} classes{dropped}) from {src}")
    log(f"ignored training state: {'; '.join(source.ignored) or 'none'}")
    log(
        f"wrote {path} ({num_classes} classes, {padding} padding): use it as --model_dir "
        "or --finetune_checkpoint"
    )
    return path


def _check_se_widths(source: Source, mapping: dict, looks: str) -> None:
    """NVIDIA PyTorch's SE squeezes to 16 channels everywhere; the port's reduces by 16."""
    ARCHITECTURES = _architectures()
    key, _ = mapping["stage4_block1_se_reduce/kernel"]
    if source.shapes[key][0] * ARCHITECTURES["se-resnext101-32x4d"].se_ratio != 2048:
        raise UserError(
            f"{source.path} looks like a {looks} whose SE squeezes to {source.shapes[key][0]} "
            "channels in every block; this port's SE reduces by 16 (up to 128 channels), "
            "so it cannot hold these weights"
        )


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of `python -m utils.import_weights`.

    Args:
        argv: the arguments; None: sys.argv[1:].
    """
    ARCHITECTURES = _architectures()
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
