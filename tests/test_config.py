from __future__ import annotations

from pathlib import Path

import pytest

from butterfly.cli import main
from butterfly.config import ConfigError, RunConfig, build_config, load_config
from butterfly.sweep import run_sweep


def test_defaults_are_the_documented_default_sweep() -> None:
    cfg = RunConfig()
    assert cfg.data.name == "mnist1d"
    assert (cfg.model.name, cfg.model.width) == ("mlp", 64)
    # the paper's Table 1 'Standard' recipe: 2% warm-up, then linear decay
    assert (cfg.recipe.optimizer, cfg.recipe.lr, cfg.recipe.momentum) == ("sgd", 0.1, 0.9)
    assert (cfg.recipe.warmup, cfg.recipe.schedule) == (0.02, "linear")
    assert (cfg.recipe.steps, cfg.recipe.batch_size) == (3000, 128)
    # the paper's perturbation times: 0, 0.1%, 0.5%, 2%, 10% and 50% of T
    assert cfg.perturbation_steps() == [0, 3, 15, 60, 300, 1500]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"recipe": {"lrr": 0.1}}, "unknown config key 'recipe.lrr'"),
        ({"bogus": 1}, "unknown config key 'bogus'"),
        ({"recipe": {"lr": "fast"}}, "recipe.lr"),
        ({"recipe": {"lr": -0.1}}, "recipe.lr"),
        ({"recipe": {"steps": 0}}, "recipe.steps"),
        ({"recipe": {"optimizer": "lamb"}}, "recipe.optimizer"),
        ({"perturb": {"sigmas": [-1e-3]}}, "perturb.sigmas must be positive"),
        ({"perturb": {"sigmas": []}}, "perturb.sigmas is empty"),
        ({"perturb": {"times": [1.5]}}, "perturb.times are fractions of T"),
        ({"perturb": {"steps": [5000]}}, "perturb.steps contains 5000"),
        ({"perturb": {"kinds": ["uniform"]}}, "perturb.kinds"),
        ({"perturb": {"fractions": [0.0]}}, "perturb.fractions"),
        ({"perturb": {"times": [], "steps": []}}, "no perturbation time"),
        ({"seeds": []}, "seeds is empty"),
        ({"model": {"name": "resnet", "depth": 10}}, "6n+2"),
        ({"model": {"name": "transformer"}}, "model.name"),
        ({"data": {"name": "imagenet"}}, "data.name"),
        ({"runtime": {"mode": "jit"}}, "runtime.mode"),
        ({"name": "../../x"}, "name '../../x' must be one folder name"),
        ({"name": "a/b/c"}, "must be one folder name"),
        ({"name": ""}, "must be one folder name"),
        ({"perturb": {"times": [0.0, 0.5], "sigmas_at": {0.3: [1e-3]}}},
         "perturb.sigmas_at gives sizes for t = 0.3, which is not one of perturb.times (0, 0.5)"),
        ({"perturb": {"sigmas_at": {"early": [1e-3]}}}, "the key 'early' is not a time"),
        ({"perturb": {"sigmas_at": {0.0: []}}}, "perturb.sigmas_at gives t = 0 no sizes"),
        ({"perturb": {"sigmas_at": {0.5: [0.0]}}},
         "perturb.sigmas_at at t = 0.5: sizes must be positive and finite"),
        ({"perturb": {"sigmas_at": {0.0: [1e-3]}}, "threshold": {}},
         "butterfly threshold searches the sizes itself"),
        ({"perturb": {"layers": [" "]}}, "perturb.layers holds an empty pattern"),
    ],
)
def test_bad_values_name_the_field(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build_config(raw)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_overrides_parse_yaml_values() -> None:
    cfg = build_config(
        {},
        [
            "recipe.lr=1e-3",
            "perturb.sigmas=[1e-4, 0.5]",
            "seeds=[3]",
            "runtime.checkpoints=false",
            "model.name=cnn",
        ],
    )
    assert cfg.recipe.lr == pytest.approx(1e-3)
    assert cfg.perturb.sigmas == [1e-4, 0.5]
    assert cfg.seeds == [3]
    assert cfg.runtime.checkpoints is False
    assert cfg.model.name == "cnn"
    with pytest.raises(ConfigError, match="key=value"):
        build_config({}, ["recipe.lr"])


def test_yaml_file_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("recipe:\n  steps: 100\n  lr: 5e-2\nperturb:\n  sigmas: [1e-3]\n")
    cfg = load_config(p, ["recipe.steps=200"])
    assert cfg.recipe.steps == 200 and cfg.recipe.lr == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_cli_exits_2_with_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--set", "perturb.sigmas=[-1]", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("butterfly: error: perturb.sigmas must be positive")
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists(), "nothing may be written before validation passes"
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2


LEAN = {"weight_matching": False, "activation_matching": False, "proxy_fractions": [], "cka": False,
        "trajectory_points": 0}  # fmt: skip


def test_a_size_grid_per_time_sets_each_population(tmp_path: Path) -> None:
    """perturb.sigmas_at: the members of the population at each t, the units of the plan, the
    rows of the run and the minimum steps all follow the grid of that t."""
    from butterfly.experiment.members import population_members
    from butterfly.sweep.plan import minimum_steps, plan
    from conftest import tiny_config

    grid = {"times": [0.0, 0.2, 0.5], "sigmas": [1e-3, 1e-1],
            "sigmas_at": {0.0: [1e-5, 1e-4, 1e-3], 0.5: [1.0]}}  # fmt: skip
    cfg = tiny_config(perturb=grid, eval=LEAN)
    assert cfg.perturbation_steps() == [0, 12, 30]
    assert [cfg.sigmas_at_step(t) for t in (0, 12, 30)] == [[1e-5, 1e-4, 1e-3], [1e-3, 1e-1], [1.0]]
    names = {t: [m.name for m in population_members(cfg, t)] for t in (0, 12, 30)}
    assert names[0] == ["original", "control", "batch-s1e-05-f1-d0", "batch-s0.0001-f1-d0",
                        "batch-s0.001-f1-d0", "gaussian-s1e-05-f1-d0", "gaussian-s0.0001-f1-d0",
                        "gaussian-s0.001-f1-d0"]  # fmt: skip
    assert names[12][2:] == ["batch-s0.001-f1-d0", "batch-s0.1-f1-d0", "gaussian-s0.001-f1-d0",
                             "gaussian-s0.1-f1-d0"]  # fmt: skip
    assert names[30] == ["original", "control", "batch-s1-f1-d0", "gaussian-s1-f1-d0"]
    assert [len(u.members) for u in plan(cfg)] == [8, 6, 4]
    assert minimum_steps(cfg) == 60 + (60 + 6 * 60) + (48 + 4 * 48) + (30 + 2 * 30)
    # the grid survives the run folder's config (JSON keys are text) and YAML
    assert build_config(cfg.to_dict()) == cfg
    (tmp_path / "c.yaml").write_text("perturb:\n  times: [0.0, 0.5]\n  sigmas_at: {0.5: 2.0}\n")
    assert load_config(tmp_path / "c.yaml").perturb.sigmas_at == {0.5: [2.0]}
    df = run_sweep(cfg, tmp_path / "run", quiet=True).results
    kids = df[df.control == 0]
    got = {t: sorted(set(g.sigma)) for t, g in kids.groupby("t_frac")}
    assert got == {0.0: [1e-5, 1e-4, 1e-3], 0.2: [1e-3, 1e-1], 0.5: [1.0]}
    assert (kids.groupby(["t_frac", "kind"]).size() == [3, 3, 2, 2, 1, 1]).all()
    assert (df[df.control == 1].l2 == 0.0).all() and len(df[df.control == 1]) == 3


def test_cli_refuses_a_size_grid_for_a_time_not_perturbed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--set", "perturb.sigmas_at={0.3: [1e-3]}", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(
        "butterfly: error: perturb.sigmas_at gives sizes for t = 0.3, which is not one of "
        "perturb.times (0, 0.001, 0.005, 0.02, 0.1, 0.5): each key must be a perturbation time "
        "listed in perturb.times"
    )
    assert not (tmp_path / "r").exists()
