"""The first hour with butterfly: typos get a suggestion, the config can be seen and copied out,
the CLI says its version and shows examples, optional extras are named when missing."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

import butterfly
from butterfly.cli import main
from butterfly.config import RunConfig, load_config
from butterfly.experiment.rows import names
from conftest import tiny_config

ROOT = Path(__file__).parent.parent

TYPOS: list[tuple[list[str], str]] = [
    (["run", "--set", "recipe.stpes=300"], "(did you mean recipe.steps?)"),
    (["run", "--set", "seed=[0]"], "(did you mean seeds?)"),
    (["run", "--set", "perturb.kind=[batch]"], "(did you mean perturb.kinds?)"),
    (["run", "--set", "eval.weight_match=false"], "(did you mean eval.weight_matching?)"),
    (["run", "--set", "recipe.optimizer=adamww"], "(did you mean adamw?)"),
    (["run", "--set", "model.name=resnt"], "(did you mean resnet?)"),
    (["run", "--set", "data.name=mnist1"], "(did you mean mnist1d?)"),
    (["run", "--set", "perturb.mask=weight"], "(did you mean weights?)"),
    (["run", "--set", "runtime.mode=batch"], "(did you mean batched?)"),
    (["run", "table1-standrad"], "(did you mean table1-standard?); `butterfly presets` lists"),
    (["presets", "fig11-fractoin", "--show"], "(did you mean fig11-fraction?)"),
    (["run", "--set", "recipe.steps", "300"], "(did you mean --set recipe.steps=300?)"),
    (["config", "--set", "recipe.warmpu=0.1"], "(did you mean recipe.warmup?)"),
]


@pytest.mark.parametrize(("argv", "hint"), TYPOS, ids=[" ".join(a) for a, _ in TYPOS])
def test_a_typo_gets_the_correction_in_one_sentence(
    argv: list[str], hint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main([*argv, "--out", str(out)] if argv[0] == "run" else argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and hint in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_a_scalar_where_a_list_is_meant_is_a_list_of_one() -> None:
    cfg = load_config(None, ["seeds=0", "perturb.sigmas=1e-3", "perturb.kinds=gaussian"])
    assert cfg.seeds == [0] and cfg.perturb.sigmas == [1e-3] and cfg.perturb.kinds == ["gaussian"]


def test_a_changed_config_names_the_way_out(tmp_path: Path) -> None:
    from butterfly.config import ConfigError
    from butterfly.sweep import run_sweep

    run_sweep(tiny_config(), tmp_path / "run", quiet=True)
    with pytest.raises(ConfigError, match=r"changed: recipe\.lr\).*--force-new"):
        run_sweep(tiny_config(recipe={"lr": 0.05}), tmp_path / "run", quiet=True)


def test_version_and_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"butterfly {butterfly.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for cmd in ("run", "config", "presets", "report", "status", "repair", "compare"):
        assert cmd in text
    for cmd in ("run", "config", "presets", "report", "status", "repair", "compare"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "examples:\n  butterfly " + cmd in capsys.readouterr().out, cmd


def test_butterfly_config_prints_every_key_and_runs_back_bit_for_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text) == RunConfig().to_dict()  # the default sweep, every key
    # a sweep's config printed, saved and run again gives the same numbers, bit for bit
    small = tiny_config(perturb={"times": [0.0, 0.5]})
    base = tmp_path / "small.yaml"
    base.write_text(yaml.safe_dump({"name": "small", "data": small.data.model_dump(),
                                    "recipe": {"steps": 60, "batch_size": 32},
                                    "model": {"width": 16}, "seeds": [0],
                                    "perturb": {"times": [0.0, 0.5], "sigmas": [1e-3, 1e-1]}}))  # fmt: skip
    assert main(["config", str(base)]) == 0
    full = tmp_path / "full.yaml"
    full.write_text(capsys.readouterr().out)
    assert main(["run", str(base), "--out", str(tmp_path / "a"), "--quiet", "--workers", "1"]) == 0
    assert main(["run", str(full), "--out", str(tmp_path / "b"), "--quiet", "--workers", "1"]) == 0
    capsys.readouterr()
    cols = [c for c in names("results") if c != "unit_wall_s"]
    a = pd.read_csv(tmp_path / "a" / "results.csv")[cols]
    b = pd.read_csv(tmp_path / "b" / "results.csv")[cols]
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_a_preset_copied_out_is_the_same_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["presets", "table1-adamw", "--show"]) == 0
    mine = tmp_path / "mine.yaml"
    mine.write_text(capsys.readouterr().out)
    for scale in ("cpu", "full"):
        copied = load_config(mine, scale=scale)
        original = load_config("table1-adamw", scale=scale)
        assert copied.model_copy(update={"name": original.name}) == original
    assert "\nextends:" not in mine.read_text()  # a standalone, editable file
    assert main(["config", "table1-adamw", "--scale", "full"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["recipe"]["optimizer"] == "adamw"


def test_the_main_job_installs_no_heavy_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for heavy in ("ray", "transformers", "scikit-learn", "pytest"):
        assert heavy not in core, heavy
    extras = project["optional-dependencies"]
    assert any("ray" in d for d in extras["ray"]) and any("transformers" in d for d in extras["hf"])
    makefile = (ROOT / "Makefile").read_text()
    run_target = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "$(CORE)" in run_target and "$(FULL)" not in run_target


def test_a_missing_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    out = tmp_path / "o"
    assert main(["run", "--executor", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--executor ray needs Ray: pip install 'butterfly[ray]'" in err and not out.exists()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["run", "--set", "data.name=digits", "--out", str(out)]) == 2
    assert "pip install 'butterfly[digits]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["run", "--set", "data.name=sentiment", "--set", "model.name=hf",
                 "--set", "model.path=minilm", "--out", str(out)]) == 2  # fmt: skip
    assert "pip install 'butterfly[hf]'" in capsys.readouterr().err and not out.exists()
