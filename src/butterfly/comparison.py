"""Every divergence measure between two networks: two modules or state dicts from Python
(:func:`compare`), or two saved checkpoints (:func:`compare_checkpoints`, ``butterfly compare``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from butterfly.checkpoint import CheckpointError, load_checkpoint
from butterfly.config import DataConfig, EvalConfig
from butterfly.data import Dataset, as_dataset, load_dataset
from butterfly.experiment.measure import Comparer
from butterfly.metrics import is_finite
from butterfly.metrics.evaluate import LossFn
from butterfly.metrics.pairwise import as_params
from butterfly.models import build_from_spec


def compare_checkpoints(
    a: str | Path,
    b: str | Path,
    data: DataConfig | None = None,
    eval_cfg: EvalConfig | None = None,
) -> dict[str, Any]:
    """All measures between two checkpoints of the same architecture.

    The data set and evaluation settings default to those stored in ``a``'s metadata (a
    butterfly member checkpoint carries both).
    """
    pa, _, meta_a = load_checkpoint(Path(a))
    pb, _, meta_b = load_checkpoint(Path(b))
    spec_a, spec_b = meta_a.get("model_spec"), meta_b.get("model_spec")
    if spec_a is None:
        raise CheckpointError(f"{a} has no model_spec in its metadata; cannot rebuild the model")
    if spec_a != spec_b:
        raise CheckpointError(f"{a} and {b} hold different architectures ({spec_a} vs {spec_b})")
    if set(pa) != set(pb):
        raise CheckpointError(f"{a} and {b} have different parameter names")
    data_cfg = data or DataConfig.model_validate(meta_a.get("data", {}))
    ev = eval_cfg or EvalConfig.model_validate(meta_a.get("eval", {}))
    dataset = load_dataset(data_cfg, data_cfg.tokenizer or spec_a.get("path"))
    if list(dataset.input_shape) != list(spec_a["input_shape"]):
        raise CheckpointError(
            f"data set '{data_cfg.name}' has inputs of shape {dataset.input_shape}, the model "
            f"expects {tuple(spec_a['input_shape'])}"
        )
    model = build_from_spec(spec_a)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    warnings = [
        f"{path} holds non-finite weights (NaN or Inf): its measures are meaningless"
        for path, p in ((a, pa), (b, pb)) if not is_finite(p)
    ]  # fmt: skip
    if warnings:  # matching cannot rank NaN similarities
        ev = ev.model_copy(update={"weight_matching": False, "activation_matching": False})
    result = Comparer(model, dataset, ev).compare(pa, pb)
    return {"a": str(a), "b": str(b), "data": data_cfg.name, **result,
            **({"warnings": warnings} if warnings else {})}  # fmt: skip


def compare(
    a: nn.Module | dict[str, torch.Tensor],
    b: nn.Module | dict[str, torch.Tensor],
    data: Dataset | tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    model: nn.Module | None = None,
    eval_cfg: EvalConfig | dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every measure between networks ``a`` and ``b`` (modules, or state dicts with ``model``
    giving the architecture) on ``data`` (a butterfly Dataset or (x_train, y_train, x_test,
    y_test)): L2, the four barriers (Eq. 4), barriers and L2 after weight and activation
    matching with their fixed points, angular CKA and the ensemble's test accuracy. Measures
    the model does not support (no permutation spec, no class scores) are left out.

    >>> import torch, butterfly
    >>> x, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    >>> a = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> out = butterfly.compare(a, butterfly.perturb(a, 0.01), (x, y, x, y))
    >>> sorted(k for k in out if k.startswith("barrier_"))[:2]
    ['barrier_test_error', 'barrier_test_loss']
    """
    arch, pa = as_params(a, model)
    _, pb = as_params(b, model or arch)
    ds = data if isinstance(data, Dataset) else as_dataset(data)
    ev = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig(**(eval_cfg or {}))
    ev = ev.model_copy(update={
        "cka_examples": min(ev.cka_examples, len(ds.y_test)),
        "align_examples": min(ev.align_examples, len(ds.y_train)),
    })  # fmt: skip
    cmp = Comparer(copy.deepcopy(arch).eval(), ds, ev, seed, loss_fn)
    return {k: v for k, v in cmp.compare(pa, pb).items() if v is not None}
