"""The linearised prediction of the L² divergence (paper Appendix B.4, Eq. 7-8): the top
Lyapunov exponent of the training map along the original's real trajectory.

Training is a map z_{s+1} = T_s(z_s) on the optimizer's full state z. A perturbation δ at step t
evolves, to first order, as δ_{s+1} = J_s δ_s with J_s = ∂T_s/∂z at the real z_s (Eq. 7), so

    ‖θ_T − θ'_T‖₂ ≈ ‖J_{T−1} ⋯ J_t δ‖ ≤ ‖δ‖ e^{λ (T − t)},

and for plain SGD J_s = I − η_s H_s (Eq. 8). :func:`lyapunov_exponent` estimates λ the classical
way: a tangent vector v (the perturbation direction ε, or a random unit vector) is pushed
through the real training steps, v ← J_s v, by a Jacobian-vector product (``torch.func.jvp``
through a pure functional copy of the step), renormalised every ``every`` steps with the log
norms accumulated, and λ = (1 / (T − t)) Σ log growth. Where forward-mode AD is missing for
some op it falls back to a float64 central finite difference
J v ≈ (T_s(z + h v̂) − T_s(z − h v̂)) ‖v‖ / 2h, h = ``fd_scale`` · max(‖θ‖, 1).

The state space. Plain SGD (momentum 0) is a map on θ alone. SGD with momentum μ,

    g = ∇L_s(θ) (clipped) + wd θ,   m' = μ m + g,   θ' = θ − η_s m'

(``torch.optim.SGD``, the recipe's :func:`butterfly.train.recipe.sgd_step`), is a map on (θ, m)
jointly, so the tangent has a θ part and a momentum part and J_s is the 2n × 2n Jacobian of the
heavy-ball step. The exponent is measured in the Euclidean norm of the full tangent (θ, m);
a perturbation of the weights starts with a zero momentum part (the child copies the parent's
buffer). Besides the full norm the result records the norm of the θ part alone, which is what
the measured ‖θ_s − θ'_s‖ is compared with: ‖δ‖·‖v_θ(s)‖ is the linearised L² divergence of a
child perturbed by δ ∥ v(t). AdamW (state (θ, m, v)) is not supported.

The trajectory is real: the state z_s is advanced by the trainer's own step (for a
:class:`~butterfly.experiment.setup.Setup`, a population of one trained by its
``PopulationTrainer``: the parent's batches, augmentation, dropout masks and schedule), and the
Jacobian is taken at that state. The functional copy's own next state is compared with the real
one (``primal_gap``), which checks that the copy mirrors ``apply_update``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.func import grad, jvp

from butterfly.config import RecipeConfig
from butterfly.experiment.setup import Setup
from butterfly.rng import generator
from butterfly.train.population import Lane, Population, member, member_state
from butterfly.train.recipe import (
    OptState,
    apply_update,
    clip_per_member,
    clipped,
    init_state,
    lr_at,
    sgd_step,
)

Tensors = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[Tensors, torch.Tensor, torch.Tensor], torch.Tensor]
GradFn = Callable[[Tensors, torch.Tensor, torch.Tensor, int], Tensors]
Method = Literal["auto", "jvp", "fd"]


@dataclass
class Dynamics:
    """The pieces of a training map: the per-model ``loss(params, x, y) -> scalar``, the
    step-indexed ``batch(step) -> (x, y)``, the ``recipe`` (optimizer, weight decay, gradient
    clipping, schedule) and optionally:

    * ``lr(step)``: a schedule replacing ``lr_at(recipe, step)`` (a rewound child);
    * ``grad(params, x, y, step)``: the gradient (default ``torch.func.grad(loss)``; a setup's
      is the trainer's, with the dropout masks of that step);
    * ``advance(params, state, step) -> (params, state)``: the real training step (default:
      the gradient, per-member clipping and :func:`~butterfly.train.recipe.apply_update`);
    * ``model``: the module behind ``loss``, cast to float64 for finite differences.
    """

    loss: LossFn
    batch: Callable[[int], Batch]
    recipe: RecipeConfig
    lr: Callable[[int], float] | None = None
    grad: GradFn | None = None
    advance: Callable[[Tensors, OptState, int], tuple[Tensors, OptState]] | None = None
    model: nn.Module | None = None

    def lr_at(self, step: int) -> float:
        """The learning rate of the update at ``step``."""
        return lr_at(self.recipe, step) if self.lr is None else self.lr(step)

    def gradient(self, params: Tensors, x: torch.Tensor, y: torch.Tensor, step: int) -> Tensors:
        """∇L_s(θ) on batch ``step`` (pure: usable under ``torch.func`` transforms)."""
        if self.grad is not None:
            return self.grad(params, x, y, step)
        return grad(self.loss)(params, x, y)

    def step(self, params: Tensors, state: OptState, step: int) -> tuple[Tensors, OptState]:
        """The real training step at ``step``: the next (params, optimizer state)."""
        if self.advance is not None:
            return self.advance(params, state, step)
        x, y = self.batch(step)
        g = self.gradient(params, x, y, step)
        p = {k: v.detach().clone().unsqueeze(0) for k, v in params.items()}
        gs = {k: g[k].detach().clone().unsqueeze(0) for k in params}
        st = {
            s: {k: v.detach().clone().unsqueeze(0) for k, v in d.items()} for s, d in state.items()
        }
        if self.recipe.grad_clip is not None:
            clip_per_member(gs, self.recipe.grad_clip)
        apply_update(self.recipe, p, gs, st, step, self.lr_at(step))
        return member(p, 0), member_state(st, 0)


def dynamics_from_setup(setup: Setup, lr: Callable[[int], float] | None = None) -> Dynamics:
    """The training map of a seed's setup: its trainer's loss, batches (augmented), dropout
    masks (keyed like ``train_lanes``: stream seed, stream name, step) and recipe; the real step
    is one step of a population of one trained by the trainer itself."""
    trainer = setup.trainer
    stream = trainer.stream

    def gradient(params: Tensors, x: torch.Tensor, y: torch.Tensor, step: int) -> Tensors:
        return trainer.single_gradient(params, x, y, (stream.seed, stream.name, step))

    def advance(params: Tensors, state: OptState, step: int) -> tuple[Tensors, OptState]:
        pop = Population.from_members(["original"], [params], [state], step)
        trainer.train_lanes([Lane(pop, step + 1, lr)])
        return member(pop.params, 0), member_state(pop.state, 0)

    return Dynamics(
        trainer.loss, trainer.batch, setup.cfg.recipe, lr, gradient, advance, setup.model
    )


@dataclass(frozen=True)
class LyapunovResult:
    """The estimate over [t, until].

    ``exponent`` is λ per step (natural log; after ``burn_in`` steps), ``log_growth`` the log
    of the tangent's total growth over [t, until] (= λ (until − t) without burn-in); ``steps`` are the recorded steps (t, every renormalisation, the
    requested ones, until) with ``log_norm`` = log ‖v(s)‖ of the full tangent and
    ``log_norm_theta`` = log ‖v_θ(s)‖ of its weight part (‖v(t)‖ = ‖v_θ(t)‖ = 1).
    ``method``: ``jvp`` or ``fd``; ``state_space``: ``theta`` or ``theta+momentum``;
    ``primal_gap``: the largest relative distance between the functional step's next weights
    and the real ones (NaN with ``fd``); ``diverged``: the tangent or the state stopped being
    finite (the numbers then cover the steps before).
    """

    t: int
    until: int
    exponent: float
    log_growth: float
    steps: tuple[int, ...]
    log_norm: tuple[float, ...]
    log_norm_theta: tuple[float, ...]
    method: str
    state_space: str
    every: int
    primal_gap: float
    diverged: bool
    burn_in: int = 0

    @property
    def growth(self) -> float:
        """‖v(until)‖ / ‖v(t)‖, the tangent's total growth factor (inf when it overflows)."""
        return math.exp(self.log_growth) if self.log_growth < 709 else math.inf


