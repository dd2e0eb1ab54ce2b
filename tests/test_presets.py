"""Issue 6 (part): the paper's Table 1 settings as presets, at CPU and full scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from butterfly.cli import main
from butterfly.config import ConfigError, RunConfig, list_presets, load_config
from butterfly.report.summary import summary_table
from butterfly.sweep.pipelines import run_pipeline
from butterfly.sweep.session import SweepOutcome

NAMES = [name for name, _ in list_presets()]


def cpu_runs() -> list[str]:
    """The presets whose cpu scale is its own: one that differs from another only in its
    name and full scale (Figure 20's ViTs, GLUE tasks whose cpu stand-ins are one task) would
    run the same thing again; the shortest name of such a family runs."""
    seen: set[str] = set()
    out = []
    for name in sorted(NAMES, key=lambda n: (len(n), n)):
        raw = load_config(name).to_dict()
        raw.pop("name", None)
        key = repr(raw)
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def test_presets_are_listed_and_valid_at_both_scales(capsys: pytest.CaptureFixture[str]) -> None:
    expected = {
        "table1-standard", "table1-warmup10x", "table1-adamw", "table1-batch512", "table1-sgd-wd",
        "table1-perturb-norm", "table1-resnet8", "table1-resnet8-warmup10x", "fig11-fraction",
        "fig9-biases-norm", "fig10-spawning", "workshop-longer", "workshop-lr-rewind",
        "finetune-cifar100-to-cifar10", "finetune-cifar10-to-cifar100", "finetune-minilm",
        "threshold-standard", "threshold-finetune", "lyapunov-standard", "finetune-vit",
        "finetune-olmo-gsm8k", "finetune-multibert", "glue-sst2", "glue-qnli", "glue-mrpc",
        "glue-rte", "glue-cola", "workshop-insets", "workshop-gaussian", "b3-layers-first",
        "b3-layers-middle", "b3-layers-last", "finetune-vit-base-in1k", "finetune-vit-large-in21k",
        "finetune-vit-huge-in21k",
    }  # fmt: skip
    assert expected <= set(NAMES)
    # Figure 20's four ViTs, each from its own local folder
    vits = {load_config(n, scale="full").model.path for n in NAMES if n.startswith("finetune-vit")}
    assert vits == {f"~/models/vit-{v}" for v in ("base-patch16-224", "base-patch16-224-in21k",
                                                  "large-patch16-224-in21k", "huge-patch14-224-in21k")}  # fmt: skip
    for name, doc in list_presets():
        cpu = load_config(f"presets/{name}.yaml", scale="cpu")
        full = load_config(name, scale="full")
        assert doc["description"] and doc["cpu"]["expected_runtime"]
        assert doc["full"]["expected_runtime"] and doc["full"]["data"]
        # full scale: the paper's data and models; cpu scale: data that ships offline
        assert full.data.name in ("cifar10", "cifar100", "glue", "gsm8k")
        assert full.model.name in ("resnet", "resnet50", "hf")
        assert full.runtime.device == "cuda"
        assert cpu.data.name in ("mnist1d", "digits", "synthetic", "sentiment", "pairs",
                                 "arithmetic")  # fmt: skip
        assert cpu.runtime.device == "cpu"
        if full.pretrain is not None and full.pretrain.folders is None:
            assert cpu.pretrain is not None and 0 in cpu.pretrain.checkpoints
    # the paper's models: ResNet-50 and ViT fine-tuning, a causal LM, MultiBERT checkpoints
    assert load_config("finetune-cifar100-to-cifar10", scale="full").model.name == "resnet50"
    vit = load_config("finetune-vit", scale="full")
    assert vit.model.resize == [224, 224] and vit.recipe.epochs == 5
    olmo = load_config("finetune-olmo-gsm8k", scale="full")
    assert olmo.model.task == "causal_lm" and [s for s, _ in olmo.pretrain.folders] == [
        1000, 358000, 738000]  # fmt: skip
    for task in ("sst2", "qnli", "mrpc", "rte", "cola"):
        g = load_config(f"glue-{task}", scale="full")
        assert [s for s, _ in g.pretrain.folders] == [20_000, 200_000, 2_000_000]
        # A.2: both MultiBERT pre-training runs, seed 0 from seed_0's folders, seed 1 from seed_1's
        assert g.seeds == [0, 1] and all("multiberts-seed_{seed}-step_" in p for _, p in g.pretrain.folders)
        assert (g.recipe.optimizer, g.recipe.lr, g.recipe.weight_decay) == ("adamw", 2e-5, 0.01)
    mb = load_config("finetune-multibert", scale="full")
    assert mb.seeds == [0, 1] and all("seed_{seed}" in p for _, p in mb.pretrain.folders)
    table2 = {"qnli": (128, None, 3), "sst2": (128, 2500, None), "cola": (32, 1500, None),
              "mrpc": (32, 500, None), "rte": (32, 500, None)}  # fmt: skip
    for task, (bs, steps, epochs) in table2.items():
        r = load_config(f"glue-{task}", scale="full").recipe
        assert (r.batch_size, r.epochs) == (bs, epochs) and (steps is None or r.steps == steps)
    for name in ("finetune-cifar100-to-cifar10", "finetune-cifar10-to-cifar100"):
        times = load_config(name, scale="full").perturb.times
        assert {0.00005, 0.005, 0.1} <= set(times)  # Tables 4-5: 0.005 %, 0.5 %, 10 %
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in NAMES)
    with pytest.raises(ConfigError, match="scale"):
        load_config("table1-standard", scale="huge")


def test_the_table1_presets_state_only_what_differs_from_the_standard_one() -> None:
    from butterfly.config import PRESET_DIR

    std = {s: load_config("table1-standard", scale=s) for s in ("cpu", "full")}
    for name in NAMES:
        if not name.startswith("table1-") or name == "table1-standard":
            continue
        text = (PRESET_DIR / f"{name}.yaml").read_text()
        assert "extends: table1-" in text and len(text.splitlines()) <= 20, name
    w = load_config("table1-warmup10x", scale="full")
    assert w.recipe.warmup == 0.2 and w.name == "table1-warmup10x"
    assert w.model_copy(update={"recipe": std["full"].recipe, "name": "table1-standard"}) == std[
        "full"
    ]
    # a chain: resnet8-warmup10x extends resnet8 extends standard, per scale
    r = load_config("table1-resnet8-warmup10x", scale="cpu")
    assert (r.model.width, r.model.depth, r.recipe.warmup) == (165, 1, 0.2)
    assert r.name == "table1-resnet8-warmup10x-cpu"
    r = load_config("table1-resnet8-warmup10x", scale="full")
    assert (r.model.name, r.model.width, r.model.depth) == ("resnet", 64, 8)
    a = load_config("table1-adamw", scale="cpu")
    assert (a.recipe.optimizer, a.recipe.lr, a.recipe.steps) == ("adamw", 0.003, 2400)
    # each preset carries its own note: the perturb-norm stand-in is a ResNet, not an MLP
    doc = dict(list_presets())
    assert "ResNet-8" in doc["table1-perturb-norm"]["cpu"]["note"]
    assert load_config("table1-perturb-norm").model.name == "resnet"


def test_table1_cpu_scales_perturb_at_the_early_times_too() -> None:
    """Every Table 1 preset's cpu scale perturbs at 0, 0.1%, 0.5%, 2%, 5% and 50% of T."""
    for name in NAMES:
        if name.startswith("table1-"):
            cfg = load_config(name, scale="cpu")
            assert cfg.perturb.times == [0.0, 0.001, 0.005, 0.02, 0.05, 0.5], name
            T = cfg.recipe.steps
            assert cfg.perturbation_steps() == sorted({round(f * T) for f in cfg.perturb.times})
    assert load_config("table1-standard", scale="cpu").perturbation_steps() == [0, 3, 15, 60, 150, 1500]


def test_workshop_insets_use_smaller_sizes_early_and_larger_late() -> None:
    from butterfly.experiment.members import population_members

    for name, kind in (("workshop-insets", "batch"), ("workshop-gaussian", "gaussian")):
        for scale in ("cpu", "full"):
            cfg = load_config(name, scale=scale)
            p = cfg.perturb
            assert p.kinds == [kind] and not p.normalize and p.child_steps == "T_after_t"
            assert p.mask == "weights" and set(p.sigmas_at) <= set(p.times)
            early, late = p.sigmas_at[0.0], p.sigmas_at[0.5]
            assert min(early) < min(p.sigmas) and max(late) > max(p.sigmas), (name, scale)
            members = {t: {m.sigma for m in population_members(cfg, t) if m.kind == kind}
                       for t in cfg.perturbation_steps()}  # fmt: skip
            assert members[0] == set(early) and members[max(members)] == set(late)
            assert any(v == set(p.sigmas) for v in members.values())  # a middle t: the main grid
    full = load_config("workshop-insets", scale="full")
    assert full.perturbation_steps() == [0, 10, 49, 390, 1950, 9750] and full.recipe.steps == 19500
    assert full.perturb.sigmas_at[0.0] == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]  # 0.1 left out (Figure 1)
    assert full.perturb.sigmas_at[0.1] == full.perturb.sigmas_at[0.5] == [1e-4, 1e-3, 1e-2, 0.1, 1.0]
    gauss = load_config("workshop-gaussian", scale="full").perturb.sigmas_at
    assert gauss[0.0][:2] == [1e-6, 1e-5] and gauss[0.5][-2:] == [0.5, 1.0]


