"""Keras models of the ResNet family: `build_model(arch, ...)`."""

from model.resnet import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "build_model"]
