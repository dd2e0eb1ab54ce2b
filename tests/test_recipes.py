"""Recipes as researchers write them: any optimizer (built in, torch's, a user's by import path),
parameter groups, schedules, mixed precision and accumulation; a population updated as one
equals each member trained alone with ``torch.optim``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from butterfly.cli import main
from butterfly.config import ConfigError, DataConfig, RecipeConfig, build_config
from butterfly.data import BatchStream, load_dataset
from butterfly.experiment.resolve import resolve
from butterfly.models import param_info
from butterfly.sweep import run_sweep
from butterfly.train import Population, PopulationTrainer
from butterfly.train.optim import TorchUpdate, newton_schulz
from butterfly.train.recipe import lr_at, update_for
from conftest import tiny_config

Tensors = dict[str, torch.Tensor]
DATA = load_dataset(DataConfig(name="synthetic", n_train=256, n_test=64, n_features=12,
                               n_classes=4))  # fmt: skip
STEPS = 8


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def members(n: int = 3) -> list[Tensors]:
    """n different starting points (the first twice when asked for a control)."""
    base = {k: v.detach().clone() for k, v in net().named_parameters()}
    g = torch.Generator().manual_seed(1)
    return [{k: v + 0.05 * i * torch.randn(v.shape, generator=g) for k, v in base.items()}
            for i in range(n)]  # fmt: skip


def population(recipe: RecipeConfig, starts: list[Tensors], mode: str) -> tuple[Tensors, object]:
    model = net()
    init = starts[0]
    update = update_for(recipe, init, param_info(model, init))
    stream = BatchStream(len(DATA.y_train), recipe.batch_size, 0)
    trainer = PopulationTrainer(model, DATA, stream, recipe, mode, None, None, update)
    pop = Population.from_members([f"m{i}" for i in range(len(starts))],
                                  [{k: v.clone() for k, v in s.items()} for s in starts],
                                  [update.init_state(s) for s in starts], 0)  # fmt: skip
    trainer.train(pop, STEPS)
    return pop.params, update


def alone(recipe: RecipeConfig, start: Tensors, make: Callable[[list[dict]], torch.optim.Optimizer],
          step_fn: Callable[..., None] | None = None) -> Tensors:  # fmt: skip
    """One member trained on its own with a torch optimizer, on the same batches; gradients by
    torch.func on the member's own tensors, as a population trained in a loop computes them."""
    model = net()
    params = {k: v.clone() for k, v in start.items()}
    opt = make([{"params": list(params.values())}])
    stream = BatchStream(len(DATA.y_train), recipe.batch_size, 0)
    for s in range(STEPS):
        idx = stream.indices(s)
        x, y = DATA.x_train[idx], DATA.y_train[idx]
        grads = torch.func.grad(
            lambda p, x=x, y=y: F.cross_entropy(torch.func.functional_call(model, p, (x,)), y))(params)
        for group in opt.param_groups:
            group["lr"] = lr_at(recipe, s)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()
    return params


RECIPE = {"lr": 0.05, "warmup": 0.0, "schedule": "constant", "steps": 100, "batch_size": 32,
          "momentum": 0.9}  # fmt: skip