def test_b3_presets_perturb_the_first_middle_and_last_block() -> None:
    from butterfly.experiment.perturb import eligible
    from butterfly.experiment.resolve import check_layers
    from butterfly.models import build_model, param_info

    blocks = {"cpu": (0, 1, 2), "full": (0, 4, 8)}  # ResNet-8: 3 blocks; ResNet-20: 9
    for scale, shape in (("cpu", (1, 40)), ("full", (3, 32, 32))):
        chosen = []
        for name, b in zip(("first", "middle", "last"), blocks[scale], strict=True):
            cfg = load_config(f"b3-layers-{name}", scale=scale)
            assert cfg.model.name == "resnet" and cfg.perturb.layers == [f"blocks.{b}.*"]
            info = param_info(build_model(cfg.model, shape, 10, seed=0))
            check_layers(cfg.perturb, info, cfg.model.name)
            names = eligible(info, cfg.perturb.mask, cfg.perturb.layers)
            assert names and all(n.startswith(f"blocks.{b}.") and info[n].kind == "weight"
                                 for n in names)  # fmt: skip
            chosen.append(names)
        assert not set(chosen[0]) & set(chosen[1]) and not set(chosen[1]) & set(chosen[2])
    full = load_config("b3-layers-middle", scale="full")
    std = load_config("table1-standard", scale="full")
    assert full.model_copy(update={"name": std.name, "perturb": std.perturb}) == std


