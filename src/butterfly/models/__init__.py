"""Model zoo and the per-tensor metadata every other stage relies on.

:func:`build_model` makes a Kaiming/He-normal initialised network (weights ~ N(0, 2/fan_in),
biases 0, norm scale 1 and shift 0) from a :class:`ModelConfig`; the same spec rebuilds it from a
checkpoint. :func:`param_info` tells, for every parameter, whether it is a ``weight``, a
``bias`` or a ``norm`` parameter and its expected variance at initialisation, which the
perturbation mask and the Eq. 6 scale need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from butterfly.config import ModelConfig
from butterfly.models.cnn import CNN
from butterfly.models.mlp import MLP
from butterfly.models.resnet import ResNet
from butterfly.rng import generator

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)
WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)

ParamKind = Literal["weight", "bias", "norm"]


@dataclass(frozen=True)
class ParamInfo:
    """What a parameter is and its expected per-element variance at initialisation."""

    kind: ParamKind
    init_var: float


def model_spec(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    """Everything needed to rebuild the architecture (stored next to checkpoints)."""
    return {
        "name": cfg.name,
        "width": cfg.width,
        "depth": cfg.depth,
        "input_shape": list(input_shape),
        "n_classes": n_classes,
    }


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """The architecture of ``spec`` with default (untrained) torch parameters."""
    shape = tuple(spec["input_shape"])
    n_classes = int(spec["n_classes"])
    name = spec["name"]
    if name == "mlp":
        return MLP(shape, n_classes, spec["width"], spec["depth"])
    if name == "cnn":
        return CNN(shape, n_classes, spec["width"], spec["depth"])
    if name == "resnet":
        return ResNet(shape, n_classes, spec["depth"], spec["width"])
    raise ValueError(f"unknown model '{name}'; choose from mlp, cnn, resnet")


def fan_in(weight: torch.Tensor) -> int:
    return math.prod(weight.shape[1:])


def kaiming_init_(model: nn.Module, seed: int) -> nn.Module:
    """He-normal initialisation drawn from a generator keyed by ``seed`` (in parameter order)."""
    g = generator("init", seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, WEIGHT_TYPES):
                std = math.sqrt(2.0 / fan_in(module.weight))
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, NORM_TYPES) and getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
                module.bias.zero_()
    return model


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int, seed: int
) -> nn.Module:
    """A freshly initialised model for ``seed``."""
    return kaiming_init_(build_from_spec(model_spec(cfg, input_shape, n_classes)), seed)


def param_info(model: nn.Module) -> dict[str, ParamInfo]:
    """Kind and expected init variance of every parameter (paper Eq. 3 and appendix B.3).

    Weights of linear/conv layers have variance 2/fan_in. Biases and normalisation parameters
    are initialised to constants, so, following appendix B.3, they are given the scale of the
    weights of the layer that follows them (in module order); a bias of the last layer, with no
    layer after it, takes its own layer's scale.
    """
    modules = list(model.named_modules())
    weight_vars = [
        (i, 2.0 / fan_in(m.weight))
        for i, (_, m) in enumerate(modules)
        if isinstance(m, WEIGHT_TYPES)
    ]

    def following_var(i: int, fallback: float | None) -> float:
        for j, v in weight_vars:
            if j > i:
                return v
        if fallback is None:
            return weight_vars[-1][1]
        return fallback

    info: dict[str, ParamInfo] = {}
    for i, (mname, m) in enumerate(modules):
        prefix = f"{mname}." if mname else ""
        if isinstance(m, WEIGHT_TYPES):
            own = 2.0 / fan_in(m.weight)
            info[prefix + "weight"] = ParamInfo("weight", own)
            if m.bias is not None:
                info[prefix + "bias"] = ParamInfo("bias", following_var(i, own))
        elif isinstance(m, NORM_TYPES):
            v = following_var(i, None)
            for pname, _ in m.named_parameters(recurse=False):
                info[prefix + pname] = ParamInfo("norm", v)
    missing = [n for n, _ in model.named_parameters() if n not in info]
    if missing:
        raise ValueError(
            f"cannot classify parameters {missing}: only Linear, Conv and norm layers are known"
        )
    return info


__all__ = [
    "CNN",
    "MLP",
    "ParamInfo",
    "ResNet",
    "build_from_spec",
    "build_model",
    "kaiming_init_",
    "model_spec",
    "param_info",
]
