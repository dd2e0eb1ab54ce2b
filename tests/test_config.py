from __future__ import annotations

from pathlib import Path

import pytest

from butterfly.cli import main
from butterfly.config import ConfigError, RunConfig, build_config, load_config


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