CASES = {
    "sgd-nesterov": ({"optimizer": "sgd", "nesterov": True, "weight_decay": 1e-3},
                     lambda g: torch.optim.SGD(g, lr=0.0, momentum=0.9, nesterov=True,
                                               weight_decay=1e-3)),
    "adam": ({"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-3},
             lambda g: torch.optim.Adam(g, lr=0.0, weight_decay=1e-3)),
    "nadam": ({"optimizer": "torch.optim:NAdam", "lr": 1e-2}, lambda g: torch.optim.NAdam(g)),
    "radam": ({"optimizer": "torch.optim:RAdam", "lr": 1e-2}, lambda g: torch.optim.RAdam(g)),
    "lion-user": ({"optimizer": "optim_zoo:Lion", "lr": 1e-3, "weight_decay": 0.1},
                  lambda g: __import__("optim_zoo").Lion(g, weight_decay=0.1)),
    "lion-builtin": ({"optimizer": "lion", "lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.99]},
                     lambda g: __import__("optim_zoo").Lion(g, weight_decay=0.1)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_population_updated_as_one_equals_each_member_alone(case: str) -> None:
    """In loop mode (the member's gradients computed exactly as alone), the optimizer applied
    to the stacked members changes nothing: bit for bit. Vectorised (vmap), the gradients
    differ by rounding: within 1e-5 relative."""
    changes, make = CASES[case]
    recipe = RecipeConfig(**{**RECIPE, **changes})
    starts = members(3)
    stacked, update = population(recipe, starts, "loop")
    for i, s in enumerate(starts):
        ref = alone(recipe, s, make)
        for k in ref:
            assert torch.equal(stacked[k][i], ref[k]), (case, i, k)
    if isinstance(update, TorchUpdate):
        assert not update.per_member  # element-wise: stepped as one
    if case != "lion-builtin" and not case.startswith("lion"):  # a sign flips on rounding
        vm, _ = population(recipe, starts, "vmap")
        for i, s in enumerate(starts):
            ref = alone(recipe, s, make)
            for k in ref:
                assert torch.allclose(vm[k][i], ref[k], rtol=1e-5, atol=1e-6), (case, k)
    # the control: two identical members stay bit-identical
    twin, _ = population(recipe, [starts[0], starts[0], starts[1]], "vmap")
    assert all(torch.equal(twin[k][0], twin[k][1]) for k in twin)


def muon_alone(recipe: RecipeConfig, start: Tensors) -> Tensors:
    """Muon for one network, written out with plain matrix products."""
    model = net()
    params = {k: v.clone() for k, v in start.items()}
    bufs = {k: torch.zeros_like(v) for k, v in params.items()}
    stream = BatchStream(len(DATA.y_train), recipe.batch_size, 0)
    a, b, c = 3.4445, -4.7750, 2.0315
    for s in range(STEPS):
        idx = stream.indices(s)
        x, y = DATA.x_train[idx], DATA.y_train[idx]
        grads = torch.func.grad(
            lambda p, x=x, y=y: F.cross_entropy(torch.func.functional_call(model, p, (x,)), y))(params)
        for k, p in params.items():
            bufs[k].mul_(recipe.momentum).add_(grads[k])
            u = grads[k].add(bufs[k], alpha=recipe.momentum)
            if p.dim() == 2:
                m = u.t() if u.shape[0] > u.shape[1] else u
                m = m / (m.norm() + 1e-7)
                for _ in range(5):
                    A = m @ m.t()
                    m = a * m + (b * A + c * A @ A) @ m
                u = (m.t() if u.shape[0] > u.shape[1] else m) * max(1.0, u.shape[0] / u.shape[1]) ** 0.5
            p.add_(u, alpha=-lr_at(recipe, s))
    return params


def test_muon_orthogonalises_each_members_matrices_as_alone() -> None:
    recipe = RecipeConfig(**{**RECIPE, "optimizer": "muon", "lr": 0.02, "momentum": 0.95})
    starts = members(3)
    stacked, _ = population(recipe, starts, "loop")
    for i, s in enumerate(starts):
        ref = muon_alone(recipe, s)
        for k in ref:  # batched vs single matrix products: rounding only
            assert torch.allclose(stacked[k][i], ref[k], rtol=1e-5, atol=1e-6), k
    g = torch.randn(2, 6, 4)
    o = newton_schulz(g)
    s = torch.linalg.svdvals(o)  # singular values pushed towards 1 (Muon's approximation)
    assert float(s.min()) > 0.5 and float(s.max()) < 1.3


def test_an_optimizer_that_couples_members_is_stepped_one_by_one() -> None:
    recipe = RecipeConfig(**{**RECIPE, "optimizer": "optim_zoo:TrustSGD", "lr": 0.01})
    starts = members(3)
    stacked, update = population(recipe, starts, "loop")
    assert isinstance(update, TorchUpdate) and update.per_member
    zoo = __import__("optim_zoo")
    for i, s in enumerate(starts):
        ref = alone(recipe, s, lambda g: zoo.TrustSGD(g))
        for k in ref:
            assert torch.equal(stacked[k][i], ref[k]), (i, k)
    twin, _ = population(recipe, [starts[0], starts[0]], "vmap")
    assert all(torch.equal(twin[k][0], twin[k][1]) for k in twin)
    notes = resolve(tiny_config(recipe={"optimizer": "optim_zoo:TrustSGD"})).warnings
    assert any("couples members" in n and "in a loop" in n for n in notes)
    notes = resolve(tiny_config(recipe={"optimizer": "torch.optim:NAdam"})).warnings
    assert any("updates the members as one" in n for n in notes)


def test_parameter_groups_get_their_learning_rate_and_weight_decay() -> None:
    recipe = RecipeConfig(**{**RECIPE, "momentum": 0.0, "weight_decay": 0.5, "groups": [
        {"kinds": ["biases"], "weight_decay": 0.0, "lr_scale": 0.1},
        {"params": ["3.weight"], "lr_scale": 2.0}]})  # fmt: skip
    model = net()
    init = members(1)[0]
    update = update_for(recipe, init, param_info(model, init))
    params = {k: v.clone().unsqueeze(0) for k, v in init.items()}
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    update.step(params, grads, update.init_state(params), 0, 0.05)
    lr, wd = 0.05, 0.5
    # the first layer's weight: the recipe's group; biases: their group (no decay, lr x 0.1);
    # the last layer's weight: lr x 2 with the recipe's decay
    assert torch.allclose(params["1.weight"][0], init["1.weight"] - lr * (1 + wd * init["1.weight"]))
    assert torch.allclose(params["1.bias"][0], init["1.bias"] - 0.1 * lr * 1.0)
    assert torch.allclose(params["3.bias"][0], init["3.bias"] - 0.1 * lr * 1.0)
    assert torch.allclose(params["3.weight"][0],
                          init["3.weight"] - 2 * lr * (1 + wd * init["3.weight"]))  # fmt: skip


def test_schedules_are_pure_functions_of_the_step() -> None:
    cos = RecipeConfig(lr=1.0, steps=100, warmup=0.0, schedule="cosine", min_lr=0.1)
    assert lr_at(cos, 0) == 1.0 and lr_at(cos, 100) == pytest.approx(0.1)
    assert lr_at(cos, 50) == pytest.approx(0.55)
    ms = RecipeConfig(lr=1.0, steps=100, warmup=0.0, schedule="multistep", milestones=[0.5, 0.75])
    assert [lr_at(ms, s) for s in (49, 50, 74, 75, 99)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])
    st = RecipeConfig(lr=1.0, steps=100, warmup=0.0, schedule="step", milestones=[0.3], gamma=0.5)
    assert [lr_at(st, s) for s in (29, 30, 60, 90)] == pytest.approx([1, 0.5, 0.25, 0.125])
    wsd = RecipeConfig(lr=1.0, steps=100, warmup=0.1, schedule="wsd", decay=0.2, min_lr=0.0)
    assert lr_at(wsd, 5) == pytest.approx(0.6) and lr_at(wsd, 79) == 1.0
    assert lr_at(wsd, 90) == pytest.approx(0.5)
    user = RecipeConfig(lr=0.4, steps=10, schedule="optim_zoo:halve_at_half")
    assert [lr_at(user, s) for s in (0, 4, 5, 9)] == [0.4, 0.4, 0.2, 0.2]


def test_a_resumed_run_with_a_user_optimizer_and_multistep_decay_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    recipe = {"optimizer": "optim_zoo:Lion", "lr": 1e-3, "schedule": "multistep",
              "milestones": [0.3, 0.6], "optimizer_kwargs": {"betas": [0.9, 0.99]}}  # fmt: skip
    cfg = tiny_config(recipe=recipe, perturb={"times": [0.0, 0.5]})
    whole = run_sweep(cfg, tmp_path / "whole", quiet=True)
    first = run_sweep(cfg, tmp_path / "resumed", quiet=True)
    with sqlite3.connect(first.run_dir / "results.db") as db:  # as if stopped before t = 30
        for table in ("units", "results", "trajectories", "training"):
            db.execute(f"DELETE FROM {table} WHERE t = 30")
    resumed = run_sweep(cfg, tmp_path / "resumed", quiet=True)  # from the saved parent state
    assert resumed.units_run == 1 and resumed.control_ok
    assert resumed.steps == 6 * 30  # the original and 5 members from t = 30: nothing before
    cols = [c for c in whole.results.columns if c != "unit_wall_s"]
    a = whole.results.sort_values(["t", "member"]).reset_index(drop=True)[cols]
    b = resumed.results.sort_values(["t", "member"]).reset_index(drop=True)[cols]
    assert a.equals(b)
    from butterfly.checkpoint import load_checkpoint

    _, state, _ = load_checkpoint(tmp_path / "resumed/parents/seed0/step0000030.safetensors")
    assert set(state) == {"exp_avg"}  # the user optimizer's own state, saved with the parent


def test_accumulation_over_micro_batches_matches_one_batch() -> None:
    model = net()
    starts = members(2)
    stacked = {k: torch.stack([s[k] for s in starts]) for k in starts[0]}
    x, y = DATA.x_train[:32], DATA.y_train[:32]
    one = PopulationTrainer(model, DATA, BatchStream(256, 32, 0), RecipeConfig(batch_size=32),
                            "vmap")  # fmt: skip
    four = PopulationTrainer(model, DATA, BatchStream(256, 32, 0),
                             RecipeConfig(batch_size=32, accumulation=4), "vmap")  # fmt: skip
    g1, l1 = one.gradients(stacked, x, y)
    g4, l4 = four.gradients(stacked, x, y)
    assert torch.allclose(l1, l4, rtol=1e-6)
    for k in g1:
        assert torch.allclose(g1[k], g4[k], rtol=1e-5, atol=1e-7), k


def test_bf16_autocast_training_keeps_the_control_exact(tmp_path: Path) -> None:
    out = run_sweep(tiny_config(recipe={"precision": "bf16"}), tmp_path / "bf16", quiet=True)
    from butterfly.sweep.store import Store

    env = Store(tmp_path / "bf16/results.db").get_meta("environment")
    assert env["precision"] == "bf16 autocast in training; weights and measurements float32"
    fp32 = run_sweep(tiny_config(), tmp_path / "fp32", quiet=True)
    assert out.control_ok
    assert not out.results.l2.equals(fp32.results.l2)  # it did train in bf16


def test_a_loss_may_take_the_step(tmp_path: Path) -> None:
    out = run_sweep(tiny_config(recipe={"loss": "test_recipes:bias_first_half"}, perturb={
        "times": [0.0], "kinds": ["gaussian"]}), tmp_path / "step", quiet=True)  # fmt: skip
    # trained at every step 0..59; measured as the loss of the end of training (step 60)
    assert out.control_ok and set(range(60)) <= set(SEEN) and max(SEEN) == 60


SEEN: list[int] = []


def bias_first_half(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> torch.Tensor:
    SEEN.append(step)
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y) + (0.01 * logits.mean() if step < 30 else 0.0)


@pytest.mark.parametrize(
    ("recipe", "sentence"),
    [
        ({"optimizer": "optim_zoo:NoGroups"}, "recipe.optimizer optim_zoo:NoGroups cannot be made "
         "for the model's parameters"),
        ({"schedule": "optim_zoo:negative_late", "steps": 20}, "gives the learning rate -0.01 at "
         "step 17"),
        ({"schedule": "optim_zoo:nan_schedule", "steps": 20}, "gives the learning rate nan at step 7"),
        ({"groups": [{"params": ["nothing.*"]}]}, "recipe.groups[0] (nothing.*) matches no parameter"),
        ({"groups": [{"kinds": ["biases"]}, {"params": ["*.bias"]}]},
         "recipe.groups[0] and recipe.groups[1] both take parameter"),
        ({"accumulation": 3}, "recipe.accumulation = 3 does not divide recipe.batch_size = 32"),
        ({"optimizer": "sgdd"}, "(did you mean sgd?)"),
    ],
)  # fmt: skip
def test_bad_recipes_are_one_sentence_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe: dict, sentence: str
) -> None:
    import yaml

    raw = tiny_config(recipe=recipe).to_dict() if "accumulation" not in recipe and \
        recipe.get("optimizer") != "sgdd" else {**tiny_config().to_dict()}  # fmt: skip
    raw["recipe"] = {**raw["recipe"], **recipe}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert sentence in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "o").exists()


def test_did_you_mean_suggests_only_close_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"recipe\.nesterv' \(did you mean recipe\.nesterov\?\)"):
        build_config({"recipe": {"nesterv": True}})
    with pytest.raises(ConfigError) as err:
        build_config({"runtime": {"precision": "bf16"}})
    assert "did you mean" not in str(err.value) and "runtime takes: device, threads" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_config({"recipe": {"zzzz": 1}})
    assert "recipe takes: optimizer, optimizer_kwargs, lr" in str(err.value)


def test_python_callables_anywhere_yaml_takes_an_import_path(tmp_path: Path) -> None:
    import butterfly
    from optim_zoo import Lion, halve_at_half

    exp = butterfly.Experiment(model="mlp", data=DATA, recipe={
        "optimizer": Lion, "schedule": halve_at_half, "steps": 20, "batch_size": 32, "lr": 1e-3},
        perturb={"times": [0.0], "sigmas": [1e-2], "kinds": ["gaussian"]}, seeds=[0])  # fmt: skip
    assert exp.config.recipe.optimizer == "optim_zoo:Lion"
    assert exp.config.recipe.schedule == "optim_zoo:halve_at_half"
    lam = butterfly.Experiment(model="mlp", data=DATA, recipe={
        "schedule": lambda step, T: 1.0, "steps": 20, "batch_size": 32})  # fmt: skip
    assert lam.config.recipe.schedule.startswith("local:")
    run = lam.run(out=tmp_path / "lambda", quiet=True, report=False)
    assert run.control_ok
    with pytest.raises(ConfigError, match="exists only in this Python process"):
        lam.run(out=tmp_path / "ray", executor="ray", report=False)
    assert math.isfinite(float(run.results.l2.iloc[0]))
