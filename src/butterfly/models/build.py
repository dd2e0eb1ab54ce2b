"""Building models from a config or a stored spec, and starting from a checkpoint's weights.

:func:`build_model` makes a freshly initialised network for a seed from a :class:`ModelConfig`;
:func:`model_spec` is what is stored next to every checkpoint so :func:`build_from_spec`
rebuilds the architecture.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from butterfly.checkpoint import CheckpointError, load_checkpoint
from butterfly.config import BUILTIN_MODELS, ModelConfig
from butterfly.imports import ImportPathError, resolve
from butterfly.models.cnn import CNN
from butterfly.models.gpt import GPT
from butterfly.models.mlp import MLP
from butterfly.models.params import kaiming_init_
from butterfly.models.resize import attach_resize
from butterfly.models.resnet import ResNet, ResNet50
from butterfly.models.vit import ViT
from butterfly.rng import derive_seed

TrainingTensors = tuple[torch.Tensor, torch.Tensor]  # (x_train, y_train)


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
    if cfg.name == "gpt":
        spec.update(heads=cfg.heads, dropout=cfg.dropout)
    if cfg.name == "hf":
        spec["path"] = cfg.path
        if cfg.task == "causal_lm":
            spec["task"] = "causal_lm"
        if cfg.init == "fresh":
            spec["fresh"] = True
    if not cfg.builtin:
        spec = {"name": cfg.name, "kwargs": cfg.kwargs, "input_shape": list(input_shape),
                "n_classes": n_classes}  # fmt: skip
    if cfg.resize:
        spec["resize"] = list(cfg.resize)
    return spec


def network_input(input_shape: tuple[int, ...], resize: list[int] | None) -> tuple[int, ...]:
    """The input shape the network sees: the data's, with the image resized."""
    if not resize:
        return tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"model.resize is for images (C, H, W); this data set's examples have shape "
            f"{tuple(input_shape)}"
        )
    return (input_shape[0], *resize)


BUILTIN_CLASSES = (MLP, CNN, ResNet, ResNet50, ViT, GPT)


def is_builtin(model: nn.Module) -> bool:
    """Whether ``model`` is one of butterfly's own architectures (He-normal by default)."""
    return isinstance(model, BUILTIN_CLASSES)


def call_factory(
    path: str,
    kwargs: dict[str, Any],
    input_shape: tuple[int, ...],
    n_classes: int,
    seed: int,
    data: TrainingTensors | None = None,
) -> nn.Module:
    """The user's model: the class or factory at ``path`` called with ``kwargs`` and those of
    ``seed``, ``input_shape``, ``n_classes`` it takes, and ``data`` (the training tensors
    ``(x, y)``, for data-dependent initialisation such as whitening filters) when it names a
    ``data`` parameter. Torch's global generator is seeded by the seed while it runs (and
    restored after), so a model that draws its own initial weights with torch's default
    initialisers gets the same θ0 for the same seed."""
    try:
        factory = resolve(path, "model.name")
    except ImportPathError as err:
        raise ValueError(str(err)) from None
    if not callable(factory):
        raise ValueError(f"model.name '{path}' is a {type(factory).__name__}, not a class or factory")
    offered = {"seed": seed, "input_shape": tuple(input_shape), "n_classes": n_classes}
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        extra = {k: v for k, v in offered.items() if (k in params or takes_all) and k not in kwargs}
        if "data" in params and "data" not in kwargs:  # named, never through **kwargs
            extra["data"] = data
    except (TypeError, ValueError):  # no signature (a builtin): pass only the kwargs
        extra = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("init", seed))
        try:
            model = factory(**kwargs, **extra)
        except TypeError as err:
            raise ValueError(f"model '{path}' cannot be called with model.kwargs: {err}") from None
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else ""
            raise ValueError(f"model '{path}' failed to build: {type(err).__name__}: {first}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model '{path}' returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def build_from_spec(
    spec: dict[str, Any], seed: int = 0, data: TrainingTensors | None = None
) -> nn.Module:
    """The architecture of ``spec`` with default (untrained) torch parameters (``seed``,
    ``data``: what a user's model factory is called with)."""
    model = _from_spec(spec, seed, data)
    if spec.get("resize"):
        attach_resize(model, spec["resize"])
    return model


def _from_spec(spec: dict[str, Any], seed: int, data: TrainingTensors | None) -> nn.Module:
    shape = network_input(tuple(spec["input_shape"]), spec.get("resize"))
    n_classes = int(spec["n_classes"])
    name = spec["name"]
    if name not in BUILTIN_MODELS:
        return call_factory(name, spec.get("kwargs") or {}, shape, n_classes, seed, data)
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
    if name == "gpt":
        return GPT(shape, n_classes, spec["width"], spec["depth"], spec.get("heads", 4),
                   spec.get("dropout", 0.0))  # fmt: skip
    if name == "hf":
        from butterfly.models.hf import HFCausalLM, HFClassifier  # imports transformers

        fresh = bool(spec.get("fresh", False))
        if spec.get("task") == "causal_lm":
            return HFCausalLM(spec["path"], shape, fresh)
        return HFClassifier(spec["path"], shape, n_classes, fresh)
    raise ValueError(f"unknown model '{name}'; choose from {', '.join(BUILTIN_MODELS)}")


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    n_classes: int,
    seed: int,
    data: TrainingTensors | None = None,
) -> nn.Module:
    """A freshly initialised model for ``seed`` (in eval mode; the trainer switches dropout on).

    A Hugging Face model keeps its pre-trained weights and draws only what its checkpoint
    lacks (the head); a user's model keeps its own initialisation unless ``cfg.init`` is
    ``kaiming``. With ``cfg.init_from`` the weights come from that butterfly checkpoint,
    except the head (the last Linear layer), which is freshly initialised for the new task.
    """
    cfg = cfg.for_seed(seed)  # '{seed}' in model.path / init_from: this seed's own
    with torch.random.fork_rng(devices=[]):  # torch's own initialisers draw from the seed
        torch.manual_seed(derive_seed("init", seed))
        model = build_from_spec(model_spec(cfg, input_shape, n_classes), seed, data)
    init_fresh = getattr(model, "init_fresh_", None)
    if init_fresh is not None:
        init_fresh(seed)
    elif not cfg.keeps_own_init:
        kaiming_init_(model, seed)
    if cfg.init_from:
        load_backbone_(model, cfg.init_from)
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
    """Copy every parameter but the head from a checkpoint into ``model``: a butterfly
    checkpoint, or any safetensors file of the model's ``state_dict()`` (e.g. a ResNet-50
    pre-trained elsewhere and saved with ``safetensors.torch.save_file``).

    Returns the names loaded. Shapes must match (same architecture, any number of classes).
    """
    path = str(Path(path).expanduser())
    if not Path(path).is_file():
        raise ValueError(f"model.init_from checkpoint {path} does not exist")
    try:
        saved, _, _ = load_checkpoint(Path(path))
        if not saved:  # not butterfly's layout: a plain state dict, parameter names as keys
            saved = load_file(path)
    except CheckpointError as err:
        raise ValueError(f"model.init_from: {err}") from None
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
