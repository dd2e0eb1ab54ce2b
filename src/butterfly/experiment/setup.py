"""What one seed of an experiment is made of: data, the initial network θ0, the trainer and the
comparer, built once per (config, seed) in whichever process runs the work.

Also the switches every process sets before training (:func:`configure_torch`) and the facts a
run's numbers depend on besides its config (:func:`environment`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from butterfly.config import ConfigError, DataConfig, RunConfig
from butterfly.data import BatchStream, DataError, Dataset, load_dataset
from butterfly.experiment.measure import Comparer
from butterfly.imports import ImportPathError, resolve
from butterfly.metrics.evaluate import LossFn
from butterfly.models import ParamInfo, build_model, model_spec, param_info
from butterfly.train import PopulationTrainer

Tensors = dict[str, torch.Tensor]


def configure_torch(threads: int, tf32: bool = False) -> None:
    """Deterministic algorithms, a fixed intra-op thread count and float32 matrix products on
    CUDA unless ``tf32`` (all recorded with each run)."""
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    # torch.use_deterministic_algorithms(True) also sets an inductor flag, and importing
    # inductor costs ~2.5 s per process; nothing here compiles, so set the switch directly.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is not None:
        setter(True, warn_only=False)
    else:  # pragma: no cover - other torch versions
        torch.use_deterministic_algorithms(True)
    assert torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def resolve_device(name: str) -> str:
    """The torch device of ``runtime.device``: ``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def environment(cfg: RunConfig) -> dict[str, Any]:
    """What a run's numbers depend on besides its config."""
    device = resolve_device(cfg.runtime.device)
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "precision": "float32" + (", TF32 matmul allowed" if cfg.runtime.tf32 else ""),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


@dataclass
class Setup:
    """One seed of an experiment: the data, θ0 (``init``, in ``model``), what each parameter
    is (``info``: kind and init variance, for Eq. 6), the population trainer on the parent's
    batch stream, the model spec stored with checkpoints, and the comparer that measures."""

    cfg: RunConfig
    seed: int
    data: Dataset
    model: nn.Module
    init: Tensors
    info: dict[str, ParamInfo]
    trainer: PopulationTrainer
    model_spec: dict[str, Any]
    comparer: Comparer


@lru_cache(maxsize=4)
def _dataset(
    data_json: str, device: str, tokenizer: str | None = None, run_dir: str | None = None
) -> Dataset:
    cfg = DataConfig.model_validate_json(data_json)
    return load_dataset(cfg, tokenizer, Path(run_dir) if run_dir else None).to(device)


def resolve_epochs(cfg: RunConfig, run_dir: str | Path | None = None) -> RunConfig:
    """``cfg`` with ``recipe.epochs`` (and ``pretrain.recipe.epochs``) turned into steps:
    ceil(epochs x (training examples // batch_size)), counting the training examples of the
    data set each recipe trains on (after ``classes`` and ``max_train``). Unchanged without
    epochs."""
    if not cfg.needs_epochs:
        return cfg
    rd = Path(run_dir) if run_dir else None
    try:
        n = len(load_dataset(cfg.data, cfg.tokenizer_path(), rd).y_train)
        n_pre = None
        if cfg.pretrain is not None and cfg.pretrain.recipe.epochs is not None:
            pre = cfg.pretrain.data
            n_pre = len(load_dataset(pre, cfg.tokenizer_path(pre), rd).y_train)
    except DataError as err:
        raise ConfigError(str(err)) from None
    return cfg.with_epochs(n, n_pre)


def loss_function(cfg: RunConfig) -> LossFn | None:
    """The user's loss function named by ``recipe.loss`` (None: cross-entropy)."""
    if cfg.recipe.loss == "cross_entropy":
        return None
    fn = resolve(cfg.recipe.loss, "recipe.loss")
    if not callable(fn):
        raise ImportPathError(f"recipe.loss '{cfg.recipe.loss}' is not a function")
    return fn


def make_setup(cfg: RunConfig, seed: int, run_dir: Path | None = None) -> Setup:
    """The setup of ``seed``; the data set is built once per process and reused (``run_dir``:
    the run folder, for data kept there)."""
    device = resolve_device(cfg.runtime.device)
    data = _dataset(cfg.data.model_dump_json(), device, cfg.tokenizer_path(),
                    str(run_dir) if run_dir else None)  # fmt: skip
    model = build_model(cfg.model, data.input_shape, data.n_classes, seed).to(device)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    stream = BatchStream(len(data.y_train), cfg.recipe.batch_size, seed)
    loss_fn = loss_function(cfg)
    trainer = PopulationTrainer(
        model, data, stream, cfg.recipe, cfg.runtime.mode, cfg.data.augment, loss_fn
    )
    info = param_info(model, None if cfg.model.builtin else init)
    return Setup(
        cfg,
        seed,
        data,
        model,
        init,
        info,
        trainer,
        model_spec(cfg.model, data.input_shape, data.n_classes),
        Comparer(model, data, cfg.eval, seed, loss_fn),
    )
