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
from butterfly.models.resnet import ResNet, ResNet50
from butterfly.models.vit import ViT
from butterfly.rng import generator

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)
WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
# Layers whose weights are perturbed as weights (embeddings too, for transformers).
PERTURBED_TYPES = (*WEIGHT_TYPES, nn.Embedding)

ParamKind = Literal["weight", "bias", "norm"]


@dataclass(frozen=True)
class ParamInfo:
    """What a parameter is and its expected per-element variance at initialisation."""

    kind: ParamKind
    init_var: float


def model_spec(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    """Everything needed to rebuild the architecture (stored next to checkpoints)."""
    spec: dict[str, Any] = {
        "name": cfg.name,
        "width": cfg.width,
        "depth": cfg.depth,
        "input_shape": list(input_shape),
        "n_classes": n_classes,
    }
    if cfg.name == "vit":
        spec.update(patch=cfg.patch, heads=cfg.heads, dropout=cfg.dropout)
    if cfg.name == "hf":
        spec["path"] = cfg.path
    return spec


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
    if name == "resnet50":
        return ResNet50(shape, n_classes, spec["width"])
    if name == "vit":
        return ViT(
            shape, n_classes, spec["width"], spec["depth"], spec.get("patch", 4),
            spec.get("heads", 3), dropout=spec.get("dropout", 0.0),
        )  # fmt: skip
    if name == "hf":
        from butterfly.models.hf import HFClassifier

        return HFClassifier(spec["path"], shape, n_classes)
    raise ValueError(f"unknown model '{name}'; choose from mlp, cnn, resnet, resnet50, vit, hf")


def fan_in(weight: torch.Tensor) -> int:
    return math.prod(weight.shape[1:])


def kaiming_init_(model: nn.Module, seed: int) -> nn.Module:
    """He-normal initialisation drawn from a generator keyed by ``seed`` (in parameter order).

    Parameters a module lists in ``extra_params`` (a ViT's class token and positional
    embedding) are drawn from N(0, the variance it gives).
    """
    g = generator("init", seed)
    with torch.no_grad():
        for module in model.modules():
            for pname, var in getattr(module, "extra_params", {}).items():
                p = getattr(module, pname)
                p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(var))
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
    """A freshly initialised model for ``seed`` (in eval mode; the trainer switches dropout on).

    A Hugging Face model keeps its pre-trained weights and draws only what its checkpoint
    lacks (the head). With ``cfg.init_from`` the weights come from that butterfly checkpoint,
    except the head (the last Linear layer), which is freshly initialised for the new task.
    """
    model = build_from_spec(model_spec(cfg, input_shape, n_classes))
    init_fresh = getattr(model, "init_fresh_", None)
    if init_fresh is not None:
        init_fresh(seed)
    else:
        kaiming_init_(model, seed)
    if cfg.init_from:
        load_backbone_(model, cfg.init_from.replace("{seed}", str(seed)))
    return model.eval()


def head_names(model: nn.Module) -> list[str]:
    """Parameters of the classification head: the last Linear layer in module order."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        return []
    return [f"{last}.{p}" for p, _ in model.get_submodule(last).named_parameters(recurse=False)]


def load_backbone_(model: nn.Module, path: str) -> list[str]:
    """Copy every parameter but the head from a butterfly checkpoint into ``model``.

    Returns the names loaded. Shapes must match (same architecture, any number of classes).
    """
    from pathlib import Path

    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ValueError(f"model.init_from checkpoint {path} does not exist")
    saved = {k[len("param.") :]: v for k, v in load_file(path).items() if k.startswith("param.")}
    head = set(head_names(model))
    params = dict(model.named_parameters())
    loaded = []
    with torch.no_grad():
        for name, p in params.items():
            if name in head:
                continue
            if name not in saved:
                raise ValueError(
                    f"checkpoint {path} lacks parameter '{name}': another architecture?"
                )
            if saved[name].shape != p.shape:
                raise ValueError(
                    f"checkpoint {path}: '{name}' has shape {tuple(saved[name].shape)}, the model "
                    f"needs {tuple(p.shape)}"
                )
            p.copy_(saved[name])
            loaded.append(name)
    return loaded


def param_info(model: nn.Module) -> dict[str, ParamInfo]:
    """Kind and expected init variance of every parameter (paper Eq. 3 and appendix B.3).

    Weights of linear/conv layers have variance 2/fan_in. Biases and normalisation parameters
    are initialised to constants, so, following appendix B.3, they are given the scale of the
    weights of the layer that follows them (in module order); a bias of the last layer, with no
    layer after it, takes its own layer's scale.
    """
    modules = list(model.named_modules())
    # A model may fix one init variance for all its weights (HF: initializer_range^2).
    fixed_var: float | None = getattr(model, "weight_init_var", None)

    def own_var(m: nn.Module) -> float:
        if fixed_var is not None:
            return fixed_var
        if isinstance(m, nn.Embedding):
            return 1.0  # torch's default N(0, 1) embedding init
        return 2.0 / fan_in(m.weight)

    weight_vars = [
        (i, own_var(m)) for i, (_, m) in enumerate(modules) if isinstance(m, PERTURBED_TYPES)
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
        for pname, var in getattr(m, "extra_params", {}).items():
            info[prefix + pname] = ParamInfo("weight", var)
        if isinstance(m, PERTURBED_TYPES):
            own = own_var(m)
            info[prefix + "weight"] = ParamInfo("weight", own)
            if getattr(m, "bias", None) is not None:
                info[prefix + "bias"] = ParamInfo("bias", following_var(i, own))
        elif isinstance(m, NORM_TYPES):
            v = following_var(i, None)
            for pname, _ in m.named_parameters(recurse=False):
                info[prefix + pname] = ParamInfo("norm", v)
    missing = [n for n, _ in model.named_parameters() if n not in info]
    if fixed_var is not None:  # e.g. a HF ViT's class token and position embeddings
        info.update({n: ParamInfo("weight", fixed_var) for n in missing})
        missing = []
    if missing:
        raise ValueError(
            f"cannot classify parameters {missing}: only Linear, Conv, Embedding and norm "
            "layers are known (list others in the module's extra_params)"
        )
    return info


__all__ = [
    "CNN",
    "MLP",
    "ParamInfo",
    "ResNet",
    "ResNet50",
    "ViT",
    "build_from_spec",
    "build_model",
    "head_names",
    "kaiming_init_",
    "load_backbone_",
    "model_spec",
    "param_info",
]
