"""The layer types butterfly understands, shared by the models (parameter kinds and init
variances) and the permutation specs derived from a traced graph.

* weight layers: a weight whose axis 0 is the output units and axis 1 the input units;
* normalisation layers: a per-channel affine (scale and shift); BatchNorm's running statistics
  are buffers, not parameters (:func:`running_statistics`);
* embeddings: perturbed as weights (transformers).
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)
# every normalisation class torch has (RMSNorm from torch 2.4)
TORCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)  # fmt: skip
# Layers whose weights are perturbed as weights (embeddings too, for transformers).
PERTURBED_TYPES = (*WEIGHT_TYPES, nn.Embedding)


def is_norm(module: nn.Module) -> bool:
    """Whether a module is a normalisation layer, by what it is: its own declaration (a class
    or instance attribute ``is_norm = True`` or ``False``, which wins), one of torch's norm
    classes, or a class whose name says norm (``LayerNorm``, ``RMSNorm``, ``ScaleNorm``...), as
    long as it is not a weight layer."""
    declared = getattr(module, "is_norm", None)
    if isinstance(declared, bool):
        return declared
    if isinstance(module, TORCH_NORMS):
        return True
    return "norm" in type(module).__name__.lower() and not isinstance(module, PERTURBED_TYPES)


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters butterfly trains, perturbs, counts and stores: every parameter that
    requires a gradient, once (a tied parameter under the first name ``named_parameters()``
    gives it; ``functional_call`` fills its other names). Frozen parameters
    (``requires_grad=False``) are left as the model has them."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def canonical_names(model: nn.Module) -> dict[str, str]:
    """Every name each parameter has (tied ones have several) -> the name it is known by."""
    first: dict[int, str] = {}
    return {n: first.setdefault(id(p), n)
            for n, p in model.named_parameters(remove_duplicate=False)}  # fmt: skip


RUNNING_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def statistic_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._NormBase]:
    """The layers that keep running statistics as they train (BatchNorm, and InstanceNorm with
    ``track_running_stats=True``), by module name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats}  # fmt: skip


def running_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the running statistics the model has now (``running_mean``, ``running_var``,
    ``num_batches_tracked`` of every :func:`statistic_layers` layer), by buffer name: what each
    member of a population carries beside its parameters. Empty for a model without them."""
    out = {}
    for name, m in statistic_layers(model).items():
        for b in RUNNING_BUFFERS:
            t = getattr(m, b, None)
            if isinstance(t, torch.Tensor):
                out[f"{name}.{b}" if name else b] = t.detach().clone()
    return out
