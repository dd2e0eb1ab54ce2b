"""Models: the built-in architectures (each with its permutation spec), building them from a
config, and the per-parameter metadata (kind, init variance) every other stage relies on."""

from butterfly.models.build import (
    build_from_spec,
    build_model,
    head_names,
    is_builtin,
    load_backbone_,
    model_spec,
)
from butterfly.models.cnn import CNN
from butterfly.models.mlp import MLP
from butterfly.models.params import (
    Census,
    ParamInfo,
    canonical_names,
    census,
    kaiming_init_,
    param_info,
    trainable,
)
from butterfly.models.resnet import ResNet, ResNet50
from butterfly.models.vit import ViT

__all__ = [
    "CNN",
    "MLP",
    "Census",
    "ParamInfo",
    "ResNet",
    "ResNet50",
    "ViT",
    "build_from_spec",
    "build_model",
    "canonical_names",
    "census",
    "head_names",
    "is_builtin",
    "kaiming_init_",
    "load_backbone_",
    "model_spec",
    "param_info",
    "trainable",
]