# ---- tensors as vectors ----------------------------------------------------------------------


def _sq(tensors: Iterable[torch.Tensor]) -> float:
    return math.fsum(float(v.detach().to(torch.float64).square().sum()) for v in tensors)


def _norm(parts: Sequence[Tensors]) -> float:
    return math.sqrt(math.fsum(_sq(p.values()) for p in parts))


def _scale(parts: Sequence[Tensors], c: float) -> list[Tensors]:
    return [{k: v * c for k, v in p.items()} for p in parts]


def _cast(parts: Sequence[Tensors], dtype: torch.dtype) -> list[Tensors]:
    return [{k: v.to(dtype) if v.is_floating_point() else v for k, v in p.items()} for p in parts]


def random_direction(params: Tensors, *key: object) -> Tensors:
    """A unit Gaussian direction over every parameter, drawn from ``generator("lyapunov",
    *key)`` (e.g. key = (seed, t))."""
    g = generator("lyapunov", *key)
    d = {k: torch.randn(v.shape, generator=g).to(v.device, v.dtype) for k, v in params.items()}
    n = _norm([d])
    return {k: v / n for k, v in d.items()}


def _unit_direction(params: Tensors, direction: Tensors) -> Tensors:
    unknown = sorted(set(direction) - set(params))
    if unknown:
        raise ValueError(f"the direction has tensors the model does not: {unknown}")
    out = {}
    for k, p in params.items():
        d = direction.get(k)
        if d is None:
            out[k] = torch.zeros_like(p)
            continue
        if d.shape != p.shape:
            raise ValueError(
                f"direction['{k}'] has shape {tuple(d.shape)}, the model {tuple(p.shape)}"
            )
        out[k] = d.detach().to(p.device, p.dtype).clone()
    n = _norm([out])
    if not (n > 0 and math.isfinite(n)):
        raise ValueError(f"the direction must have a finite, nonzero norm; got {n}")
    return {k: v / n for k, v in out.items()}


