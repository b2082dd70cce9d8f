"""Keras models of the ResNet family, described by `config.ModelConfig`.

`build(config)` builds the model of a config (float, or quantization-aware with
`quantize`); `resnet.build_model` is the float builder with keyword arguments. Importing
this package does not import TensorFlow; `model.config` never does.
"""

from model.config import ARCHITECTURES, ModelConfig

__all__ = ["ARCHITECTURES", "ModelConfig", "build", "build_model"]


def build(config: ModelConfig):
    """The Keras model of `config`: the float model, or its QAT copy with `quantize`."""
    from model import quantization
    from model.resnet import build_model

    model = build_model(
        config.arch,
        num_classes=config.num_classes,
        data_format=config.data_format,
        weight_init=config.weight_init,
        use_final_conv=config.use_final_conv,
        normalize_input=config.normalize_input,
        padding=config.padding,
        se_width=config.se_width,
    )
    if not config.quantize:
        return model
    return quantization.quantize_model(
        model, symmetric=config.symmetric, use_qdq=config.use_qdq, quant_delay=config.quant_delay
    )


def __getattr__(name):
    if name == "build_model":  # imports TensorFlow, so only when asked for
        from model.resnet import build_model

        return build_model
    raise AttributeError(f"module 'model' has no attribute {name!r}")
