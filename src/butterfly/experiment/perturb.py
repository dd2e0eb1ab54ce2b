"""Perturbations (paper section 3.3, appendix B.3): directions, masks, the Eq. 6 scale and the
SGD-noise size.

A perturbation is ``theta'_t = theta_t + sigma * eps`` with

    eps = (eps_hat * M) / ||eps_hat * M||_2 * sqrt(Var[theta_0 * M])        (Eq. 6)

where ``eps_hat`` is a batch gradient (Eq. 2) or a Kaiming-Gaussian sample (Eq. 3), ``M`` is a
0/1 mask (the parameter kinds of ``perturb.mask``, among the names ``perturb.layers`` matches,
and a random ``perturb.fractions`` of those) and ``Var[theta_0 * M]`` is the *expected*
initialisation variance summed over the masked elements (2 / fan_in per weight; see
:func:`butterfly.models.param_info`). So ``||eps|| = sqrt(sum of masked init variances)`` and
``sigma = 0.01`` is about 1% of the size of the perturbed part of ``theta_0``. The fraction mask is drawn *before* normalising.

Every random choice is keyed by (seed, t, direction index) and the kind, never by sigma, so the
sizes of one sweep scan along one direction. :class:`Perturber` draws each direction of a
population once and hands it to every size.

With ``perturb.scale = sgd_noise`` the direction is rescaled so that sigma = 1 is the expected
distance between two copies of the parent after one optimizer step on independent batches
(:func:`sgd_noise_size`, Figure 10 right).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from butterfly.config import Mask
from butterfly.config.sections import MASK_KINDS, keeps_own_init, matching
from butterfly.data import independent_batch
from butterfly.layers import running_statistics
from butterfly.metrics import Bound, l2_norm
from butterfly.metrics.evaluate import LossFn
from butterfly.models import ParamInfo, is_builtin, param_info, trainable
from butterfly.rng import generator
from butterfly.train.recipe import OptState, apply_update, clip_per_member, lr_at

if TYPE_CHECKING:
    from butterfly.experiment.setup import Setup

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Perturbation:
    """A scaled direction ``eps`` (to be multiplied by sigma) and what produced it."""

    eps: Tensors
    n_masked: int
    expected_norm: float  # sqrt(Var[theta_0 * M]); ||eps|| when normalised


def eligible(info: dict[str, ParamInfo], mask: Mask, layers: Sequence[str] = ()) -> list[str]:
    """Names of the tensors a mask kind may touch, among those whose names match one of the
    ``layers`` patterns (``perturb.layers``; none: all)."""
    kinds = MASK_KINDS[mask]
    names = matching([n for n, i in info.items() if i.kind in kinds], layers)
    if not names:
        within = f" within perturb.layers {list(layers)}" if layers else ""
        raise ValueError(f"perturb.mask = '{mask}' selects no parameter of this model{within}")
    return names


def make_mask(
    shapes: dict[str, torch.Size], names: list[str], fraction: float, *key: object
) -> dict[str, torch.Tensor]:
    """0/1 float masks over ``names``: all ones, or exactly max(1, round(f n)) random elements."""
    if fraction >= 1.0:
        return {n: torch.ones(shapes[n]) for n in names}
    sizes = [math.prod(shapes[n]) for n in names]
    total = sum(sizes)
    k = max(1, round(fraction * total))
    chosen = torch.randperm(total, generator=generator("mask", *key))[:k]
    flat = torch.zeros(total)
    flat[chosen] = 1.0
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for n, size in zip(names, sizes, strict=True):
        out[n] = flat[offset : offset + size].reshape(shapes[n])
        offset += size
    return out


def gaussian_direction(
    shapes: dict[str, torch.Size], info: dict[str, ParamInfo], names: list[str], *key: object
) -> Tensors:
    """Eq. 3: each element ~ N(0, init variance of its tensor), i.e. N(0, 2/fan_in) for weights."""
    g = generator("gaussian", *key)
    return {n: torch.randn(shapes[n], generator=g) * math.sqrt(info[n].init_var) for n in names}


def scale_direction(
    direction: Tensors,
    mask: dict[str, torch.Tensor],
    info: dict[str, ParamInfo],
    normalize: bool = True,
) -> Perturbation:
    """Apply the mask and Eq. 6. Norms are taken in float64."""
    masked = {n: direction[n].to(torch.float64) * mask[n].to(torch.float64) for n in mask}
    n_masked = int(sum(int(m.count_nonzero()) for m in mask.values()))
    target = math.sqrt(
        sum(float((m.to(torch.float64) * info[n].init_var).sum()) for n, m in mask.items())
    )
    if normalize:
        norm = math.sqrt(sum(float(v.square().sum()) for v in masked.values()))
        if norm == 0.0 or not math.isfinite(norm):
            raise FloatingPointError(
                f"perturbation direction has norm {norm} on the masked weights; cannot normalise it"
            )
        factor = target / norm
        masked = {n: v * factor for n, v in masked.items()}
    eps = {n: v.to(direction[n].dtype) for n, v in masked.items()}
    return Perturbation(eps, n_masked, target)


def apply_perturbation(params: Tensors, pert: Perturbation, sigma: float) -> None:
    """theta += sigma * eps, in place, on the perturbed tensors only."""
    with torch.no_grad():
        for n, e in pert.eps.items():
            params[n].add_(e.to(params[n].device), alpha=sigma)


def batch_direction(
    setup: Setup, params_t: Tensors, names: list[str], batch_size: int, *key: object
) -> Tensors:
    """Eq. 2: the gradient of the training loss at theta_t on an independently drawn batch
    (``batch_size`` examples drawn by ``key``; dropout, if any, seeded by the same key)."""
    data = setup.data
    idx = independent_batch(len(data.y_train), batch_size, *key).to(data.x_train.device)
    grads = setup.trainer.single_gradient(
        params_t, data.x_train[idx], data.y_train[idx], ("perturb", *key)
    )
    return {k: grads[k].detach().cpu() for k in names}


def sgd_noise_size(
    setup: Setup,
    params_t: Tensors,
    state_t: OptState,
    t: int,
    mask: dict[str, torch.Tensor],
) -> float:
    """Expected L2 distance, on the masked weights, between two copies of the parent at t after
    each takes one optimizer step on an independent batch (paper Figure 10 right): the mean
    over ``perturb.noise_pairs`` pairs of batches. The optimizer state is the parent's."""
    cfg = setup.cfg
    data = setup.data
    n = len(data.y_train)
    sizes = []
    for i in range(cfg.perturb.noise_pairs):
        stepped = []
        for j in (0, 1):
            key = ("sgd-noise", setup.seed, t, i, j)
            idx = independent_batch(n, cfg.recipe.batch_size, *key).to(data.x_train.device)
            g = setup.trainer.single_gradient(params_t, data.x_train[idx], data.y_train[idx], key)
            p = {k: v.detach().clone().unsqueeze(0) for k, v in params_t.items()}
            st = {s: {k: v.clone().unsqueeze(0) for k, v in d.items()} for s, d in state_t.items()}
            grads = {k: v.detach().unsqueeze(0) for k, v in g.items()}
            if cfg.recipe.grad_clip is not None:
                clip_per_member(grads, cfg.recipe.grad_clip)
            apply_update(setup.trainer.update, p, grads, st, t, lr_at(cfg.recipe, t))
            stepped.append(p)
        d2 = sum(
            float(
                (
                    (stepped[0][k][0] - stepped[1][k][0]).double()
                    * mask[k].to(stepped[0][k].device).double()
                )
                .square()
                .sum()
            )
            for k in mask
        )
        sizes.append(d2**0.5)
    return sum(sizes) / len(sizes)


