"""The layer types butterfly understands, shared by the models (parameter kinds and init
variances) and the permutation specs derived from a traced graph.

* weight layers: a weight whose axis 0 is the output units and axis 1 the input units;
* normalisation layers: a per-channel affine (scale and shift), no running statistics needed
  for LayerNorm/GroupNorm (BatchNorm's running statistics are buffers, not parameters);
* embeddings: perturbed as weights (transformers).
"""

from __future__ import annotations

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
