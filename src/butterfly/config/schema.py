"""A whole run's config: the sections (:mod:`butterfly.config.sections`) and the rules that
join them (:mod:`butterfly.config.rules`), plus the two definitions every module reads from it:
which steps are perturbation times, and when a child perturbed at t stops training."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, field_validator, model_validator

from butterfly.config import rules
from butterfly.config.errors import shown
from butterfly.config.sections import (
    BUILTIN_OPTIMIZERS,
    BUILTIN_SCHEDULES,
    NAME_PATTERN,
    STORED,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PerturbConfig,
    PretrainConfig,
    RecipeConfig,
    RuntimeConfig,
    Strict,
    ThresholdConfig,
)


class RunConfig(Strict):
    """A whole sweep. ``seeds`` repeat the experiment: each seed fixes init, batches and noise."""

    name: str = Field(
        "default", description="the run's name; the default run folder is runs/<name>"
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2], description="each seed fixes θ0, batches and noise"
    )
    data: DataConfig = Field(default_factory=DataConfig, description="the training data")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    recipe: RecipeConfig = Field(default_factory=RecipeConfig, description="how it trains")
    perturb: PerturbConfig = Field(default_factory=PerturbConfig, description="the grid")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="what is measured")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="where it runs")
    pretrain: PretrainConfig | None = Field(
        None, description="pre-train first and fine-tune from several checkpoints (section 4.4)"
    )
    threshold: ThresholdConfig | None = Field(
        None, description="search the edge of stability instead of a grid (butterfly threshold)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_PATTERN.fullmatch(v):
            raise ValueError(
                f"name {shown(v)} must be one folder name: letters, digits, '.', '_' or '-', starting "
                "with a letter or digit, at most 100 characters"
            )
        return v

    @model_validator(mode="after")
    def _rules(self) -> RunConfig:
        rules.grid(self.seeds, self.perturb)
        rules.data_and_model(self.data, self.model, self.pretrain)
        rules.runtime_and_model(self.runtime, self.model)
        rules.threshold_kinds(self.threshold, self.perturb)
        rules.perturbation_times(self.perturb, self.recipe)
        rules.sizes_per_time(self.perturb, self.recipe, self.threshold)
        return self

    def child_end(self, t: int) -> int:
        """The step at which perturbed children perturbed at ``t`` stop training."""
        T = self.recipe.steps
        return t + T if self.perturb.child_steps == "T_after_t" else T

    def perturbation_steps(self) -> list[int]:
        """All perturbation times t in steps, sorted and unique."""
        T = self.recipe.steps
        ts = {round(f * T) for f in self.perturb.times} | set(self.perturb.steps)
        return sorted(t for t in ts if t < T)

    def sigmas_at_step(self, t: int) -> list[float]:
        """The sizes σ of the population perturbed at step ``t``: ``perturb.sigmas_at`` of the
        time in ``perturb.times`` that is step ``t`` (round(t_frac x T)), else
        ``perturb.sigmas``. A step of ``perturb.steps`` that is also such a time takes its
        sizes too (it is the same population)."""
        T = self.recipe.steps
        for f in self.perturb.times:
            if round(f * T) == t and f in self.perturb.sigmas_at:
                return self.perturb.sigmas_of(f)
        return list(self.perturb.sigmas)

    def code_named(self) -> list[tuple[str, str]]:
        """(key, name) of every object the config names outside butterfly: a model, data loader
        or loss by import path (or defined in this Python process). Running the config runs
        them; reading it does not."""
        named = [("model.name", self.model.name, self.model.builtin),
                 ("data.name", self.data.name, self.data.builtin or self.data.name == STORED),
                 ("recipe.loss", self.recipe.loss, self.recipe.loss == "cross_entropy"),
                 ("recipe.optimizer", self.recipe.optimizer,
                  self.recipe.optimizer in BUILTIN_OPTIMIZERS),
                 ("recipe.schedule", self.recipe.schedule,
                  self.recipe.schedule in BUILTIN_SCHEDULES)]  # fmt: skip
        return [(key, value) for key, value, ours in named if not ours]

    @property
    def needs_epochs(self) -> bool:
        """Whether ``recipe.epochs`` (or ``pretrain.recipe.epochs``) still has to become steps."""
        pre = self.pretrain is not None and self.pretrain.recipe.epochs is not None
        return self.recipe.epochs is not None or pre

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())
