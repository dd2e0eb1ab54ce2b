"""Every divergence measure between two networks: two modules or state dicts from Python
(:func:`compare`), or two saved checkpoints (:func:`compare_checkpoints`, ``butterfly compare``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from butterfly.checkpoint import CheckpointError, load_checkpoint
from butterfly.config import BUILTIN_MODELS, STORED, ConfigError, DataConfig, EvalConfig
from butterfly.data import DataError, Dataset, as_dataset, load_dataset
from butterfly.experiment.comparer import Comparer
from butterfly.experiment.resolve import tokenizer_for
from butterfly.metrics import is_finite
from butterfly.metrics.evaluate import LossFn
from butterfly.metrics.pairwise import as_params
from butterfly.models import build_from_spec


def _model_spec(meta: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A checkpoint's stored model description, checked for the fields a rebuild reads."""
    spec = meta.get("model_spec")
    if spec is None:
        raise ConfigError(f"{path} has no model_spec in its metadata: not a butterfly member "
                          "checkpoint, so the architecture cannot be rebuilt")  # fmt: skip
    shape = spec.get("input_shape") if isinstance(spec, dict) else None
    ok = (isinstance(spec, dict) and isinstance(spec.get("name"), str)
          and isinstance(shape, list) and 0 < len(shape) <= 8
          and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 10**7 for d in shape)
          and isinstance(spec.get("n_classes"), int) and 0 < spec["n_classes"] <= 10**7)  # fmt: skip
    if not ok:
        raise ConfigError(
            f"{path}: its metadata's model_spec is not a butterfly model description (a name, "
            "input_shape as a list of positive whole numbers, n_classes)"
        )
    return dict(spec)


def _section(meta: dict[str, Any], key: str, model: type, path: str | Path) -> Any:
    """A stored config section (data or eval) of a checkpoint's metadata, validated."""
    raw = meta.get(key, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: its metadata's '{key}' is not a mapping of settings")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or key
        raise ConfigError(f"{path}: its metadata's {key}.{where} is not valid ({first['msg']})"
                          ) from None  # fmt: skip


def compare_checkpoints(
    a: str | Path,
    b: str | Path,
    data: DataConfig | None = None,
    eval_cfg: EvalConfig | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """All measures between two checkpoints of the same architecture.

    A checkpoint is data: nothing its metadata names is imported or called. A built-in model
    and a built-in data set are rebuilt from the names stored in ``a`` (a butterfly member
    checkpoint carries its model, data set and evaluation settings); a model or data loader of
    your own is used only when you name it here (``model``: its import path, ``butterfly
    compare --model``; ``data``: a data config, ``--data``), never because a file names it.
    """
    try:
        pa, _, meta_a = load_checkpoint(Path(a))
        pb, _, meta_b = load_checkpoint(Path(b))
    except CheckpointError as err:  # a file given on the command line: the user's to fix
        raise ConfigError(str(err)) from None
    spec_a, spec_b = _model_spec(meta_a, a), _model_spec(meta_b, b)
    if spec_a != spec_b:
        raise ConfigError(f"{a} and {b} hold different architectures ({spec_a['name']} vs "
                          f"{spec_b['name']}, or other settings)")  # fmt: skip
    if set(pa) != set(pb):
        raise ConfigError(f"{a} and {b} have different parameter names")
    if spec_a["name"] not in BUILTIN_MODELS:
        if model is None:
            raise ConfigError(
                f"{a} names its model '{spec_a['name']}', code that is not butterfly's; a "
                "checkpoint is data, so butterfly does not import what it names: pass "
                f"--model {spec_a['name']} (model= in Python) if you trust that code"
            )
        spec_a["name"] = model
    elif model is not None and model != spec_a["name"]:
        raise ConfigError(f"{a} holds butterfly's '{spec_a['name']}' model; --model names "
                          f"'{model}'")  # fmt: skip
    data_cfg = data or _section(meta_a, "data", DataConfig, a)
    if data is None and not (data_cfg.builtin or data_cfg.name == STORED):
        raise ConfigError(
            f"{a} names its data loader '{data_cfg.name}', code that is not butterfly's; a "
            "checkpoint is data, so butterfly does not import what it names: pass --data "
            f"{data_cfg.name} if you trust that code, or --data with a built-in data set"
        )
    ev = eval_cfg or _section(meta_a, "eval", EvalConfig, a)
    tokenizer = tokenizer_for(data_cfg, spec_a["name"], spec_a.get("path"), None)
    try:
        dataset = load_dataset(data_cfg, tokenizer)
    except DataError as err:
        raise ConfigError(str(err)) from None
    if list(dataset.input_shape) != list(spec_a["input_shape"]):
        raise ConfigError(
            f"data set '{data_cfg.name}' has inputs of shape {dataset.input_shape}, the model "
            f"expects {tuple(spec_a['input_shape'])}"
        )
    try:
        net = build_from_spec(spec_a).eval()
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{a}: cannot rebuild its model ({err})") from None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    warnings = [
        f"{path} holds non-finite weights (NaN or Inf): its measures are meaningless"
        for path, p in ((a, pa), (b, pb)) if not is_finite(p)
    ]  # fmt: skip
    if warnings:  # matching cannot rank NaN similarities
        ev = ev.model_copy(update={"weight_matching": False, "activation_matching": False})
    result = Comparer(net, dataset, ev).compare(pa, pb)
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
