"""Training recipes as pure functions of the step: learning-rate schedules and optimizers.

Optimizers (:mod:`butterfly.train.optim`) act on dicts of *stacked* tensors (leading axis =
population member), so a member's update never depends on the other members. State (momentum,
Adam moments, a torch optimizer's own) lives in plain dicts that are saved with every parent
checkpoint; the schedule position is the global step, so a run resumed at step t continues
exactly where its parent was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch

from butterfly.config import ConfigError, RecipeConfig
from butterfly.config.sections import BUILTIN_OPTIMIZERS, BUILTIN_SCHEDULES
from butterfly.imports import ImportPathError, resolve
from butterfly.models import ParamInfo
from butterfly.train.optim import Builtin, TorchUpdate, Update, couples_members, param_groups

Tensors = dict[str, torch.Tensor]
OptState = dict[str, Tensors]


def lr_at(cfg: RecipeConfig, step: int) -> float:
    """Learning rate used for the update at ``step`` (0-based): a pure function of the step.

    Built-in schedules: a linear warm-up over ``warmup`` x T steps, then ``linear`` or
    ``cosine`` decay to ``min_lr`` at T, ``constant``, ``step`` (x ``gamma`` every
    ``milestones[0]`` x T steps), ``multistep`` (x ``gamma`` at each milestone) or ``wsd``
    (stable, then linear to ``min_lr`` over the last ``decay`` x T steps). A schedule named by
    import path is ``lr x lr_factor(step, T)`` and owns its warm-up."""
    T = cfg.steps
    if cfg.schedule not in BUILTIN_SCHEDULES:
        return cfg.lr * float(schedule_function(cfg.schedule)(step, T))
    warm = round(cfg.warmup * T)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule in ("step", "multistep"):
        marks = ([round(cfg.milestones[0] * T * k) for k in range(1, T + 1)
                  if cfg.milestones[0] * T * k <= step] if cfg.schedule == "step" else
                 [round(m * T) for m in cfg.milestones if round(m * T) <= step])  # fmt: skip
        return cfg.lr * cfg.gamma ** len(marks)
    if cfg.schedule == "wsd":
        start = max(warm, round((1.0 - cfg.decay) * T))
        if step < start:
            return cfg.lr
        progress = min((step - start) / max(T - start, 1), 1.0)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - progress)
    span = max(T - warm, 1)
    progress = min((step - warm) / span, 1.0)
    if cfg.schedule == "linear":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - progress)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_function(name: str) -> Callable[[int, int], float]:
    """The user's ``lr_factor(step, T)`` named by ``recipe.schedule``."""
    try:
        fn = resolve(name, "recipe.schedule")
    except ImportPathError as err:
        raise ConfigError(str(err)) from None
    if not callable(fn):
        raise ConfigError(f"recipe.schedule '{name}' is not a function lr_factor(step, T)")
    return fn


def make_update(
    cfg: RecipeConfig,
    names: list[str],
    kinds: dict[str, str] | None = None,
    matrices: frozenset[str] = frozenset(),
    per_member: bool = False,
) -> Update:
    """The recipe's optimizer for parameters ``names`` (``kinds``: each one's kind, for
    groups chosen by kind; ``matrices``: the weight matrices Muon orthogonalises;
    ``per_member``: a torch optimizer that couples members steps each one alone)."""
    groups = param_groups(cfg, names, kinds)
    if cfg.optimizer in BUILTIN_OPTIMIZERS:
        return Builtin(cfg, groups, frozenset(matrices))
    try:
        factory = resolve(cfg.optimizer, "recipe.optimizer")
    except ImportPathError as err:
        raise ConfigError(str(err)) from None
    if not callable(factory):
        raise ConfigError(f"recipe.optimizer '{cfg.optimizer}' is not a torch.optim.Optimizer "
                          "class or factory")  # fmt: skip
    label = cfg.optimizer.removeprefix("local:")
    return TorchUpdate(factory, dict(cfg.optimizer_kwargs), groups, label, per_member)