# ---- the functional training step ------------------------------------------------------------


def gradient_map(
    dyn: Dynamics, x: torch.Tensor, y: torch.Tensor, step: int
) -> Callable[[Tensors], Tensors]:
    """θ ↦ g_s(θ), the nonlinear part of the SGD step at ``step``: the gradient of batch
    ``step``, clipped to ``recipe.grad_clip`` as the trainer clips each member (pure and
    out-of-place, for ``torch.func.jvp``)."""
    clip = dyn.recipe.grad_clip
    return lambda theta: clipped(dyn.gradient(theta, x, y, step), clip)


@contextmanager
def _float64(model: nn.Module | None) -> Iterator[None]:
    """The model's floating buffers in float64 for the duration (parameters come from the
    caller; nothing to do for a model without buffers)."""
    if model is None or not any(b.is_floating_point() for b in model.buffers()):
        yield
        return
    model.double()
    try:
        yield
    finally:
        model.float()


def _fd_gradient_tangent(
    dyn: Dynamics,
    x: torch.Tensor,
    y: torch.Tensor,
    step: int,
    theta: Tensors,
    v: Tensors,
    fd_scale: float,
) -> Tensors:
    """∂g_s/∂θ · v by a float64 central difference, h = fd_scale · max(‖θ‖, 1) along v / ‖v‖."""
    vn = _norm([v])
    if vn == 0:
        return {k: torch.zeros_like(t) for k, t in v.items()}
    x64 = x.double() if x.is_floating_point() else x
    g = gradient_map(dyn, x64, y, step)
    z64 = _cast([theta], torch.float64)[0]
    v64 = _cast([v], torch.float64)[0]
    h = fd_scale * max(_norm([z64]), 1.0)
    c = h / vn
    with _float64(dyn.model):
        gp = g({k: z64[k] + c * v64[k] for k in z64})
        gm = g({k: z64[k] - c * v64[k] for k in z64})
    return {k: ((gp[k] - gm[k]) * (vn / (2 * h))).to(v[k].dtype) for k in v}


# ---- the estimator ---------------------------------------------------------------------------


def _check(recipe: RecipeConfig, method: str, t: int, until: int, every: int, fd_scale: float,
           burn_in: int) -> None:  # fmt: skip
    if recipe.optimizer != "sgd":
        raise NotImplementedError(
            f"lyapunov_exponent supports recipe.optimizer = sgd (with momentum, weight decay "
            f"and grad_clip); '{recipe.optimizer}' (state θ, m, v) is not supported"
        )
    if method not in ("auto", "jvp", "fd"):
        raise ValueError(f"method must be auto, jvp or fd; got {method!r}")
    if not 0 <= t < until:
        raise ValueError(f"need 0 <= t < until; got t = {t}, until = {until}")
    if every < 1:
        raise ValueError(f"every must be at least 1 step; got {every}")
    if not fd_scale > 0:
        raise ValueError(f"fd_scale must be positive; got {fd_scale}")
    if not 0 <= burn_in < until - t:
        raise ValueError(f"burn_in must lie in [0, until - t); got {burn_in}")


def _gradient_and_tangent(
    dyn: Dynamics, s: int, theta: Tensors, v_theta: Tensors, use: str, fd_scale: float
) -> tuple[Tensors | None, Tensors]:
    """(g_s(θ), ∂g_s/∂θ · v_θ) at step ``s``: by ``jvp`` (then g_s is known too, to check the
    real step against) or by a float64 finite difference (``fd``: g_s is not computed)."""
    x, y = dyn.batch(s)
    if use == "fd":
        return None, _fd_gradient_tangent(dyn, x, y, s, theta, v_theta, fd_scale)
    with warnings.catch_warnings():  # torch's own jvp decompositions use jit.script
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
        return jvp(gradient_map(dyn, x, y, s), (theta,), (v_theta,))


