"""Quantization-aware training (QAT): 8-bit fake quantization around every conv and dense.

`quantize_model` turns a float model into a QAT copy (same layer names and float
weights) whose Conv2D, GroupedConv2D and Dense layers quantize their input (per tensor,
moving-average range) and kernel (per output channel, the kernel's own range), with
FakeQuant or, with `use_qdq`, QuantizeAndDequantize ops. Training calls `set_quant_step`
so the first `quant_delay` steps run in float; inference is always quantized.
Built on TFMOT's Keras quantization interfaces (`tfmot_compat`). docs/design.md
says why the quantizers are the port's own.
"""

from model.quantization.convert import (
    QUANTIZED_LAYERS,
    is_quantized,
    qat_layers,
    quantize_model,
    set_quant_step,
)
from model.quantization.quantizers import EMA_DECAY, INIT_RANGE
from model.quantization.wrapper import QATWrapper

__all__ = [
    "EMA_DECAY",
    "INIT_RANGE",
    "QUANTIZED_LAYERS",
    "QATWrapper",
    "is_quantized",
    "qat_layers",
    "quantize_model",
    "set_quant_step",
]