def test_a_config_extends_a_preset_or_another_file(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: table1-warmup10x\nname: mine\nrecipe: {lr: 0.05}\nseeds: [7]\n")
    cfg = load_config(mine)
    assert (cfg.name, cfg.recipe.lr, cfg.recipe.warmup, cfg.seeds) == ("mine", 0.05, 0.2, [7])
    assert cfg.recipe.steps == 3000 and load_config(mine, scale="full").recipe.steps == 25000
    child = tmp_path / "child.yaml"
    child.write_text("extends: mine.yaml\nperturb: {sigmas: [0.01]}\n")  # relative to child.yaml
    c = load_config(child)
    assert c.perturb.sigmas == [0.01] and c.recipe.lr == 0.05 and c.name == "mine"
    loop_a, loop_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    loop_a.write_text("extends: b.yaml\n")
    loop_b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(loop_a)
    (tmp_path / "bad.yaml").write_text("extends: [a, b]\n")
    with pytest.raises(ConfigError, match="extends must name one"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "nobase.yaml").write_text("extends: no-such-preset\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nobase.yaml")


WARMUP_PAIR = ("table1-standard", "table1-warmup10x")  # run whole by the warm-up test below
# The presets whose cpu-scale run checks a claim of the paper (the warm-up test below, the
# threshold and fine-tuning bars): CI runs them whole (marked slow). Every other preset runs
# whole under the `presets` mark (`make test-presets`, `make test-all`) and at a smaller size
# in CI (marked slow), which covers its code paths and its checks in a fraction of the time.
CLAIMS = (*WARMUP_PAIR, "threshold-standard", "finetune-cifar100-to-cifar10")


def whole_runs() -> list[object]:
    return [pytest.param(n, marks=pytest.mark.slow if n in CLAIMS else pytest.mark.presets)
            for n in cpu_runs() if n not in WARMUP_PAIR]  # fmt: skip


def smaller(name: str) -> RunConfig:
    """The preset's cpu scale with its first seed, its first and last perturbation time, a
    quarter of its steps or epochs (at least 20 steps), three points on each path and at most
    three trajectory points: every member kind, size, mask, model, data and optimiser stays."""
    cfg = load_config(name)
    t = cfg.perturb.times
    keep = [t[0], t[-1]] if len(t) > 1 else list(t)
    r = cfg.recipe
    length = (f"recipe.epochs={r.epochs / 4}" if r.epochs is not None
              else f"recipe.steps={min(r.steps, max(20, r.steps // 4))}")  # fmt: skip
    over = [f"seeds=[{cfg.seeds[0]}]", f"perturb.times={keep}", length, "eval.alphas=3",
            f"eval.trajectory_points={min(cfg.eval.trajectory_points, 3)}"]  # fmt: skip
    if cfg.perturb.sigmas_at:
        sizes = ", ".join(f"{k}: {cfg.perturb.sigmas_of(k)}" for k in keep)
        over.append(f"perturb.sigmas_at={{{sizes}}}")
    return load_config(name, over)


def test_a_smaller_preset_keeps_all_but_its_seeds_times_steps_and_path_points() -> None:
    for name in ("table1-perturb-norm", "workshop-insets", "finetune-multibert", "finetune-vit"):
        whole, small = load_config(name).to_dict(), smaller(name).to_dict()
        assert small["seeds"] == whole["seeds"][:1]
        times = whole["perturb"]["times"]
        assert small["perturb"]["times"] == [times[0], times[-1]]
        assert small["eval"]["alphas"] == 3 and small["eval"]["trajectory_points"] <= 3
        for key in ("steps", "epochs"):
            assert (small["recipe"].pop(key, 0) or 0) <= (whole["recipe"].pop(key, 0) or 0)
        for key in ("seeds", "perturb", "eval"):
            whole.pop(key), small.pop(key)
        assert small == whole, name  # model, data, recipe, pre-training, runtime as the preset
    cfg = smaller("workshop-insets")
    assert all(cfg.perturb.sigmas_of(t) == load_config("workshop-insets").perturb.sigmas_of(t)
               for t in cfg.perturb.times)  # fmt: skip


@pytest.mark.parametrize("name", whole_runs())
def test_every_cpu_preset_runs_end_to_end(name: str, tmp_path: Path) -> None:
    cfg = load_config(name)
    out = run_pipeline(cfg, tmp_path / name, quiet=True)
    _check(name, cfg, out, tmp_path / name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in cpu_runs() if n not in CLAIMS])
