from __future__ import annotations

import copy
import math

import pytest
import torch

from butterfly.config import DataConfig, ModelConfig, RecipeConfig
from butterfly.data import BatchStream, load_dataset
from butterfly.models import build_model
from butterfly.train import Population, PopulationTrainer, apply_update, init_state, lr_at
from butterfly.train.population import clone, member


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_functional_optimizers_match_torch_optim_bit_for_bit(optimizer: str) -> None:
    cfg = RecipeConfig(
        optimizer=optimizer, lr=0.01, weight_decay=0.1, steps=10, schedule="constant"
    )
    torch.manual_seed(0)
    m = torch.nn.Linear(5, 3)
    ref = copy.deepcopy(m)
    opt = (
        torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=0.1)
        if optimizer == "sgd"
        else torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.1)
    )
    p = {k: v.detach().clone() for k, v in m.named_parameters()}
    state = init_state(cfg, p)
    for s in range(6):
        x = torch.randn(4, 5)
        opt.zero_grad()
        ref(x).square().sum().backward()
        opt.step()
        grads = torch.func.grad(
            lambda q, x=x: torch.func.functional_call(m, q, (x,)).square().sum()
        )(p)
        apply_update(cfg, p, grads, state, s)
    for k, v in ref.named_parameters():
        assert torch.equal(p[k], v.detach()), k


