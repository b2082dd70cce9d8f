"""Copying float weights between models by layer name, for fine-tuning.

Either model may be float or quantization-aware (QAT): a QAT wrapper gives or takes its
wrapped layer's float weights, never its quantizer state.
"""

from collections.abc import Iterable

from utils.core.tf_compat import keras


def _weighted_layers(model):
    return {layer.name: layer for layer in model.layers if layer.weights}


def _float_layer(layer):
    # Imported here: model.quantization imports this module (quantize_model copies weights).
    from model.quantization.wrapper import QATWrapper

    return layer.layer if isinstance(layer, QATWrapper) else layer


def copy_float_weights(
    source: keras.Model, target: keras.Model, skip: Iterable[str] = ()
) -> list[str]:
    """Copy every layer's float weights from `source` into `target`, matched by name.

    A `QATWrapper` contributes or receives its wrapped layer's weights (kernel, bias);
    quantizer ranges, counters and `quant_step` are left alone.

    Args:
        source: the Keras model to copy from, float or QAT.
        target: the Keras model to copy into, float or QAT.
        skip: names of layers not to copy (e.g. a head with another class count).

    Returns:
        The names of the copied layers.

    Raises:
        ValueError: the layer names or weight shapes differ outside `skip`.
    """
    src, dst = _weighted_layers(source), _weighted_layers(target)
    skip = set(skip)
    missing = sorted(set(dst) - set(src) - skip)
    extra = sorted(set(src) - set(dst) - skip)
    if missing or extra:
        raise ValueError(
            f"models differ: layers only in the target {missing[:5]}, "
            f"only in the source {extra[:5]}"
        )
    copied = []
    for name, layer in dst.items():
        if name in skip:
            continue
        to_layer, from_layer = _float_layer(layer), _float_layer(src[name])
        values = from_layer.get_weights()
        shapes = [tuple(w.shape) for w in to_layer.weights]
        if shapes != [tuple(v.shape) for v in values]:
            raise ValueError(
                f"layer {name}: weight shapes {shapes} differ from the source's "
                f"{[tuple(v.shape) for v in values]}"
            )
        to_layer.set_weights(values)
        copied.append(name)
    return copied
