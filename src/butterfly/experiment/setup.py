"""What one seed of an experiment is made of: data, the initial network θ0, the trainer and the
comparer, built once per (config, seed) in whichever process runs the work.

Also the switches every process sets before training (:func:`configure_torch`) and the facts a
run's numbers depend on besides its config (:func:`environment`).
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from butterfly.config import RunConfig
from butterfly.data import BatchStream, Dataset
from butterfly.experiment.comparer import Comparer
from butterfly.experiment.resolve import Resolved, dataset
from butterfly.models import ParamInfo, build_model, model_spec, param_info, trainable
from butterfly.train import PopulationTrainer
from butterfly.train.population import at_step
from butterfly.train.recipe import update_for
from butterfly.version import __version__

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


def environment(resolved: Resolved) -> dict[str, Any]:
    """What a run's numbers depend on besides its config: butterfly's version (and its git
    commit when it runs from a checkout), torch, Python, the device, threads and precision."""
    device = resolved.device
    env: dict[str, Any] = {
        "butterfly": butterfly_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "precision": precision(resolved.cfg),
        "parameters": resolved.census,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    commit = git_commit()
    if commit is not None:
        env["butterfly_commit"] = commit
    return env


def precision(cfg: RunConfig) -> str:
    """How the numbers were computed: float32, or training under bf16/fp16 autocast with the
    weights, optimizer state and every measurement in float32."""
    p = cfg.recipe.precision
    text = "float32" if p == "float32" else f"{p} autocast in training; weights and measurements float32"
    return text + (", TF32 matmul allowed" if cfg.runtime.tf32 else "")


def butterfly_version() -> str:
    return __version__


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout butterfly runs from (``+dirty`` with uncommitted changes),
    or None when it is installed from a package."""
    src = Path(__file__).resolve().parents[3]
    if not (src / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


@dataclass
class Setup:
    """One seed of an experiment on its ``device``: the data, θ0 (``init``, in ``model``), what
    each parameter is (``info``: kind and init variance, for Eq. 6), the population trainer on the parent's
    batch stream, the model spec stored with checkpoints, and the comparer that measures."""

    cfg: RunConfig
    seed: int
    device: str
    data: Dataset
    model: nn.Module
    init: Tensors
    info: dict[str, ParamInfo]
    trainer: PopulationTrainer
    model_spec: dict[str, Any]
    comparer: Comparer


def make_setup(resolved: Resolved, seed: int, run_dir: Path | None = None) -> Setup:
    """The setup of ``seed`` for a resolved run; the data set is built once per process and
    reused (``run_dir``: the run folder, for data kept there)."""
    cfg, device = resolved.cfg, resolved.device
    data = dataset(cfg.data, resolved.tokenizer, run_dir, device, max_rows=resolved.preview)
    model = build_model(cfg.model, data.input_shape, data.n_classes, seed,
                        (data.x_train, data.y_train)).to(device)
    init = {k: v.detach().clone() for k, v in trainable(model).items()}
    stream = BatchStream(len(data.y_train), cfg.recipe.batch_size, seed)
    loss_fn = resolved.loss_fn()
    info = param_info(model, init, own_init=cfg.model.keeps_own_init)
    update = update_for(cfg.recipe, init, info)
    trainer = PopulationTrainer(
        model, data, stream, cfg.recipe, cfg.runtime.mode, cfg.data.augment, loss_fn, update
    )
    return Setup(
        cfg,
        seed,
        device,
        data,
        model,
        init,
        info,
        trainer,
        model_spec(cfg.model.for_seed(seed), data.input_shape, data.n_classes),
        Comparer(model, data, cfg.eval, seed, at_step(loss_fn, cfg.recipe.steps)),
    )