@dataclass
class Perturber:
    """The perturbations of one population, from the parent's state (``params_t``,
    ``state_t``) at step ``t``. Each (kind, fraction, direction) is drawn once and shared by
    every size sigma; with ``perturb.scale = sgd_noise`` the noise size is estimated once per
    (fraction, direction) and shared by batch and Gaussian children."""

    setup: Setup
    params_t: Tensors
    state_t: OptState
    t: int
    _cache: dict[tuple[str, float, int], Perturbation] = field(default_factory=dict)
    _noise_sizes: dict[tuple[float, int], float] = field(default_factory=dict)

    def perturbation(self, kind: str, fraction: float, direction: int) -> Perturbation:
        k = (kind, fraction, direction)
        if k not in self._cache:
            self._cache[k] = self._draw(kind, fraction, direction)
        return self._cache[k]

    def _draw(self, kind: str, fraction: float, direction: int) -> Perturbation:
        setup, p = self.setup, self.setup.cfg.perturb
        names = eligible(setup.info, p.mask, p.layers)
        shapes = {n: self.params_t[n].shape for n in names}
        key = (setup.seed, self.t, direction)
        mask = make_mask(shapes, names, fraction, *key, p.mask)
        if kind == "gaussian":
            eps_hat = gaussian_direction(shapes, setup.info, names, *key)
        elif kind == "batch":
            size = p.batch_size or setup.cfg.recipe.batch_size
            eps_hat = batch_direction(setup, self.params_t, names, size, *key)
        else:
            raise ValueError(f"unknown perturbation kind '{kind}'")
        pert = scale_direction(eps_hat, mask, setup.info, p.normalize)
        if p.scale == "sgd_noise":
            nk = (fraction, direction)
            if nk not in self._noise_sizes:
                self._noise_sizes[nk] = sgd_noise_size(
                    setup, self.params_t, self.state_t, self.t, mask
                )
            size = self._noise_sizes[nk]
            norm = l2_norm(pert.eps)
            if not (norm > 0 and math.isfinite(norm) and math.isfinite(size)):
                raise FloatingPointError(
                    f"the SGD-noise size ({size}) or the direction's norm ({norm}) is not a "
                    "positive finite number"
                )
            pert = Perturbation({k: v * (size / norm) for k, v in pert.eps.items()}, pert.n_masked,
                                size)  # fmt: skip
        return pert


