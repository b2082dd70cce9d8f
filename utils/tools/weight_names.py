"""The name mapping between a weight source and this port's variables, with transforms.

Derived from `model.resnet.ARCHITECTURES`: every source tensor is used once, every port
variable set once.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np

from utils.core.errors import UserError
from utils.tools.weight_sources import Source, architectures, torch_block

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
    ARCHITECTURES = architectures()
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
# The mapping: port variable -> (source key, transform).


def _oihw_to_hwio(w):
    return np.transpose(w, (2, 3, 1, 0))


def _dense_from_torch(w):
    return np.reshape(w, (w.shape[0], w.shape[1])).T  # Linear [out, in] or 1x1 conv


def _identity(w):
    return w


def _tf1_names(unit: Unit, param: str, arch: str) -> Tuple[str, Callable]:
    ARCHITECTURES = architectures()
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
        block = torch_block(source, unit.stage, unit.block)
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
