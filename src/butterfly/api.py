"""The Python API: the same sweeps as the command line, on built-in or your own models and data.

>>> import butterfly
>>> run = butterfly.run(overrides=["seeds=[0]"], out="runs/quick")        # doctest: +SKIP
>>> exp = butterfly.Experiment(model=MyNet, data=(x, y, x_test, y_test),   # doctest: +SKIP
...                            recipe={"steps": 2000}, perturb={"sigmas": [1e-3, 1e-2]})
>>> run = exp.run(out="runs/mine")                                         # doctest: +SKIP
>>> run.results, run.report, run.files()                                   # doctest: +SKIP
"""

from __future__ import annotations

import re
import sys
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from butterfly.config import STORED, ConfigError, RunConfig, build_config, load_raw
from butterfly.data import DataError, Dataset, as_dataset
from butterfly.data.user import remember
from butterfly.imports import name_of
from butterfly.sweep import DeterminismError, Execution, SweepOutcome
from butterfly.sweep.pipelines import run_pipeline
from butterfly.sweep.rundir import store_path
from butterfly.sweep.store import Store


def interactive() -> bool:
    """A terminal or a notebook is watching: show progress."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


@dataclass
class Run:
    """A finished (or resumed) run: its folder, its results, whether every sigma = 0 control
    was exactly zero, and its report."""

    dir: Path
    results: pd.DataFrame
    control_ok: bool
    report: Path | None
    wall_s: float
    steps: int
    units_run: int
    units_skipped: int

    @classmethod
    def of(cls, outcome: SweepOutcome, report: Path | None) -> Run:
        return cls(dir=outcome.run_dir, results=outcome.results, control_ok=outcome.control_ok,
                   report=report, wall_s=outcome.wall_s, steps=outcome.steps,
                   units_run=outcome.units_run, units_skipped=outcome.units_skipped)  # fmt: skip

    def trajectories(self) -> pd.DataFrame:
        """The trajectories table (members' distances and barriers during training)."""
        with Store(store_path(self.dir)) as s:
            return s.trajectories()

    def files(self) -> list[Path]:
        """Every file of the run folder, sorted (checkpoints, store, report, figures)."""
        return sorted(p for p in self.dir.rglob("*") if p.is_file() and p.name != ".lock")

    def open_report(self) -> bool:
        """Open report.html in the default web browser."""
        if self.report is None:
            raise FileNotFoundError(f"{self.dir} has no report: run butterfly report {self.dir}")
        return webbrowser.open(self.report.resolve().as_uri())

    def __repr__(self) -> str:
        check = "all sigma = 0 controls exactly 0" if self.control_ok else "DETERMINISM FAILURE"
        return (f"Run({str(self.dir)!r}: {len(self.results)} rows, {check}; "
                f"report {self.report})")  # fmt: skip

    def _repr_html_(self) -> str:
        import html

        link = f'<a href="{self.report.as_uri()}">report</a>' if self.report else "no report"
        check = "every σ = 0 control exactly 0" if self.control_ok else "<b>DETERMINISM FAILURE</b>"
        return (f"<p>butterfly run <code>{html.escape(str(self.dir))}</code>: "
                f"{len(self.results)} rows, {check}; {link}</p>")  # fmt: skip


# where a config takes an import path, Python takes the object itself
NAMED = {"model": ("name",), "data": ("name",), "recipe": ("optimizer", "schedule", "loss")}


def named(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with every Python object where the config takes an import path (a model class,
    an optimizer class, a schedule or loss function) replaced by its name: its import path, or
    a name registered in this process (then the run stays in this process; see README)."""
    out = dict(raw)
    for section, keys in NAMED.items():
        if isinstance(out.get(section), Mapping):
            sec = dict(out[section])
            for key in keys:
                if key in sec and not isinstance(sec[key], str) and callable(sec[key]):
                    sec[key] = name_of(sec[key])
            out[section] = sec
    return out


def resolve_config(
    config: RunConfig | dict[str, Any] | str | Path | None = None,
    overrides: list[str] | None = None,
    scale: str = "cpu",
) -> RunConfig:
    if isinstance(config, RunConfig):
        return build_config(config.to_dict(), overrides) if overrides else config
    if isinstance(config, dict):
        return build_config(named(config), overrides)
    return build_config(load_raw(config, scale), overrides)


def _finish(cfg: RunConfig, out: str | Path | None, workers: int | None, quiet: bool | None,
            check: bool, report: bool, **kwargs: Any) -> Run:  # fmt: skip
    from butterfly.report import build_report  # matplotlib: only when a report is made

    quiet = not interactive() if quiet is None else quiet
    execution = Execution(workers=workers, quiet=quiet, progress=not quiet and interactive(),
                          **kwargs)  # fmt: skip
    outcome = run_pipeline(cfg, Path(out) if out else Path("runs") / cfg.name, execution)
    page = build_report([outcome.run_dir]) if report else None
    if check and not outcome.control_ok:
        raise DeterminismError(f"the sigma = 0 control is not exactly zero in {outcome.run_dir}")
    return Run.of(outcome, page)


def run(
    config: RunConfig | dict[str, Any] | str | Path | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    workers: int | None = None,
    quiet: bool | None = None,
    check: bool = True,
    scale: str = "cpu",
    report: bool = True,
) -> Run:
    """Run (or resume) a sweep, write its report, and return the :class:`Run`.

    ``config`` is a :class:`RunConfig`, a dict of the YAML keys, a YAML path or preset name
    (``scale`` picks a preset's cpu or full scale), or None for the default sweep;
    ``overrides`` are ``"key=value"`` strings like ``--set``; ``out`` defaults to
    ``runs/<name>`` as on the command line. Progress is shown when a terminal or notebook is
    watching (``quiet`` overrides). Raises :class:`~butterfly.sweep.DeterminismError` if a
    sigma = 0 control is not exactly zero (``check=False`` returns the results anyway).
    """
    return _finish(resolve_config(config, overrides, scale), out, workers, quiet, check, report)


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:100]
    return name or "experiment"


class Experiment:
    """A sweep of your own model, data and loss, with every guarantee of the built-ins:
    step-indexed batches, a sigma = 0 control that must end exactly 0, populations trained as
    one, worker processes, resume, the store and the report.

    * ``model``: an ``nn.Module`` subclass or a factory returning a module (called with
      ``model_kwargs`` and whichever of ``seed``, ``input_shape``, ``n_classes`` and ``data``,
      the training tensors ``(x, y)``, it takes), a
      built-in name (``"mlp"``) or an import path (``"package.module:make"``).
    * ``data``: a butterfly ``Dataset`` (``butterfly.data.from_tensors``), a tuple
      ``(x_train, y_train, x_test, y_test)`` or a mapping of those, a pair of map-style
      ``torch.utils.data.Dataset`` objects of fixed-size (input, target) examples, a loader
      function or import path, or a built-in name. Data given as tensors is written once into
      the run folder with a content fingerprint in the config.
    * ``loss_fn(model, batch) -> scalar``, with ``batch = (inputs, targets)`` (default:
      cross-entropy on class labels).
    * ``recipe``, ``perturb``, ``eval``, ``runtime``, ``seeds``, ``name``: the config sections
      of the same names (README, "Configuration"), on top of ``config`` (a preset name, YAML
      path or dict; ``scale`` picks a preset's scale).

    Worker processes find your model, loader and loss by import path: define them in a module
    (or at the top level of the script you run, under ``if __name__ == "__main__":``). Ones
    defined in a notebook or inside a function run in this process.
    """

    def __init__(
        self,
        model: type[nn.Module] | Callable[..., nn.Module] | str | Mapping[str, Any] | None = None,
        data: Any = None,
        *,
        loss_fn: Callable[..., torch.Tensor] | str | None = None,
        recipe: Mapping[str, Any] | None = None,
        perturb: Mapping[str, Any] | None = None,
        eval: Mapping[str, Any] | None = None,
        runtime: Mapping[str, Any] | None = None,
        seeds: Sequence[int] | None = None,
        name: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        config: RunConfig | dict[str, Any] | str | Path | None = None,
        scale: str = "cpu",
        overrides: list[str] | None = None,
    ):
        base = resolve_config(config, None, scale).to_dict() if config is not None else {}
        raw: dict[str, Any] = dict(base)
        for section, value in (("recipe", recipe), ("perturb", perturb), ("eval", eval),
                               ("runtime", runtime)):  # fmt: skip
            if value is not None:
                raw[section] = {**raw.get(section, {}), **dict(value)}
        if seeds is not None:
            raw["seeds"] = list(seeds)
        model_section = dict(raw.get("model", {}))
        if model is not None:
            model_section.update(self._model(model))
        if model_kwargs is not None:
            model_section["kwargs"] = dict(model_kwargs)
        raw["model"] = model_section
        if data is not None:
            raw["data"] = {**raw.get("data", {}), **self._data(data)}
        if loss_fn is not None:
            raw.setdefault("recipe", {})
            raw["recipe"] = {**raw["recipe"], "loss": loss_fn if isinstance(loss_fn, str)
                             else name_of(loss_fn)}  # fmt: skip
        if name is not None:
            raw["name"] = name
        elif config is None:
            label = model_section.get("name", "experiment").split(":")[-1].split(".")[-1]
            raw["name"] = _safe_name(label.lower())
        self.config = build_config(named(raw), overrides)

    @staticmethod
    def _model(model: Any) -> dict[str, Any]:
        if isinstance(model, str):
            return {"name": model}
        if isinstance(model, Mapping):
            return dict(model)
        if isinstance(model, nn.Module):
            raise ConfigError(
                "model= takes the class or a factory, not a module instance (every seed draws "
                f"its own θ0): pass {type(model).__name__} or lambda seed: {type(model).__name__}(...)"
            )
        if callable(model):
            return {"name": name_of(model)}
        raise ConfigError(f"model= must be a class, a factory or a name; got {type(model).__name__}")

    @staticmethod
    def _data(data: Any) -> dict[str, Any]:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, Mapping) and "name" in data:
            return dict(data)
        if callable(data) and not isinstance(data, Dataset):
            return {"name": name_of(data)}
        try:
            ds = as_dataset(data)
        except DataError as err:
            raise ConfigError(str(err)) from None
        return {"name": STORED, "fingerprint": remember(ds), "path": "data.safetensors"}

    def run(
        self,
        out: str | Path | None = None,
        workers: int | None = None,
        quiet: bool | None = None,
        executor: str = "local",
        address: str | None = None,
        force_new: bool = False,
        check: bool = True,
        report: bool = True,
    ) -> Run:
        """Run (or resume) the sweep in ``out`` (default ``runs/<name>``); see :func:`run`."""
        return _finish(self.config, out, workers, quiet, check, report, executor=executor,
                       address=address, force_new=force_new)  # fmt: skip

    def __repr__(self) -> str:
        c = self.config
        return (f"Experiment(name={c.name!r}, model={c.model.name!r}, data={c.data.name!r}, "
                f"seeds={c.seeds})")  # fmt: skip
