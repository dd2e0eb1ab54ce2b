"""The linearised prediction (experiment/lyapunov.py, Appendix B.4): known answers on quadratic
losses, JVP against finite differences and the real divergence on a tiny MLP, determinism."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from butterfly.config import RecipeConfig
from butterfly.experiment.lyapunov import (
    Dynamics,
    LyapunovResult,
    fit_growth_rate,
    lyapunov_exponent,
    predicted_l2,
    random_direction,
)
from butterfly.experiment.resolve import resolve
from butterfly.experiment.setup import Setup, make_setup
from butterfly.experiment.spawn import train_parent
from butterfly.train import Population
from butterfly.train.population import clone
from conftest import tiny_config

N = 8
EIGS = np.geomspace(0.5, 20.0, N)  # spread: the top |1 - ηλ| sits at λ = 20 or λ = 0.5


def rotated(eigs: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T


HESSIANS = {"diagonal": np.diag(EIGS), "rotated": rotated(EIGS)}


def quadratic(H: np.ndarray, lr: float, momentum: float = 0.0, **recipe: Any) -> Dynamics:
    """L(θ) = ½ θᵀHθ under SGD with a constant learning rate; no data (the batch is unused)."""
    h = torch.tensor(H, dtype=torch.float32)

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = p["w"]
        return 0.5 * w @ h.to(w.dtype) @ w

    none = torch.zeros(())
    cfg = RecipeConfig(
        optimizer="sgd", lr=lr, momentum=momentum, warmup=0.0, schedule="constant", steps=400,
        **recipe,
    )  # fmt: skip
    return Dynamics(loss, lambda s: (none, none), cfg)


def estimate(dyn: Dynamics, **kw: Any) -> LyapunovResult:
    return lyapunov_exponent(dyn, {"w": torch.zeros(N)}, None, 0, burn_in=100, **kw)


# ---- known answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HESSIANS))
@pytest.mark.parametrize("lr", [0.11, 0.08])  # top |1 - ηλ| = 1.2 (unstable), 0.96 (stable)
def test_gradient_descent_on_a_quadratic_has_exponent_log_max_abs_1_minus_lr_eig(
    name: str, lr: float
) -> None:
    exact = math.log(np.abs(1 - lr * EIGS).max())
    r = estimate(quadratic(HESSIANS[name], lr))
    assert (exact > 0) == (lr == 0.11)
    assert r.exponent == pytest.approx(exact, rel=0.01)
    assert r.state_space == "theta" and r.method == "jvp" and not r.diverged
    assert r.primal_gap == 0.0  # θ = 0 is a fixed point of both steps


def test_weight_decay_shifts_the_curvature() -> None:
    wd, lr = 0.5, 0.08
    exact = math.log(np.abs(1 - lr * (EIGS + wd)).max())
    assert estimate(quadratic(HESSIANS["rotated"], lr, weight_decay=wd)).exponent == pytest.approx(
        exact, rel=0.01
    )


def heavy_ball(H: np.ndarray, lr: float, mu: float) -> np.ndarray:
    """The linear map of SGD with momentum on (θ, m): m' = μm + Hθ; θ' = θ − η m'."""
    eye = np.eye(len(H))
    return np.block([[eye - lr * H, -lr * mu * eye], [H, mu * eye]])


@pytest.mark.parametrize("name", sorted(HESSIANS))
@pytest.mark.parametrize("lr", [0.2, 0.11])  # spectral radius 2.28 (unstable), 0.87 (stable)
def test_momentum_on_a_quadratic_matches_the_spectral_radius_of_the_heavy_ball_map(
    name: str, lr: float
) -> None:
    mu = 0.5
    rho = np.abs(np.linalg.eigvals(heavy_ball(HESSIANS[name], lr, mu))).max()
    r = estimate(quadratic(HESSIANS[name], lr, momentum=mu))
    assert r.state_space == "theta+momentum"
    assert r.exponent == pytest.approx(math.log(rho), rel=0.01)
    fd = estimate(quadratic(HESSIANS[name], lr, momentum=mu), method="fd")
    assert fd.method == "fd" and fd.exponent == pytest.approx(math.log(rho), rel=0.01)


