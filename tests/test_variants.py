"""Issue 6: new models (ResNet-50-LN, ViT), dropout with identical masks, the experiment
variants (spawning baseline, SGD-noise-scaled perturbations, longer child runs, LR rewinding),
task splits and fine-tuning from pre-training checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from butterfly.config import ConfigError, ModelConfig, build_config
from butterfly.data import load_dataset
from butterfly.experiment.resolve import resolve
from butterfly.experiment.setup import make_setup
from butterfly.experiment.spawn import child_lr, spawn_stream
from butterfly.models import build_model, head_names, load_backbone_, param_info
from butterfly.sweep import run_sweep
from butterfly.sweep.pipelines import run_pipeline
from butterfly.sweep.plan import plan
from butterfly.sweep.tasks import run_parent, run_unit
from butterfly.train import Population
from butterfly.train.recipe import lr_at

SYN = {"name": "synthetic", "n_train": 512, "n_test": 128, "n_features": 16, "n_classes": 4}
FAST_EVAL = {
    "weight_matching": False,
    "activation_matching": False,
    "proxy_fractions": [],
    "trajectory_points": 0,
    "cka": False,
}


def cfg_of(**over: object) -> dict:
    raw: dict = {
        "seeds": [0],
        "data": dict(SYN),
        "model": {"name": "mlp", "width": 16, "depth": 2},
        "recipe": {"steps": 60, "batch_size": 32, "lr": 0.05},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch"]},
        "eval": dict(FAST_EVAL),
    }
    raw.update(over)
    return raw


# ---- models -------------------------------------------------------------------------------


def test_resnet50_and_vit_build_classify_and_train() -> None:
    r50 = build_model(ModelConfig(name="resnet50", width=4), (3, 16, 16), 10, 0)
    blocks = [n for n, _ in r50.named_children()]
    assert "blocks" in blocks and len(r50.blocks) == 16  # 3 + 4 + 6 + 3 bottlenecks
    assert r50.out.in_features == 4 * 8 * 4  # 32 x width channels after the last stage
    info = param_info(r50)
    assert {i.kind for i in info.values()} == {"weight", "bias", "norm"}
    assert info["blocks.0.conv1.weight"].init_var == pytest.approx(2.0 / 4)
    vit = build_model(
        ModelConfig(name="vit", width=24, depth=2, heads=3, patch=4), (3, 16, 16), 10, 0
    )
    info = param_info(vit)
    assert info["pos_embed"].kind == "weight" and info["pos_embed"].init_var == pytest.approx(4e-4)
    assert info["blocks.0.norm1.weight"].kind == "norm"
    assert vit.pos_embed.shape == (1, 17, 24) and float(
        vit.pos_embed.detach().std()
    ) == pytest.approx(0.02, rel=0.2)
    # same seed, same weights; another seed, other weights
    again = build_model(ModelConfig(name="vit", width=24, depth=2, heads=3), (3, 16, 16), 10, 0)
    other = build_model(ModelConfig(name="vit", width=24, depth=2, heads=3), (3, 16, 16), 10, 1)
    assert torch.equal(vit.pos_embed, again.pos_embed)
    assert not torch.equal(vit.blocks[0].fc1.weight, other.blocks[0].fc1.weight)
    with pytest.raises(ConfigError, match="divisible"):
        build_config({"model": {"name": "vit", "width": 10, "heads": 3}})


def test_vit_sweep_with_dropout_keeps_the_control_exact_and_resumes_bit_identically(
    tmp_path: Path,
) -> None:
    raw = cfg_of(
        data={"name": "synthetic", "n_train": 256, "n_test": 64, "n_features": 16, "n_classes": 4},
        model={"name": "vit", "width": 12, "depth": 1, "heads": 2, "patch": 4, "dropout": 0.2},
        recipe={"steps": 12, "batch_size": 16, "lr": 0.01},
        perturb={"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch", "gaussian"]},
    )
    cfg = build_config(raw)
    df = run_sweep(cfg, tmp_path / "a", quiet=True, workers=1).results
    ctrl = df[df.control == 1]
    assert (ctrl.l2 == 0.0).all() and (ctrl.barrier_train_loss == 0.0).all()
    kids = df[df.control == 0]
    assert (kids.l2 > 0).all()
    # dropout masks are a pure function of (seed, step): a second run gives the same bits
    df2 = run_sweep(cfg, tmp_path / "b", quiet=True, workers=1).results
    assert df2.sort_values("member")["l2"].tolist() == df.sort_values("member")["l2"].tolist()


def test_dropout_masks_are_step_seeded_and_shared_by_members() -> None:
    cfg = build_config(
        cfg_of(
            data={"name": "synthetic", "n_train": 64, "n_test": 16, "n_features": 16},
            model={"name": "vit", "width": 12, "depth": 1, "heads": 2, "patch": 4, "dropout": 0.5},
            recipe={"steps": 4, "batch_size": 8},
        )
    )
    ctx = make_setup(resolve(cfg, check=False), 0)
    tr = ctx.trainer
    x, y = tr.batch(0)
    p = {k: v.unsqueeze(0).repeat(3, *[1] * v.dim()) for k, v in ctx.init.items()}
    for mode in ("vmap", "loop"):
        tr.mode = mode
        _, loss = tr.gradients(p, x, y, ("k", 0))
        assert loss[0] == loss[1] == loss[2]  # same masks for every member
        _, again = tr.gradients(p, x, y, ("k", 0))
        _, other = tr.gradients(p, x, y, ("k", 1))
        assert torch.equal(loss, again) and not torch.equal(loss, other)
    assert not ctx.model.training  # evaluation runs without dropout
    state = torch.random.get_rng_state()
    tr.gradients(p, x, y, ("k", 0))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched


# ---- variants -----------------------------------------------------------------------------


def test_spawning_baseline_uses_an_independent_stream_after_t(tmp_path: Path) -> None:
    cfg = build_config(cfg_of(perturb={"times": [0.0, 0.5], "sigmas": [1e-2],
                                       "kinds": ["batch", "spawn"], "directions": 2}))  # fmt: skip
    units = plan(cfg)
    assert [c.kind for c in units[0].members] == [
        "original", "control", "batch", "batch", "spawn", "spawn"
    ]  # fmt: skip
    ctx = make_setup(resolve(cfg, check=False), 0)
    s0, s1 = spawn_stream(ctx, 30, 0), spawn_stream(ctx, 30, 1)
    assert not torch.equal(s0.indices(30), ctx.trainer.stream.indices(30))
    assert not torch.equal(s0.indices(30), s1.indices(30))
    assert torch.equal(s0.indices(31), spawn_stream(ctx, 30, 0).indices(31))  # step-indexed
    df = run_sweep(cfg, tmp_path / "run", quiet=True, workers=1).results
    spawn = df[df.kind == "spawn"]
    assert len(spawn) == 4 and (spawn.sigma == 0.0).all() and (spawn.l2 > 0).all()
    assert (spawn.noise_l2 == 0.0).all()
    ctrl = df[df.control == 1]
    assert (ctrl.l2 == 0.0).all() and (ctrl.barrier_train_loss == 0.0).all()


def test_sgd_noise_scale_is_the_distance_after_one_step_on_independent_batches(
    tmp_path: Path,
) -> None:
    raw = cfg_of(perturb={"times": [0.5], "sigmas": [1.0, 10.0], "kinds": ["batch", "gaussian"],
                          "scale": "sgd_noise", "noise_pairs": 4})  # fmt: skip
    cfg = build_config(raw)
    run_dir = tmp_path / "run"
    resolved = resolve(cfg, check=False)
    run_parent(resolved, 0, run_dir)
    res = run_unit(resolved, plan(cfg)[0], run_dir)
    rows = {(r["kind"], r["sigma"]): r for r in res.rows if not r["control"]}
    # hand computation: lr_t * ||g1 - g2|| (SGD with momentum: the buffers are shared)
    from butterfly.checkpoint import load_checkpoint
    from butterfly.data import independent_batch
    from butterfly.sweep.rundir import parent_path

    ctx = make_setup(resolve(cfg, check=False), 0)
    params, _, _ = load_checkpoint(parent_path(run_dir, 0, 30))
    lr = lr_at(cfg.recipe, 30)
    names = [n for n, i in ctx.info.items() if i.kind == "weight"]
    sizes = []
    for i in range(4):
        gs = []
        for j in (0, 1):
            idx = independent_batch(512, 32, "sgd-noise", 0, 30, i, j)
            gs.append(
                ctx.trainer.single_gradient(params, ctx.data.x_train[idx], ctx.data.y_train[idx])
            )
        sizes.append(
            lr * sum(float((gs[0][n] - gs[1][n]).double().square().sum()) for n in names) ** 0.5
        )
    expected = sum(sizes) / len(sizes)
    for kind in ("batch", "gaussian"):
        assert rows[(kind, 1.0)]["noise_l2"] == pytest.approx(expected, rel=1e-5)
        assert rows[(kind, 10.0)]["noise_l2"] == pytest.approx(10 * expected, rel=1e-5)


def test_children_train_longer_and_rewind_their_schedule(tmp_path: Path) -> None:
    base = cfg_of(perturb={"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch"]})
    longer = build_config({**base, "perturb": {**base["perturb"], "child_steps": "T_after_t"}})
    rewind = build_config(
        {**base, "perturb": {**base["perturb"], "child_steps": "T_after_t", "lr_rewind": True}}
    )
    T = 60
    assert longer.child_end(30) == 90 and child_lr(build_config(base), 30) is None
    f_long, f_rew = child_lr(longer, 30), child_lr(rewind, 30)
    assert f_long is not None and f_rew is not None
    assert f_long(30) == lr_at(longer.recipe.model_copy(update={"steps": 90}), 30)
    assert f_rew(30) == lr_at(rewind.recipe, 0) and f_rew(89) == lr_at(rewind.recipe, T - 1)
    results = {}
    for name, cfg in (("plain", build_config(base)), ("longer", longer), ("rewind", rewind)):
        run_dir = tmp_path / name
        resolved = resolve(cfg, check=False)
        run_parent(resolved, 0, run_dir)
        res = run_unit(resolved, plan(cfg)[1], run_dir)  # t = 30
        # original and control to T, the child to t + T (or T)
        child_steps = 60 if name != "plain" else 30
        assert res.steps == 2 * 30 + child_steps
        ctrl = next(r for r in res.rows if r["control"])
        assert ctrl["l2"] == 0.0 and ctrl["barrier_train_loss"] == 0.0
        results[name] = next(r for r in res.rows if not r["control"])
        ck = load_file(str(run_dir / "checkpoints/seed0/t0000030/original.safetensors"))
        assert ck  # members are saved
    assert len({r["l2"] for r in results.values()}) == 3


def test_the_variants_bars_are_kept_in_the_cli_table(tmp_path: Path) -> None:
    from butterfly.report.summary import summary_table

    cfg = build_config(
        cfg_of(perturb={"times": [0.0], "sigmas": [1e-2], "kinds": ["batch", "spawn"]})
    )
    df = run_sweep(cfg, tmp_path / "run", quiet=True, workers=1).results
    t = summary_table(df)
    assert ("spawn", 0.0) in t.index and ("batch", 0.0) in t.index


# ---- task splits and fine-tuning ------------------------------------------------------------


def test_class_selection_relabels_in_the_given_order() -> None:
    full = load_dataset(build_config({"data": SYN}).data)
    part = load_dataset(build_config({"data": {**SYN, "classes": [3, 1]}}).data)
    assert part.n_classes == 2 and set(part.y_train.tolist()) == {0, 1}
    assert len(part.y_train) == int(((full.y_train == 3) | (full.y_train == 1)).sum())
    assert torch.equal(part.x_train[part.y_train == 0], full.x_train[full.y_train == 3])
    with pytest.raises(ConfigError, match="distinct"):
        build_config({"data": {**SYN, "classes": [1, 1]}})
    from butterfly.data import DataError

    with pytest.raises(DataError, match="do not exist"):
        load_dataset(build_config({"data": {**SYN, "classes": [0, 9]}}).data)


def test_backbone_loading_keeps_everything_but_the_head(tmp_path: Path) -> None:
    from butterfly.checkpoint import save_checkpoint

    src = build_model(ModelConfig(name="mlp", width=8), (1, 16), 5, 0)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, dict(src.named_parameters()))
    dst = build_model(ModelConfig(name="mlp", width=8), (1, 16), 3, 1)
    head = head_names(dst)
    assert head == ["out.weight", "out.bias"]
    before = {k: v.clone() for k, v in dst.named_parameters()}
    loaded = load_backbone_(dst, str(path))
    assert set(loaded) == {k for k in before if k not in head}
    for k, v in dst.named_parameters():
        assert torch.equal(v, before[k] if k in head else dict(src.named_parameters())[k])
    with pytest.raises(ValueError, match="does not exist"):
        load_backbone_(dst, str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="shape"):
        load_backbone_(build_model(ModelConfig(name="mlp", width=4), (1, 16), 3, 1), str(path))


def test_finetuning_run_pretrains_once_and_sweeps_each_checkpoint(tmp_path: Path) -> None:
    raw = cfg_of(
        data={**SYN, "classes": [2, 3]},
        recipe={"steps": 30, "batch_size": 32, "lr": 0.05},
        perturb={"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["batch"]},
        pretrain={
            "data": {**SYN, "classes": [0, 1]},
            "recipe": {"steps": 40, "batch_size": 32, "lr": 0.05},
            "checkpoints": [0, 10, 40],
        },
    )
    cfg = build_config(raw)
    out = run_pipeline(cfg, tmp_path / "ft", quiet=True, workers=1)
    df = out.results
    assert out.control_ok and sorted(df.pretrain_steps.unique()) == [0, 10, 40]
    assert len(df) == 3 * 2 * 2  # checkpoints x times x (control + child)
    top = tmp_path / "ft"
    for s in (10, 40):
        assert (top / "pretrain/parents/seed0" / f"step{s:07d}.safetensors").is_file()
    # the fine-tuning parent from checkpoint 40 starts at the pre-trained backbone
    pre = load_file(str(top / "pretrain/parents/seed0/step0000040.safetensors"))
    ft0 = load_file(str(top / "from-step0000040/parents/seed0/step0000000.safetensors"))
    rnd = load_file(str(top / "from-step0000000/parents/seed0/step0000000.safetensors"))
    assert torch.equal(ft0["param.hidden.0.weight"], pre["param.hidden.0.weight"])
    assert not torch.equal(rnd["param.hidden.0.weight"], pre["param.hidden.0.weight"])
    assert ft0["param.out.weight"].shape == (2, 16)
    # rerun: everything is resumed, nothing retrained
    again = run_pipeline(cfg, top, quiet=True, workers=1)
    assert again.units_run == 0 and again.steps == 0
    from butterfly.report import build_report

    page = build_report([top])
    assert page == top / "report.html" and (top / "figures/finetune.png").is_file()
    from butterfly.sweep.status import run_status

    text, ok = run_status(top)  # the top folder's status covers each of its sweeps
    assert ok and text.startswith(f"fine-tuning run {top}: 3 sweeps")
    assert text.count("determinism check: all 2 sigma = 0 controls") == 3
    assert "[random init]" in text and "[pre-trained 40 steps]" in text
    text = page.read_text()
    assert "pre-trained 40 steps" in text
    # Tables 4-5: mean ± std over seeds per pre-training checkpoint, kind and t (one seed:
    # the mean alone)
    assert "Tables 4-5: train-loss barrier, mean ± std over seeds" in text
    kid = df[(df.pretrain_steps == 40) & (df.t_frac == 0.0) & (df.sigma == 1e-2)]
    from butterfly.report.summary import fmt_number

    cell = fmt_number(float(kid.barrier_train_loss.iloc[0]))
    table = text.split('class="pm-barrier_train_loss"')[1].split("</table>")[0]
    row = re.search(r"<tr><td[^>]*>pre-trained 40 steps, batch, t = 0</td><td[^>]*>([^<]*)</td>", table)
    assert row is not None and row.group(1) == cell
    # a changed config is refused, not mixed in
    with pytest.raises(ConfigError, match="different config"):
        run_pipeline(build_config({**raw, "seeds": [1]}), top, quiet=True, workers=1)


def test_finetuning_config_errors_are_one_sentence() -> None:
    with pytest.raises(ConfigError, match=r"pretrain\.checkpoints contains 99"):
        build_config(cfg_of(pretrain={"recipe": {"steps": 50}, "checkpoints": [0, 99]}))
    with pytest.raises(ConfigError, match="text"):
        build_config({"data": {"name": "sentiment"}})
    with pytest.raises(ConfigError, match=r"model\.path is required"):
        build_config({"model": {"name": "hf"}})


def test_population_lanes_must_start_together() -> None:
    cfg = build_config(cfg_of())
    ctx = make_setup(resolve(cfg, check=False), 0)
    from butterfly.train.population import Lane

    a = Population.fresh(cfg.recipe, ctx.init)
    b = Population.fresh(cfg.recipe, ctx.init)
    b.step = 3
    with pytest.raises(ValueError, match="same step"):
        ctx.trainer.train_lanes([Lane(a, 5), Lane(b, 5)])


def test_a_twin_is_the_original_trained_again_by_another_code_path(tmp_path: Path) -> None:
    """Appendix C.2's hardware noise: the twin starts from the parent's state at t, trains on
    the same batches with the original's schedule, in loop mode (the MLP's population trains
    batched), and is measured against the original like any child."""
    from butterfly.checkpoint import load_checkpoint
    from butterfly.experiment.resolve import resolve
    from butterfly.experiment.setup import make_setup
    from butterfly.report.summary import hardware_noise_table
    from butterfly.train import Population
    from butterfly.train.population import Lane
    from conftest import tiny_config

    cfg = tiny_config(perturb={"times": [0.0, 0.5], "sigmas": [1e-3, 1e-1], "kinds": ["gaussian", "twin"],
                               "fractions": [0.01, 1.0]})  # fmt: skip
    out = run_sweep(cfg, tmp_path / "run", quiet=True)
    df = out.results
    assert out.control_ok
    twins = df[df.kind == "twin"]
    assert len(twins) == 2 and (twins.sigma == 0).all() and (twins.control == 0).all()
    assert (twins.l2 > 0).all()  # rounding alone moved it
    # the twin's weights at T: the parent's state at t trained by hand in loop mode
    setup = make_setup(resolve(cfg), 0)
    params, state, _ = load_checkpoint(tmp_path / "run/parents/seed0/step0000030.safetensors")
    pop = Population.from_members(["twin"], [params], [state], 30)
    setup.trainer.train_lanes([Lane(pop, 60, mode="loop")])
    twin, _, _ = load_checkpoint(tmp_path / "run/checkpoints/seed0/t0000030/twin.safetensors")
    assert all(torch.equal(pop.params[k][0], twin[k]) for k in twin)
    # the report's table: the twin beside the smallest perturbation (fewest weights, smallest σ)
    tab = hardware_noise_table(df)
    small = df[(df.kind == "gaussian") & (df.n_perturbed == df[df.kind == "gaussian"].n_perturbed.min())]
    small = small[small.sigma == 1e-3]
    n = int(small.n_perturbed.iloc[0])
    for t_frac, row in tab.iterrows():
        assert row["twin_l2"] == pytest.approx(float(twins[twins.t_frac == t_frac].l2.mean()))
        col = f"gaussian ({n:,} weight{'s' if n != 1 else ''}, σ = 0.001) l2"
        assert row[col] == pytest.approx(float(small[small.t_frac == t_frac].l2.mean()))
