"""Open SRC for import_weights and recognise what it holds, from names and shapes alone.

SRC: the original's TF1 checkpoints (NVIDIA ConvNets names), PyTorch `.pth`/`.pt`
(state_dict or a checkpoint dict holding one; timm, torchvision, NVIDIA PyTorch key names,
DDP `module.` prefix too) and `.safetensors`. Training state is set aside, not read.
"""

import os
import re
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from utils.core.errors import UserError

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
TF1_TRAINING_STATE = re.compile(r"(^|/)(global_step|current_loss_scale(_\d+)?|good_steps(_\d+)?)$")


def architectures() -> dict:
    """`model.resnet.ARCHITECTURES`, imported late: it imports TensorFlow, whose start-up
    log level `main` sets first."""
    from model.config import ARCHITECTURES

    return ARCHITECTURES


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


def torch_block(source: Source, stage: int, block: int) -> str:
    if source.scheme == "layers":
        return f"layers.{stage - 1}.{block - 1}"
    return f"layer{stage}.{block - 1}"


def describe_torch(source: Source) -> Tuple[Optional[str], str, int]:
    """(matching arch or None, what it looks like, class count) of a PyTorch source.

    Args:
        source: an opened PyTorch source.
    """
    ARCHITECTURES = architectures()
    shapes, blocks, widths, groups = source.shapes, [], [], []
    for stage in range(1, 5):
        count = 0
        while f"{torch_block(source, stage, count + 1)}.conv1.weight" in shapes:
            count += 1
        blocks.append(count)
        first = torch_block(source, stage, 1)
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
    ARCHITECTURES = architectures()
    scopes = sorted({name.split("/")[0] for name in source.shapes if "/" in name})
    arch = scopes[0] if len(scopes) == 1 and scopes[0] in ARCHITECTURES else None
    classes = source.shapes.get(f"{arch}/output/dense/bias", (0,))[0] if arch else 0
    looks = arch or f"TF checkpoint with scopes {', '.join(scopes[:3]) or '(none)'}"
    return arch, f"{source.family} {looks}", classes
