"""What a model is, without importing TensorFlow: the architecture table and `ModelConfig`.

The command-line parser takes its `--arch` choices from `ARCHITECTURES`; a run builds one
`ModelConfig` from its flags, and the model builder, the checkpoint sidecar
(`model_config.json`) and the messages that name a model all read that one object.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping

IMAGENET_MEAN = (123.68, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.120, 57.385)
DATA_FORMATS = ("NHWC", "NCHW")
PADDINGS = ("tf", "symmetric")  # TF 'SAME' (the original's) or PyTorch's symmetric


@dataclass(frozen=True)
class ArchSpec:
    blocks: tuple  # bottleneck blocks per stage
    widths: tuple  # bottleneck (3x3 conv) channels per stage
    expansion: int  # block output channels = expansion * width
    groups: int = 1  # groups of the 3x3 conv (cardinality)
    se_ratio: int = 0  # squeeze-and-excitation reduction; 0 = no SE


ARCHITECTURES = {
    "resnet50": ArchSpec(blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), expansion=4),
    "resnext101-32x4d": ArchSpec(
        blocks=(3, 4, 23, 3), widths=(128, 256, 512, 1024), expansion=2, groups=32
    ),
    "se-resnext101-32x4d": ArchSpec(
        blocks=(3, 4, 23, 3), widths=(128, 256, 512, 1024), expansion=2, groups=32, se_ratio=16
    ),
}


@dataclass(frozen=True)
class ModelConfig:
    """One model: the fields a checkpoint's variables depend on (saved beside it, in
    `SAVED`), then how this run builds it (data format, initializer, input scaling)."""

    arch: str
    num_classes: int = 1000
    use_final_conv: bool = False
    quantize: bool = False
    symmetric: bool = False
    use_qdq: bool = False
    data_format: str = "NHWC"
    weight_init: str = "fan_out"
    normalize_input: bool = True  # False when the input pipeline normalises (DALI)
    quant_delay: int = 0
    padding: str = "tf"  # "symmetric": PyTorch's, for imported PyTorch weights
    se_width: int = 0  # SE hidden channels; 0: the arch's ratio; 16: NVIDIA PyTorch's

    SAVED = (
        "arch",
        "num_classes",
        "use_final_conv",
        "quantize",
        "symmetric",
        "use_qdq",
        "padding",
        "se_width",
    )
    FLAGS = ("use_final_conv", "quantize", "symmetric", "use_qdq")  # boolean flags
    # Set by the checkpoint a run starts from (its sidecar), never by a flag: the value of
    # a sidecar without the key (written before the option existed) and of a new model.
    RECORDED = {"padding": "tf", "se_width": 0}

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; choose from {sorted(ARCHITECTURES)}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if not isinstance(self.se_width, int) or self.se_width < 0:
            raise ValueError(f"se_width must be an integer >= 0, got {self.se_width!r}")
        if self.se_width and not ARCHITECTURES[self.arch].se_ratio:
            raise ValueError(f"se_width needs an arch with SE, not {self.arch!r}")

    @classmethod
    def from_args(cls, args, **recorded: Any) -> "ModelConfig":
        """The model the command line `args` asks for.

        Args:
            args: the parsed command line.
            **recorded: `RECORDED` fields of the checkpoint the run starts from.
        """
        return cls(
            arch=args.arch,
            num_classes=args.num_classes,
            use_final_conv=bool(args.use_final_conv),
            quantize=bool(args.quantize),
            symmetric=bool(args.symmetric),
            use_qdq=bool(args.use_qdq),
            data_format=args.data_format,
            weight_init=args.weight_init,
            normalize_input=not args.dali,  # DALI delivers normalised images
            quant_delay=args.quant_delay,
            **{**cls.RECORDED, **recorded},
        )

    def saved(self) -> Dict[str, Any]:
        """The content of model_config.json."""
        return {key: getattr(self, key) for key in self.SAVED}

    def with_saved(self, saved: Mapping[str, Any]) -> "ModelConfig":
        """This config with a model_config.json's fields; a sidecar without the
        quantization keys is a float model's."""
        fields = {key: False for key in ("quantize", "symmetric", "use_qdq")}
        fields.update(self.RECORDED)  # sidecars from before these options
        fields.update({key: saved[key] for key in self.SAVED if key in saved})
        return dataclasses.replace(self, **fields)

    def describe(self) -> str:
        """The flags that build this model, e.g. `--arch resnet50 --num_classes 10`."""
        flags = [f"--arch {self.arch}", f"--num_classes {self.num_classes}"]
        flags += [f"--{key}" for key in self.FLAGS if getattr(self, key)]
        if self.padding != "tf":
            flags.append(f"({self.padding} padding)")
        if self.se_width:
            flags.append(f"(SE width {self.se_width})")
        return " ".join(flags)