def lyapunov_exponent(
    source: Setup | Dynamics,
    params_t: Tensors,
    state_t: OptState | None,
    t: int,
    until: int | None = None,
    direction: Tensors | None = None,
    every: int = 10,
    record: Iterable[int] = (),
    method: Method = "auto",
    seed: int | None = None,
    fd_scale: float = 1e-9,
    burn_in: int = 0,
) -> LyapunovResult:
    """The top Lyapunov exponent of the training map over [t, until] (Appendix B.4, Eq. 7).

    ``source`` is a seed's :class:`~butterfly.experiment.setup.Setup` (the real trainer) or a
    :class:`Dynamics` (any loss, batches and recipe). ``params_t`` / ``state_t`` are the
    original's weights and optimizer state at step ``t`` (``state_t`` None: zero state);
    ``until`` defaults to T. The tangent starts at ``direction`` (e.g. the perturbation ε;
    normalised; a weight part only) or, when None, a random unit vector keyed by (``seed``, t)
    (``seed`` defaults to the setup's). It is renormalised every ``every`` steps; ``record``
    adds steps at which its log norms are recorded. ``method``: ``jvp``, ``fd`` (float64
    central differences, step ``fd_scale`` · max(‖θ‖, 1)) or ``auto`` (jvp, or fd when the
    first jvp fails). ``burn_in`` steps after t are left out of the exponent's average (the
    transient while the tangent turns towards the top direction): λ = (log ‖v(until)‖ −
    log ‖v(t + burn_in)‖) / (until − t − burn_in); ``log_growth`` still counts from t.

    Each step pushes the tangent through the recipe's own update
    (:func:`~butterfly.train.recipe.sgd_step`, linear in (θ, m, g)) and advances the state by
    the real training step; with ``jvp`` the functional step's weights are compared with the
    real ones (``primal_gap``).
    """
    if isinstance(source, Setup):
        dyn = dynamics_from_setup(source)
        seed = source.seed if seed is None else seed
    else:
        dyn = source
    recipe = dyn.recipe
    until = recipe.steps if until is None else until
    _check(recipe, method, t, until, every, fd_scale, burn_in)

    theta = {k: v.detach().clone() for k, v in params_t.items()}
    state = init_state(recipe, theta) if state_t is None else state_t
    state = {s: {k: v.detach().clone() for k, v in d.items()} for s, d in state.items()}
    heavy = bool(recipe.momentum)
    if direction is None:
        direction = random_direction(theta, 0 if seed is None else seed, t)
    v = [_unit_direction(theta, direction)]
    if heavy:
        v.append({k: torch.zeros_like(p) for k, p in v[0].items()})

    marks = {t, t + burn_in, until, *range(t, until + 1, every)}
    marks |= {s for s in record if t <= s <= until}
    steps, log_norm, log_theta = [t], [0.0], [0.0]
    log_scale, gap, diverged = 0.0, 0.0, False
    use = "jvp" if method in ("auto", "jvp") else "fd"
    s = t
    while s < until:
        lr = dyn.lr_at(s)
        try:
            g, vg = _gradient_and_tangent(dyn, s, theta, v[0], use, fd_scale)
        except (RuntimeError, NotImplementedError):
            if use != "jvp" or method != "auto" or s != t:
                raise
            use = "fd"  # forward-mode AD is missing for some op: finite differences instead
            continue
        vt, vm = sgd_step(recipe, lr, v[0], v[1] if heavy else None, vg)
        mine = None if g is None else sgd_step(recipe, lr, theta, state.get("momentum")
                                               if heavy else None, g)[0]  # fmt: skip
        theta, state = dyn.step(theta, state, s)
        if mine is not None:
            d = math.sqrt(_sq(mine[k] - theta[k] for k in theta))
            gap = max(gap, d / max(_norm([theta]), 1e-30))
        v = [vt] if vm is None else [vt, vm]
        s += 1
        if s not in marks:
            continue
        n = _norm(v)
        if not (math.isfinite(n) and n > 0 and math.isfinite(_norm([theta]))):
            diverged = True
            break
        steps.append(s)
        log_norm.append(log_scale + math.log(n))
        nt = _norm(v[:1])
        log_theta.append(log_scale + math.log(nt) if nt > 0 else -math.inf)
        if (s - t) % every == 0 or s == until:  # renormalise, keeping the log scale
            log_scale += math.log(n)
            v = _scale(v, 1.0 / n)
    start = t + burn_in
    exponent = math.nan
    if steps[-1] > start:
        exponent = (log_norm[-1] - log_norm[steps.index(start)]) / (steps[-1] - start)
    return LyapunovResult(
        t=t, until=until, exponent=exponent, log_growth=log_norm[-1], steps=tuple(steps),
        log_norm=tuple(log_norm), log_norm_theta=tuple(log_theta), method=use,
        state_space="theta+momentum" if heavy else "theta", every=every,
        primal_gap=gap if use == "jvp" else math.nan, diverged=diverged, burn_in=burn_in,
    )  # fmt: skip


