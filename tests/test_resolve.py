"""A run is resolved once (experiment/resolve.py): the derived values, the checks and their cost,
and the facts that have one owner."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import butterfly
import butterfly.experiment.resolve as resolve_mod
from butterfly.config import ConfigError, RunConfig, build_config
from butterfly.experiment.resolve import Resolved, resolve, tokenizer_for
from butterfly.experiment.setup import environment, make_setup
from butterfly.models.params import mean_square
from butterfly.sweep import Execution, SweepOutcome
from conftest import tiny_config


def test_a_plain_sweeps_checks_load_the_data_once_and_build_the_model_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads, builds = [], []
    real_load, real_build = resolve_mod.load_dataset, resolve_mod.build_model
    monkeypatch.setattr(resolve_mod, "load_dataset",
                        lambda *a, **k: loads.append(a) or real_load(*a, **k))  # fmt: skip
    monkeypatch.setattr(resolve_mod, "build_model",
                        lambda *a, **k: builds.append(a) or real_build(*a, **k))  # fmt: skip
    cfg = tiny_config(data={"seed": 12345})  # a data set no other test has loaded
    resolved = resolve(cfg)
    assert len(loads) == 1 and len(builds) == 1
    # the seeds' setups reuse the loaded data set (the model is each seed's own)
    make_setup(resolved, 0)
    resolve(cfg)
    assert len(loads) == 1


def test_resolving_settles_epochs_task_device_and_tokenizer_and_validators_never_write(
    tmp_path: Path,
) -> None:
    raw = {"data": {"name": "arithmetic", "max_length": 48},
           "model": {"name": "hf", "path": str(tmp_path)},
           "recipe": {"epochs": 2.0, "batch_size": 50}}  # fmt: skip
    cfg = build_config(raw)
    assert cfg.model.task == "auto" and cfg.recipe.epochs == 2.0  # validated, not rewritten
    settled, notes = resolve_mod.settled(cfg, n_train=1000, n_pretrain=None)
    assert settled.model.task == "causal_lm" and settled.recipe.steps == 40
    assert settled.recipe.epochs is None
    assert notes == ["recipe.epochs = 2 at batch 50: 40 steps"]
    assert cfg.model.task == "auto"  # the given config is untouched
    # the one tokenizer rule (comparison.py uses it too): data's, the hf model's, else bytes
    gpt = build_config({"data": {"name": "arithmetic"}, "model": {"name": "gpt", "heads": 2,
                                                                   "width": 8}})  # fmt: skip
    assert tokenizer_for(gpt.data, "gpt", None, None) == "bytes"
    assert tokenizer_for(cfg.data, "hf", str(tmp_path), None) == str(tmp_path)
    assert tokenizer_for(tiny_config().data, "mlp", None, None) is None
    resolved = resolve(tiny_config(runtime={"device": "auto"}))
    assert resolved.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(resolved, Resolved) and resolved.n_train == 256


def test_own_initialisation_takes_eq6s_variance_from_theta0_on_a_builtin_too() -> None:
    """``model.init: own`` keeps torch's default initialisation of the built-in MLP, whose
    weights have mean square 1/(3 fan_in), six times below He's 2/fan_in: Eq. 6 must use
    what θ0 is, as the field's description says."""
    own = make_setup(resolve(tiny_config(model={"init": "own"}), check=False), 0)
    he = make_setup(resolve(tiny_config(), check=False), 0)
    w = "hidden.0.weight"
    fan_in = own.init[w].shape[1]
    assert own.info[w].init_var == pytest.approx(mean_square(own.init[w]), rel=1e-12)
    assert own.info[w].init_var == pytest.approx(1 / (3 * fan_in), rel=0.25)
    assert he.info[w].init_var == pytest.approx(2 / fan_in, rel=1e-12)
    assert he.info[w].init_var / own.info[w].init_var == pytest.approx(6, rel=0.25)
    # the model's own initialisation is drawn from the seed, whatever ran before in the process
    torch.randn(1000)
    again = make_setup(resolve(tiny_config(model={"init": "own"}), check=False), 0)
    other = make_setup(resolve(tiny_config(model={"init": "own"}), check=False), 1)
    assert torch.equal(again.init[w], own.init[w]) and not torch.equal(other.init[w], own.init[w])
    # butterfly.perturb follows the same rule: a perturbation of size 1 has ‖ε‖² = Σ variances
    net = own.model
    child = butterfly.perturb(net, 1.0, init="own")
    names = [n for n, i in own.info.items() if i.kind == "weight"]
    eps2 = sum(float((dict(child.named_parameters())[n] - own.init[n]).double().square().sum())
               for n in names)  # fmt: skip
    want = sum(mean_square(own.init[n]) * own.init[n].numel() for n in names)
    assert eps2 == pytest.approx(want, rel=1e-6)


def test_every_run_records_butterflys_version_and_commit(tmp_path: Path) -> None:
    env = environment(resolve(tiny_config(), check=False))
    assert env["butterfly"] == butterfly.__version__
    if (Path(butterfly.__file__).resolve().parents[2] / ".git").exists():
        assert len(env["butterfly_commit"].removesuffix("+dirty")) == 40


def test_every_config_field_has_one_line_of_meaning() -> None:
    from pydantic import BaseModel

    def sections(model: type[BaseModel], prefix: str = "") -> list[str]:
        missing = []
        for name, f in model.model_fields.items():
            if not (f.description and "\n" not in f.description):
                missing.append(prefix + name)
            for a in (f.annotation, *getattr(f.annotation, "__args__", ())):
                if isinstance(a, type) and issubclass(a, BaseModel):
                    missing += sections(a, f"{prefix}{name}.")
        return missing

    assert sections(RunConfig) == []


def test_execution_and_outcome_are_values_given_by_keyword() -> None:
    with pytest.raises(ConfigError, match="--workers must be >= 0"):
        Execution(workers=-1)
    assert Execution().executor == "local" and not Execution().force_new
    with pytest.raises(TypeError):
        SweepOutcome(Path("x"), None, 0.0, 0, 0, 0, 0, True)  # type: ignore[misc]


def test_threshold_metric_and_batch_checks_are_resolved_before_anything_is_written(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"threshold\.metric 'nope' is not a result column"):
        resolve(tiny_config(threshold={"metric": "nope"}))
    with pytest.raises(ConfigError, match=r"recipe.batch_size = 999 exceeds the 256"):
        resolve(tiny_config(recipe={"batch_size": 999}))
    assert not any(tmp_path.iterdir())
    assert math.isfinite(resolve(tiny_config()).n_train)