def test_without_burn_in_the_finite_time_estimate_still_converges() -> None:
    dyn = quadratic(HESSIANS["diagonal"], 0.11)
    r = lyapunov_exponent(dyn, {"w": torch.zeros(N)}, None, 0)
    exact = math.log(1.2)
    assert r.exponent == pytest.approx(exact, rel=0.05)  # biased by log|c₁| / 400 steps
    assert r.log_growth == pytest.approx(r.exponent * 400)
    assert r.growth == pytest.approx(math.exp(r.log_growth))
    assert r.steps[0] == 0 and r.steps[-1] == 400 and len(r.steps) == 41  # every 10 steps


class NoForwardAD(torch.autograd.Function):
    """x² with a backward but no jvp: forward-mode AD cannot see through it."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x * x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_auto_falls_back_to_finite_differences_where_jvp_is_missing() -> None:
    scale = torch.tensor(EIGS, dtype=torch.float32)

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (scale.to(p["w"].dtype) * NoForwardAD.apply(p["w"])).sum()

    none = torch.zeros(())
    cfg = RecipeConfig(optimizer="sgd", lr=0.11, momentum=0.0, warmup=0.0,
                       schedule="constant", steps=400)  # fmt: skip
    dyn = Dynamics(loss, lambda s: (none, none), cfg)
    with pytest.raises((RuntimeError, NotImplementedError)):
        estimate(dyn, method="jvp")
    r = estimate(dyn)
    assert r.method == "fd" and math.isnan(r.primal_gap)
    assert r.exponent == pytest.approx(math.log(1.2), rel=0.01)


def test_adamw_and_bad_arguments_are_refused() -> None:
    dyn = quadratic(HESSIANS["diagonal"], 0.1)
    adamw = Dynamics(dyn.loss, dyn.batch, dyn.recipe.model_copy(update={"optimizer": "adamw"}))
    with pytest.raises(NotImplementedError, match="adamw"):
        estimate(adamw)
    w = {"w": torch.zeros(N)}
    with pytest.raises(ValueError, match="until"):
        lyapunov_exponent(dyn, w, None, 400)
    with pytest.raises(ValueError, match="every"):
        lyapunov_exponent(dyn, w, None, 0, every=0)
    with pytest.raises(ValueError, match="shape"):
        lyapunov_exponent(dyn, w, None, 0, direction={"w": torch.ones(3)})
    with pytest.raises(ValueError, match="norm"):
        lyapunov_exponent(dyn, w, None, 0, direction={"w": torch.zeros(N)})
    with pytest.raises(ValueError, match="burn_in"):
        lyapunov_exponent(dyn, w, None, 0, burn_in=400)


# ---- the helpers ------------------------------------------------------------------------------


def test_predicted_l2_and_the_growth_fit() -> None:
    dyn = quadratic(HESSIANS["diagonal"], 0.11)
    r = lyapunov_exponent(dyn, {"w": torch.zeros(N)}, None, 0, record=[5, 123])
    assert 5 in r.steps and 123 in r.steps
    s = np.array([0, 100, 200])
    np.testing.assert_allclose(predicted_l2(1e-3, r, s), 1e-3 * np.exp(r.exponent * s))
    along = predicted_l2(1e-3, r, along="tangent")
    np.testing.assert_allclose(np.log(along / 1e-3), r.log_norm_theta, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="range"):
        predicted_l2(1e-3, r, [401], along="tangent")
    steps = np.arange(0, 50, 5)
    fit = fit_growth_rate(steps, 2e-4 * np.exp(0.03 * steps))
    assert fit.rate == pytest.approx(0.03) and fit.log_intercept == pytest.approx(math.log(2e-4))
    with_zeros = fit_growth_rate([0, 1, 2, 3], [0.0, math.e, math.e**2, math.nan])
    assert with_zeros.points == 2 and with_zeros.rate == pytest.approx(1.0)
    assert math.isnan(fit_growth_rate([1], [1.0]).rate)
    fit_pred = fit_growth_rate(r.steps, predicted_l2(1.0, r))
    assert fit_pred.rate == pytest.approx(r.exponent, rel=0.02)


def test_random_directions_are_keyed_by_seed_and_time() -> None:
    p = {"a": torch.zeros(3, 4), "b": torch.zeros(5)}
    d = random_direction(p, 0, 10)
    assert math.sqrt(sum(float(v.square().sum()) for v in d.values())) == pytest.approx(1.0)
    assert all(torch.equal(d[k], random_direction(p, 0, 10)[k]) for k in p)
    assert not torch.equal(d["a"], random_direction(p, 1, 10)["a"])
    assert not torch.equal(d["a"], random_direction(p, 0, 11)["a"])


# ---- a tiny real MLP --------------------------------------------------------------------------

T_PERTURB = 20


def parent_at(setup: Setup, t: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    got: dict[int, Any] = {}
    train_parent(
        setup,
        [t],
        None,
        lambda s, p, st: got.setdefault(s, (clone(p), {k: clone(v) for k, v in st.items()})),
    )
    return got[t]


@pytest.fixture(scope="module")
def mlp() -> tuple[Setup, dict[str, torch.Tensor], dict[str, Any]]:
    torch.set_num_threads(1)
    cfg = tiny_config(recipe={"weight_decay": 5e-4, "grad_clip": 1.0})
    setup = make_setup(resolve(cfg, check=False), 0)
    params, state = parent_at(setup, T_PERTURB)
    return setup, params, state


def test_jvp_and_finite_differences_agree_on_a_tiny_mlp(mlp: Any) -> None:
    setup, params, state = mlp
    a = lyapunov_exponent(setup, params, state, T_PERTURB, method="jvp")
    b = lyapunov_exponent(setup, params, state, T_PERTURB, method="fd")
    assert a.state_space == "theta+momentum" and a.until == 60
    assert (a.method, b.method) == ("jvp", "fd")
    assert a.exponent == pytest.approx(b.exponent, rel=0.02)
    np.testing.assert_allclose(a.log_norm_theta, b.log_norm_theta, atol=1e-3)
    # the functional step (clipping, weight decay, momentum) mirrors apply_update
    assert a.primal_gap < 1e-6


def test_the_estimate_is_deterministic(mlp: Any) -> None:
    setup, params, state = mlp
    a = lyapunov_exponent(setup, params, state, T_PERTURB, every=7)
    b = lyapunov_exponent(setup, params, state, T_PERTURB, every=7)
    assert a == b  # every float bit for bit


def test_the_tangent_predicts_the_divergence_of_a_small_perturbation(mlp: Any) -> None:
    """A child perturbed by δ ∥ the tangent's start diverges from the original as ‖δ‖‖v_θ(s)‖
    to first order: the real population of two against the prediction at T."""
    setup, params, state = mlp
    r = lyapunov_exponent(setup, params, state, T_PERTURB)
    d = random_direction(params, setup.seed, T_PERTURB)  # the estimator's default direction
    size = 1e-5
    child = {k: params[k] + size * d[k] for k in params}
    pop = Population.from_members(["original", "child"], [clone(params), child], [state, state],
                                  T_PERTURB)  # fmt: skip
    setup.trainer.train(pop, 60)
    l2 = math.sqrt(sum(float((v[0] - v[1]).double().square().sum()) for v in pop.params.values()))
    assert l2 == pytest.approx(float(predicted_l2(size, r, [60], along="tangent")[0]), rel=0.03)
