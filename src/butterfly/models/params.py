"""What each parameter is, for the perturbation mask and the Eq. 6 scale, and He init.

:func:`param_info` tells, for every parameter, whether it is a ``weight``, a ``bias`` or a
``norm`` parameter and its expected variance at initialisation; :func:`kaiming_init_` draws
He-normal weights (N(0, 2/fan_in)), zero biases and unit norm scales from a generator keyed by
the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from butterfly.layers import PERTURBED_TYPES, WEIGHT_TYPES, canonical_names, is_norm, trainable
from butterfly.rng import generator

ParamKind = Literal["weight", "bias", "norm"]


@dataclass(frozen=True)
class ParamInfo:
    """What a parameter is and its expected per-element variance at initialisation."""

    kind: ParamKind
    init_var: float


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
            elif is_norm(module):
                if isinstance(getattr(module, "weight", None), torch.Tensor):
                    module.weight.fill_(1.0)
                if isinstance(getattr(module, "bias", None), torch.Tensor):
                    module.bias.zero_()
    return model


@dataclass(frozen=True)
class Census:
    """How many tensors and numbers of a model are trainable weights, biases, norm
    parameters, frozen, and how many extra names tied parameters have."""

    counts: dict[str, tuple[int, int]]

    def line(self) -> str:
        parts = [f"{kind} {t} tensors / {n:,} numbers" for kind, (t, n) in self.counts.items() if t]
        return "parameters: " + "; ".join(parts)


def census(model: nn.Module, info: dict[str, ParamInfo]) -> Census:
    params = dict(model.named_parameters())
    counts: dict[str, list[int]] = {k: [0, 0] for k in ("weights", "biases", "norm", "frozen", "tied")}
    for name, p in params.items():
        key = {"weight": "weights", "bias": "biases", "norm": "norm"}[info[name].kind] \
            if name in info else "frozen"  # fmt: skip
        counts[key][0] += 1
        counts[key][1] += p.numel()
    for alias, name in canonical_names(model).items():
        if alias != name:
            counts["tied"][0] += 1
            counts["tied"][1] += params[name].numel()
    return Census({k: (t, n) for k, (t, n) in counts.items()})


def mean_square(t: torch.Tensor) -> float:
    return float(t.detach().to(torch.float64).square().mean()) if t.numel() else 0.0


def param_info(
    model: nn.Module, measured: dict[str, torch.Tensor] | None = None, own_init: bool = True
) -> dict[str, ParamInfo]:
    """Kind and expected init variance of every parameter (paper Eq. 3 and appendix B.3).

    Weights of linear/conv layers have variance 2/fan_in (He init). Biases and normalisation
    parameters are initialised to constants, so, following appendix B.3, they are given the
    scale of the weights of the layer that follows them (in module order); a bias of the last
    layer, with no layer after it, takes its own layer's scale.

    ``measured``: θ0. Parameters outside known layers are then classified by shape: 1-D ones
    named ``*bias`` are biases, everything else a weight with its mean square at θ0 as its
    variance. With ``own_init`` (a model that keeps its own initialisation,
    ``ModelConfig.keeps_own_init``), the weights of known layers also take their mean square
    at θ0 (2/fan_in if one starts at zero) instead of He's 2/fan_in.
    """
    modules = list(model.named_modules())
    # A model may fix one init variance for all its weights (HF: initializer_range^2).
    fixed_var: float | None = getattr(model, "weight_init_var", None)
    prefixes = {id(m): (f"{n}." if n else "") for n, m in modules}
    canonical = canonical_names(model)

    def own_var(m: nn.Module) -> float:
        if fixed_var is not None:
            return fixed_var
        if measured is not None and own_init:
            name = canonical[prefixes[id(m)] + "weight"]
            v = mean_square(measured.get(name, m.weight))
            if v > 0:
                return v
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

    def put(name: str, value: ParamInfo) -> None:
        # a tied parameter (a language model's output layer sharing the input embedding) is
        # one parameter, under the name named_parameters() gives it: classified where first met
        info.setdefault(canonical.get(name, name), value)

    for i, (mname, m) in enumerate(modules):
        prefix = f"{mname}." if mname else ""
        for pname, var in getattr(m, "extra_params", {}).items():
            put(prefix + pname, ParamInfo("weight", var))
        if isinstance(m, PERTURBED_TYPES):
            own = own_var(m)
            put(prefix + "weight", ParamInfo("weight", own))
            if getattr(m, "bias", None) is not None:
                put(prefix + "bias", ParamInfo("bias", following_var(i, own)))
        elif is_norm(m) or _gain_of_ones(m):
            v = following_var(i, None) if weight_vars else 1.0
            for pname, _ in m.named_parameters(recurse=False):
                put(prefix + pname, ParamInfo("norm", v))
    # only what is trained: frozen parameters are neither perturbed nor counted
    names = list(trainable(model))
    info = {n: info[n] for n in names if n in info}
    missing = [n for n in names if n not in info]
    if fixed_var is not None:  # e.g. a HF ViT's class token and position embeddings
        info.update({n: ParamInfo("weight", fixed_var) for n in missing})
        missing = []
    if measured is not None:
        fallback = weight_vars[-1][1] if weight_vars else 1.0
        for n in missing:
            t = measured[n]
            if t.dim() == 1 and n.endswith("bias"):
                info[n] = ParamInfo("bias", fallback)
            else:
                v = mean_square(t)
                info[n] = ParamInfo("weight", v if v > 0 else fallback)
        missing = []
    if missing:
        raise ValueError(
            f"cannot classify parameters {missing}: only Linear, Conv, Embedding and norm "
            "layers are known (list others in the module's extra_params)"
        )
    return info


def _gain_of_ones(m: nn.Module) -> bool:
    """A module whose own parameters include a 1-D gain initialised to ones (a norm layer by
    what it is, whatever its class is called)."""
    own = dict(m.named_parameters(recurse=False))
    return any(p.dim() == 1 and p.numel() > 1 and bool((p.detach() == 1).all())
               for p in own.values()) and all(p.dim() == 1 for p in own.values())  # fmt: skip