def perturb(
    model: nn.Module,
    sigma: float,
    kind: str = "gaussian",
    *,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    mask: Mask = "weights",
    layers: Sequence[str] = (),
    fraction: float = 1.0,
    seed: int = 0,
    t: int = 0,
    direction: int = 0,
    normalize: bool = True,
    batch_size: int = 128,
    loss_fn: LossFn | None = None,
    init: str = "auto",
) -> nn.Module:
    """A copy of ``model`` perturbed by sigma·ε (paper Eq. 2, 3 and 6), as a sweep perturbs
    a child: ε is Kaiming-Gaussian (``kind="gaussian"``) or the training-loss gradient on a
    batch of ``batch_size`` examples of ``data`` = (x, y) drawn independently (``"batch"``),
    masked (``mask``; ``layers``: only the parameters whose names match one of these glob
    patterns; ``fraction``) and scaled so that ||ε||² is the expected initial variance of the
    perturbed weights. Every random choice is keyed by (seed, t, direction) as in a
    sweep, so the same call gives the same ε. ``init`` says how ``model`` was initialised, as
    ``model.init`` does for a sweep (``auto``: He-normal for butterfly's built-ins, the model's
    own otherwise; with its own, each tensor's init variance is its mean square now).

    >>> import torch, butterfly
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> child = butterfly.perturb(net, 0.01)
    >>> 0 < butterfly.metrics.l2(net, child) < 1
    True
    """
    params = {k: v.detach().clone() for k, v in trainable(model).items()}
    info = param_info(model, params, own_init=keeps_own_init(init, is_builtin(model)))
    names = eligible(info, mask, layers)
    shapes = {n: params[n].shape for n in names}
    key = (seed, t, direction)
    m = make_mask(shapes, names, fraction, *key, mask)
    if kind == "gaussian":
        eps_hat = gaussian_direction(shapes, info, names, *key)
    elif kind == "batch":
        if data is None:
            raise ValueError("a batch perturbation needs data=(x, y)")
        x, y = data
        idx = independent_batch(len(y), batch_size, *key)

        def loss(p: Tensors) -> torch.Tensor:
            if loss_fn is not None:
                return loss_fn(Bound(model, p), (x[idx], y[idx]))
            # with copies of any running statistics (BatchNorm), so the model's stay as they are
            return F.cross_entropy(functional_call(model, {**p, **running_statistics(model)},
                                                   (x[idx],)), y[idx])  # fmt: skip

        g = grad(loss)(params)
        eps_hat = {k: g[k].detach().cpu() for k in names}
    else:
        raise ValueError(f"kind must be gaussian or batch; got {kind!r}")
    pert = scale_direction(eps_hat, m, info, normalize)
    child = copy.deepcopy(model)
    child_params = dict(child.named_parameters())
    apply_perturbation({k: child_params[k].data for k in pert.eps}, pert, sigma)
    return child
