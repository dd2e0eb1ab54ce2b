"""Training recipes as pure functions of the step: learning-rate schedules and optimizers.

Optimizers are functional and act on dicts of *stacked* tensors (leading axis = population
member), updating them in place with element-wise operations only, so a member's update never
depends on the other members. State (momentum, Adam moments) lives in plain dicts that are
saved with every parent checkpoint; the schedule position is the global step, so a run resumed
at step t continues exactly where its parent was.
"""

from __future__ import annotations

import math

import torch

from butterfly.config import RecipeConfig

Tensors = dict[str, torch.Tensor]
OptState = dict[str, Tensors]


def lr_at(cfg: RecipeConfig, step: int) -> float:
    """Learning rate used for the update at ``step`` (0-based): linear warm-up, then decay."""
    T = cfg.steps
    warm = round(cfg.warmup * T)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(T - warm, 1)
    progress = min((step - warm) / span, 1.0)
    if cfg.schedule == "linear":
        return cfg.lr * (1.0 - progress)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def init_state(cfg: RecipeConfig, params: Tensors) -> OptState:
    """Zero optimizer state shaped like ``params``."""
    if cfg.optimizer == "sgd":
        return {"momentum": {k: torch.zeros_like(v) for k, v in params.items()}}
    return {
        "exp_avg": {k: torch.zeros_like(v) for k, v in params.items()},
        "exp_avg_sq": {k: torch.zeros_like(v) for k, v in params.items()},
    }


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


@torch.no_grad()
def apply_update(
    cfg: RecipeConfig,
    params: Tensors,
    grads: Tensors,
    state: OptState,
    step: int,
    lr: float | None = None,
) -> None:
    """One optimizer step at ``step`` (PyTorch's SGD and AdamW semantics), in place.

    ``lr`` overrides the recipe's schedule (learning-rate rewinding, longer child runs). The
    AdamW bias correction counts the member's own steps, ``step + 1``, in either case.
    """
    lr = lr_at(cfg, step) if lr is None else lr
    names = list(params)
    p = [params[k] for k in names]
    g = [grads[k] for k in names]
    if cfg.optimizer == "sgd":
        # torch.optim.SGD: g += wd * p; buf = momentum * buf + g; p -= lr * buf
        if cfg.weight_decay:
            g = torch._foreach_add(g, p, alpha=cfg.weight_decay)
        if cfg.momentum:
            buf = [state["momentum"][k] for k in names]
            torch._foreach_mul_(buf, cfg.momentum)
            torch._foreach_add_(buf, g)
            g = buf
        torch._foreach_add_(p, g, alpha=-lr)
        return
    # torch.optim.AdamW (decoupled weight decay, bias-corrected moments)
    b1, b2 = cfg.betas
    k = step + 1
    m = [state["exp_avg"][n] for n in names]
    v = [state["exp_avg_sq"][n] for n in names]
    if cfg.weight_decay:
        torch._foreach_mul_(p, 1.0 - lr * cfg.weight_decay)
    torch._foreach_lerp_(m, g, 1.0 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
    bc1 = 1.0 - b1**k
    bc2_sqrt = math.sqrt(1.0 - b2**k)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, cfg.eps)
    torch._foreach_addcdiv_(p, m, denom, value=-lr / bc1)