def test_every_other_preset_runs_end_to_end_at_a_smaller_size(name: str, tmp_path: Path) -> None:
    cfg = smaller(name)
    out = run_pipeline(cfg, tmp_path / name, quiet=True)
    _check(name, cfg, out, tmp_path / name)


def _check(name: str, cfg: RunConfig, out: SweepOutcome, run: Path) -> None:
    df = out.results
    assert out.control_ok and len(df) > 0
    assert (df[df.control == 0].diverged == 0).all()
    kids = df[df.control == 0]
    if name == "fig11-fraction":  # down to a single perturbed weight, beside the twin
        from butterfly.report.summary import hardware_noise_table

        assert kids[kids.kind != "twin"].n_perturbed.min() == 1
        noise = hardware_noise_table(df)
        assert len(noise) == df.t_frac.nunique() and noise.twin_l2.notna().all()
        assert "batch (1 weight, σ = 1e-4) l2" in noise.columns
    if name == "fig9-biases-norm":
        assert (kids.n_perturbed < 2000).all() and (kids.noise_l2 > 0).all()
    if name == "fig10-spawning":
        assert (kids[kids.kind == "spawn"].l2 > 0).all()
        batch = kids[kids.kind == "batch"]
        # sigma = 1 is the SGD-noise size at t; sigma = 10 ten times that
        s1 = batch[batch.sigma == 1.0].set_index(["seed", "t"]).noise_l2
        s10 = batch[batch.sigma == 10.0].set_index(["seed", "t"]).noise_l2
        assert ((s10 / s1 - 10).abs() < 1e-6).all()
    if name == "finetune-cifar100-to-cifar10":
        _finetune_bar(df)
    if name == "finetune-minilm":  # the real pre-trained weights, offline, bit-exact control
        assert kids.barrier_train_loss.notna().all() and (kids.l2 > 0).all()
        print("\n" + summary_table(df).to_string(float_format=lambda v: f"{v:.3g}"))
    if name == "threshold-standard":
        _threshold_bar(run)
    if name == "lyapunov-standard":
        assert kids.lyapunov_exponent.notna().all() and kids.growth_rate.notna().all()
    if name.startswith("glue-") or name == "finetune-multibert":  # GLUE's metrics per member
        assert kids.test_f1_b.between(0, 1).all() and kids.test_mcc_b.between(-1, 1).all()
    if name == "finetune-multibert":
        assert sorted(df.pretrain_steps.unique()) == [0, 8, 24]
    if name == "finetune-olmo-gsm8k":  # exact match is a rate; no logit ensemble for an LM
        assert kids.test_acc_b.between(0, 1).all() and df.ensemble_test_acc.isna().all()
        assert sorted(df.pretrain_steps.unique()) == [0, 30, 150]
    if name in ("workshop-insets", "workshop-gaussian"):  # each t with its own sizes
        for t_frac, g in kids.groupby("t_frac"):  # the step of a time is rounded: the nearest
            at = min(cfg.perturb.times, key=lambda f: abs(f - t_frac))
            assert sorted(set(g.sigma)) == sorted(cfg.perturb.sigmas_of(at)), (name, t_frac)
    if name.startswith("b3-layers-"):  # one residual block's weights only
        from butterfly.models import build_model

        model = build_model(cfg.model, (1, 40), 10, seed=0)
        pat = cfg.perturb.layers[0].removesuffix("*")
        n = sum(p.numel() for k, p in model.named_parameters() if k.startswith(pat) and p.dim() > 1)
        assert (kids.n_perturbed == n).all()
    if name == "finetune-vit":
        assert sorted(df.pretrain_steps.unique()) == [0, 14, 70]
        assert kids.barrier_train_loss.notna().all() and kids.cka.notna().all()
    if name in ("finetune-vit", "finetune-minilm", "finetune-multibert"):
        # Appendix C.5: weight matching (heads included) finds the identity for transformers
        from butterfly.report.summary import identity_table

        tab = identity_table(df)
        assert int(tab["children"].sum()) == len(kids) and (tab["identity"] == tab["children"]).all()
        assert (kids.barrier_train_loss_wm == kids.barrier_train_loss).all()