def predicted_l2(
    eps_norm: float,
    result: LyapunovResult,
    steps: Iterable[int] | None = None,
    along: Literal["exponent", "tangent"] = "exponent",
) -> np.ndarray:
    """The linearised L² divergence of a child perturbed by a vector of norm ``eps_norm`` at
    ``result.t``, at ``steps`` (default: the recorded ones).

    ``exponent``: Eq. 7's ‖ε‖ e^{λ (s − t)}; ``tangent``: ‖ε‖ ‖v_θ(s)‖, the propagated
    tangent's weight part (the first-order prediction when ε ∥ the starting direction),
    interpolated linearly in log between recorded steps.
    """
    s = np.asarray(result.steps if steps is None else list(steps), dtype=np.float64)
    if along == "exponent":
        return eps_norm * np.exp(result.exponent * (s - result.t))
    if along != "tangent":
        raise ValueError(f"along must be exponent or tangent; got {along!r}")
    lo, hi = result.steps[0], result.steps[-1]
    if s.size and (s.min() < lo or s.max() > hi):
        raise ValueError(f"steps must lie in the recorded range [{lo}, {hi}]")
    return eps_norm * np.exp(np.interp(s, result.steps, result.log_norm_theta))


@dataclass(frozen=True)
class GrowthFit:
    """log L2(s) ≈ ``log_intercept`` + ``rate`` · s, by least squares on ``points`` points."""

    rate: float
    log_intercept: float
    points: int


def fit_growth_rate(steps: Iterable[float], l2: Iterable[float]) -> GrowthFit:
    """The finite-time growth rate of a measured L² trajectory: the least-squares slope of
    log L2 against the step, on the points with a finite L2 > 0 (NaN with fewer than two)."""
    s = np.asarray(list(steps), dtype=np.float64)
    d = np.asarray(list(l2), dtype=np.float64)
    if s.shape != d.shape:
        raise ValueError(f"steps and l2 differ in length: {s.size} and {d.size}")
    ok = np.isfinite(d) & (d > 0) & np.isfinite(s)
    s, d = s[ok], np.log(d[ok])
    if s.size < 2 or np.ptp(s) == 0:
        return GrowthFit(math.nan, math.nan, int(s.size))
    slope, intercept = np.polyfit(s, d, 1)
    return GrowthFit(float(slope), float(intercept), int(s.size))


def linearised(
    rows_: list[dict[str, Any]], trajectory: list[dict[str, Any]], result: LyapunovResult
) -> None:
    """Put the linearised prediction next to what was measured, in place: every result row
    gets the unit's exponent and its child's fitted finite-time growth rate, and every
    trajectory point of a perturbed child its predicted ``l2_predicted`` = ‖σε‖ e^{λ(s − t)}
    (Eq. 7), so the report can draw predicted against measured L2 (Figure 6's claim)."""
    noise = {r["member"]: r["noise_l2"] for r in rows_}
    by_member: dict[str, list[dict[str, Any]]] = {}
    for p in trajectory:
        by_member.setdefault(p["member"], []).append(p)
        eps = noise.get(p["member"])
        if eps and p["kind"] in ("batch", "gaussian"):
            p["l2_predicted"] = float(predicted_l2(eps, result, [p["step"]])[0])
    for r in rows_:
        r["lyapunov_exponent"] = result.exponent
        pts = sorted(by_member.get(r["member"], []), key=lambda p: p["step"])
        after = [p for p in pts if p["step"] > p["t"]]
        if len(after) >= 2 and r["kind"] in ("batch", "gaussian"):
            fit = fit_growth_rate([p["step"] for p in after], [p["l2_to_original"] for p in after])
            r["growth_rate"] = None if math.isnan(fit.rate) else fit.rate