def test_schedules() -> None:
    cfg = RecipeConfig(lr=1.0, steps=100, warmup=0.1, schedule="cosine")
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 55) == pytest.approx(0.5)
    assert lr_at(cfg, 99) < 1e-3
    lin = RecipeConfig(lr=1.0, steps=100, warmup=0.0, schedule="linear")
    assert lr_at(lin, 50) == pytest.approx(0.5)
    # the default: the paper's 2% warm-up, then linear decay to 0 over the remaining steps
    std = RecipeConfig(lr=1.0, steps=100)
    assert (std.warmup, std.schedule) == (0.02, "linear")
    assert [lr_at(std, s) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_at(std, 51) == pytest.approx(0.5) and lr_at(std, 99) == pytest.approx(1 / 98)
    assert lr_at(RecipeConfig(lr=0.3, schedule="constant"), 2999) == 0.3


def _setup(mode: str, model: ModelConfig | None = None):
    data = load_dataset(
        DataConfig(name="synthetic", n_train=256, n_test=64, n_features=10, n_classes=4)
    )
    mcfg = model or ModelConfig(width=16, depth=2)
    m = build_model(mcfg, data.input_shape, 4, seed=0)  # (1, 10) signals: conv models use Conv1d
    recipe = RecipeConfig(steps=40, batch_size=32, lr=0.1)
    trainer = PopulationTrainer(m, data, BatchStream(256, 32, 0), recipe, mode)
    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    return trainer, recipe, params


def _population(recipe: RecipeConfig, params: dict, n: int, bump: float = 1e-3) -> Population:
    members = [clone(params) for _ in range(n)]
    for i in range(2, n):  # members 0 and 1 identical (original and control)
        for v in members[i].values():
            v.add_(bump * i)
    return Population.from_members(
        [str(i) for i in range(n)], members, [init_state(recipe, p) for p in members], 0
    )


MODEL_CASES = {
    "mlp": ModelConfig(width=16, depth=2),
    "cnn": ModelConfig(name="cnn", width=8, depth=2),
    "resnet": ModelConfig(name="resnet", width=4, depth=8),
}
MODE_CASES = [
    (mode, model)
    for model in MODEL_CASES
    for mode in (["batched", "vmap", "loop"] if model == "mlp" else ["vmap", "loop"])
]


@pytest.mark.parametrize(("mode", "model"), MODE_CASES)
def test_control_stays_bit_identical_in_a_population(mode: str, model: str) -> None:
    trainer, recipe, params = _setup(mode, MODEL_CASES[model])
    pop = _population(recipe, params, 5)
    trainer.train(pop, 25)
    for k in params:
        assert torch.equal(pop.params[k][0], pop.params[k][1]), k
    assert not torch.equal(pop.params[next(iter(params))][0], pop.params[next(iter(params))][2])


def test_vmap_and_loop_agree_up_to_rounding() -> None:
    tv, recipe, params = _setup("vmap")
    tl, _, _ = _setup("loop")
    pv, pl = _population(recipe, params, 4), _population(recipe, params, 4)
    tv.train(pv, 30)
    tl.train(pl, 30)
    for k in params:
        assert torch.allclose(pv.params[k], pl.params[k], atol=1e-5, rtol=1e-5), k


def test_resuming_from_a_checkpoint_replays_the_same_batches(tmp_path) -> None:
    from butterfly.checkpoint import load_checkpoint, save_checkpoint
    from butterfly.train.population import member_state

    trainer, recipe, params = _setup("loop")
    straight = Population.fresh(recipe, params)
    trainer.train(straight, 30)

    first = Population.fresh(recipe, params)
    trainer.train(first, 13)
    path = tmp_path / "p.safetensors"
    save_checkpoint(path, member(first.params, 0), member_state(first.state, 0), {"step": 13})
    p, s, meta = load_checkpoint(path)
    resumed = Population.from_members(["p"], [p], [s], meta["step"])
    trainer.train(resumed, 30)
    for k in params:
        assert torch.equal(straight.params[k], resumed.params[k]), k


def test_divergence_is_flagged_per_member() -> None:
    trainer, recipe, params = _setup("vmap")
    pop = _population(recipe, params, 3)
    for v in pop.params.values():
        v[2].fill_(math.nan)
    trainer.train(pop, 3)
    assert pop.diverged.tolist() == [False, False, True]


@pytest.mark.parametrize(("mode", "model"), MODE_CASES)
def test_a_member_does_not_depend_on_who_shares_its_population(mode: str, model: str) -> None:
    """The same child trained with just the original and control, or among 6 other children,
    ends bit-identical (measured: CPU bmm and the element-wise optimizer are per-member)."""
    trainer, recipe, params = _setup(mode, MODEL_CASES[model])
    child = clone(params)
    for v in child.values():
        v.add_(0.01)
    small = Population.from_members(
        ["o", "c", "x"], [clone(params), clone(params), clone(child)],
        [init_state(recipe, params) for _ in range(3)], 0,
    )  # fmt: skip
    others = [clone(params) for _ in range(6)]
    for i, o in enumerate(others):
        for v in o.values():
            v.add_(-0.02 * (i + 1))
    big_members = [clone(params), clone(params), *others[:3], clone(child), *others[3:]]
    big = Population.from_members(
        [str(i) for i in range(9)], big_members, [init_state(recipe, params) for _ in range(9)], 0
    )
    trainer.train(small, 20)
    trainer.train(big, 20)
    for k in params:
        assert torch.equal(small.params[k][2], big.params[k][5]), k
        assert torch.equal(small.params[k][0], big.params[k][0]), k


def test_batched_mlp_gradients_match_autograd() -> None:
    tb, recipe, params = _setup("batched")
    tv, _, _ = _setup("vmap")
    pop = _population(recipe, params, 4, bump=0.05)
    x, y = tb.batch(3)
    gb, lb = tb.gradients(pop.params, x, y)
    gv, lv = tv.gradients(pop.params, x, y)
    assert torch.allclose(lb, lv, rtol=1e-6, atol=1e-7)
    for k in params:
        assert torch.allclose(gb[k], gv[k], rtol=1e-5, atol=1e-7), k


def test_auto_mode_choice() -> None:
    tb, _, _ = _setup("auto")
    assert tb.mode_for(10) == "batched" and tb.mode_for(1) == "batched"
    tc, _, _ = _setup("auto", MODEL_CASES["cnn"])
    assert tc.mode_for(10) == "vmap" and tc.mode_for(1) == "loop"
    with pytest.raises(ValueError, match="needs an MLP"):
        _setup("batched", MODEL_CASES["cnn"])


def test_gradient_clipping_is_per_member_and_matches_torch() -> None:
    from butterfly.train.recipe import clip_per_member

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2))
    grads = []
    for scale in (0.01, 10.0, 100.0):  # one member under the threshold, two above
        for p in m.parameters():
            p.grad = scale * torch.randn_like(p)
        grads.append({k: v.grad.clone() for k, v in m.named_parameters()})
    stacked = {k: torch.stack([g[k] for g in grads]) for k in grads[0]}
    clip_per_member(stacked, 1.0)
    for i, g in enumerate(grads):
        for k, p in m.named_parameters():
            p.grad = g[k].clone()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        for k, p in m.named_parameters():
            assert torch.allclose(stacked[k][i], p.grad, rtol=1e-6, atol=1e-8), (i, k)
    # a clipped population keeps its control exact
    trainer, recipe, params = _setup("batched")
    trainer.recipe = recipe.model_copy(update={"grad_clip": 0.05})
    pop = _population(recipe, params, 4, bump=0.5)
    trainer.train(pop, 20)
    for k in params:
        assert torch.equal(pop.params[k][0], pop.params[k][1])


def test_the_pure_sgd_step_is_the_in_place_update_bit_for_bit() -> None:
    """The recipe's out-of-place SGD step (what the Lyapunov estimate pushes tangents through)
    and the in-place update the trainer uses are one update rule."""
    from butterfly.train.recipe import clip_per_member, clipped, sgd_step

    cfg = RecipeConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, grad_clip=0.5)
    g = torch.Generator().manual_seed(0)
    theta = {"w": torch.randn(5, 4, generator=g), "b": torch.randn(4, generator=g)}
    p = {k: v.clone().unsqueeze(0) for k, v in theta.items()}
    state = {"momentum": {k: torch.zeros_like(v) for k, v in p.items()}}
    mom = {k: torch.zeros_like(v) for k, v in theta.items()}
    for step in range(4):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in theta.items()}
        stacked = {k: v.clone().unsqueeze(0) for k, v in grads.items()}
        clip_per_member(stacked, cfg.grad_clip)
        apply_update(cfg, p, stacked, state, step, 0.05)
        theta, mom = sgd_step(cfg, 0.05, theta, mom, clipped(grads, cfg.grad_clip))
        for k in theta:
            assert torch.equal(theta[k], p[k][0]) and torch.equal(mom[k], state["momentum"][k][0])