def update_for(recipe: RecipeConfig, init: Tensors, info: dict[str, ParamInfo]) -> Update:
    """The recipe's optimizer for a model: its parameter groups (by name and kind), Muon's
    weight matrices, and for a torch optimizer whether it steps the members as one (checked on
    two members: a member's update must not depend on another's) or one by one."""
    kinds = {n: i.kind for n, i in info.items()}
    matrices = frozenset(n for n, i in info.items() if i.kind == "weight" and init[n].dim() >= 2)
    update = make_update(recipe, list(init), kinds, matrices)
    if isinstance(update, TorchUpdate):
        update.per_member = couples_members(update, init)
    return update


@lru_cache(maxsize=16)
def _plain(cfg_json: str, names: tuple[str, ...]) -> Update:
    return make_update(RecipeConfig.model_validate_json(cfg_json), list(names))


def plain_update(cfg: RecipeConfig, names: list[str]) -> Update:
    """The recipe's optimizer for ``names`` without kinds (cached)."""
    return _plain(cfg.model_dump_json(), tuple(names))


def init_state(cfg: RecipeConfig | Update, params: Tensors) -> OptState:
    """Zero optimizer state shaped like ``params`` (a torch optimizer's: empty until its first
    step)."""
    update = cfg if not isinstance(cfg, RecipeConfig) else plain_update(cfg, list(params))
    return update.init_state(params)


def clip_coefficient(squared_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``'s factor for a gradient of squared global norm
    ``squared_norm``: min(1, max_norm / (norm + 1e-6))."""
    return (max_norm / (squared_norm.sqrt() + 1e-6)).clamp(max=1.0)


@torch.no_grad()
def clip_per_member(grads: Tensors, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for every member separately, in place.

    The norm is taken over all of a member's gradients (leading axis = member), never across
    members, so a member's update does not depend on the others.
    """
    total = None
    for g in grads.values():
        sq = g.flatten(1).square().sum(1)
        total = sq if total is None else total + sq
    assert total is not None
    coef = clip_coefficient(total, max_norm)
    for g in grads.values():
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


def clipped(grads: Tensors, max_norm: float | None) -> Tensors:
    """One model's gradient clipped as :func:`clip_per_member` clips each member, out of place
    (usable under ``torch.func`` transforms)."""
    if max_norm is None:
        return grads
    total = sum(v.square().sum() for v in grads.values())
    coef = clip_coefficient(total, max_norm)  # type: ignore[arg-type]
    return {k: v * coef for k, v in grads.items()}


def sgd_step(
    cfg: RecipeConfig, lr: float, theta: Tensors, momentum: Tensors | None, grads: Tensors
) -> tuple[Tensors, Tensors | None]:
    """``torch.optim.SGD``'s update, out of place: g += wd θ; m' = μ m + g; θ' = θ − lr m'
    (without momentum buffer: θ' = θ − lr g). The pure twin of :func:`apply_update`'s SGD
    branch (the same operations in the same order; a test keeps them bit-identical), for
    code that differentiates through a step or pushes tangents through it: the step is linear
    in (θ, m, g), so the same function maps tangent vectors."""
    g = grads
    if cfg.weight_decay:
        g = {k: torch.add(g[k], theta[k], alpha=cfg.weight_decay) for k in theta}
    if momentum is not None:
        g = {k: torch.add(momentum[k] * cfg.momentum, g[k]) for k in theta}
    return {k: torch.add(theta[k], g[k], alpha=-lr) for k in theta}, (
        g if momentum is not None else None
    )


def apply_update(
    cfg: RecipeConfig | Update,
    params: Tensors,
    grads: Tensors,
    state: OptState,
    step: int,
    lr: float | None = None,
) -> None:
    """One optimizer step at ``step``, in place on stacked members (an :class:`Update`, or
    a recipe's optimizer for these parameters without groups by kind).

    ``lr`` overrides the recipe's schedule (learning-rate rewinding, longer child runs). Adam's
    bias correction counts the member's own steps, ``step + 1``, in either case.
    """
    if isinstance(cfg, RecipeConfig):
        update, recipe = plain_update(cfg, list(params)), cfg
        lr = lr_at(recipe, step) if lr is None else lr
    else:
        update = cfg
        assert lr is not None, "an Update is given its learning rate"
    update.step(params, grads, state, step, lr)