def _threshold_bar(run: Path) -> None:
    """Issue 'edge of stability': on the default MNIST-1D recipe the search resolves σ*(t) at
    the paper's perturbation times, and σ*(t) rises with t (stability increases throughout
    training)."""
    from scipy.stats import spearmanr

    from butterfly.sweep import Store

    with Store(run / "results.db") as st:
        th = st.thresholds()
    batch = th[th.kind == "batch"].set_index("at").sort_index()
    print("\n" + th.to_string())
    assert (batch.status == "resolved").sum() >= 5
    got = batch.estimate.dropna()
    assert got.iloc[-1] > 10 * got.iloc[0]
    assert spearmanr(got.index, got.to_numpy()).statistic > 0.8


def _finetune_bar(df: object) -> None:
    """Paper section 4.4 / Figure 19: fine-tuning from the longest pre-training gives lower
    barriers than from random initialisation (CPU-scale pair: MNIST-1D 0-4 -> 5-9)."""
    from butterfly.report.summary import finetune_table

    table = finetune_table(df)  # type: ignore[arg-type]
    print("\nmean train-loss barrier by pre-training steps, kind, t/T (columns: sigma)")
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    steps = sorted(table.index.get_level_values("pretrain_steps").unique())
    rand, longest = table.xs(0, level="pretrain_steps"), table.xs(steps[-1], level="pretrain_steps")
    early = [i for i in rand.index if i[1] == 0.0]
    assert float(longest.loc[early].to_numpy().mean()) < float(rand.loc[early].to_numpy().mean())
    assert (longest.loc[early].to_numpy() < rand.loc[early].to_numpy()).all()


@pytest.mark.slow
@pytest.mark.presets
def test_warmup_lowers_early_barriers_at_cpu_scale(tmp_path: Path) -> None:
    """Paper section 4.3: 10x warm-up gives lower barriers at t = 0 than the standard setting."""
    tables = {}
    for name in WARMUP_PAIR:
        cfg = load_config(name)
        out = run_pipeline(cfg, tmp_path / name, quiet=True)
        _check(name, cfg, out, tmp_path / name)  # as every preset's end-to-end run
        df = out.results
        tables[name] = summary_table(df).xs(0.0, level="t_frac")
    std, warm = tables["table1-standard"], tables["table1-warmup10x"]
    print("\nmean train-loss barrier at t = 0 (rows: kind; columns: sigma)")
    print("standard:\n", std.to_string(float_format=lambda v: f"{v:.3g}"))
    print("10x warm-up:\n", warm.to_string(float_format=lambda v: f"{v:.3g}"))
    assert float(warm.to_numpy().mean()) < float(std.to_numpy().mean())
    assert (warm.to_numpy() < std.to_numpy()).mean() >= 0.75


def test_the_resnet8_stand_in_is_as_much_wider_as_the_papers_pair() -> None:
    """ResNet8-64 has 1.13x the weights of ResNet-20-32 (1.23M vs 1.08M); the cpu stand-ins
    keep that ratio."""
    from butterfly.models import build_model

    def weights(name: str) -> int:
        cfg = load_config(name)
        model = build_model(cfg.model, (1, 40), 10, seed=0)
        return sum(p.numel() for p in model.parameters() if p.dim() > 1)

    ratio = weights("table1-resnet8") / weights("table1-standard")
    assert 1.10 < ratio < 1.16
