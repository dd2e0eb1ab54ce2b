"""Compare any two saved checkpoints with every divergence measure (``butterfly compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from butterfly.checkpoint import CheckpointError, load_checkpoint
from butterfly.config import DataConfig, EvalConfig
from butterfly.data import load_dataset
from butterfly.experiment.measure import Comparer
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
    result = Comparer(model, dataset, ev).compare(pa, pb)
    return {"a": str(a), "b": str(b), "data": data_cfg.name, **result}
