"""Rules that join sections of a config: what one section's value forbids in another.

Each rule reads sections and raises ``ValueError`` with one sentence (pydantic reports it as
the config's error); none writes. Rules that need the data set or the model (a batch larger
than the data, a model that cannot take the inputs) are checked when a run is resolved
(:mod:`butterfly.experiment.resolve`), not here.
"""

from __future__ import annotations

from butterfly.config.sections import (
    DataConfig,
    ModelConfig,
    PerturbConfig,
    PretrainConfig,
    RecipeConfig,
    RuntimeConfig,
    ThresholdConfig,
)


def grid(seeds: list[int], p: PerturbConfig) -> None:
    """A grid with something in every axis, and no repeats."""
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds has duplicates: {seeds}")
    if not p.times and not p.steps:
        raise ValueError("perturb.times and perturb.steps are both empty: no perturbation time")
    if not p.sigmas:
        raise ValueError("perturb.sigmas is empty: give at least one perturbation size")
    if not p.kinds:
        raise ValueError("perturb.kinds is empty: choose from batch, gaussian, spawn, twin")
    if not p.fractions:
        raise ValueError("perturb.fractions is empty: use [1.0] to perturb every masked weight")


def data_and_model(data: DataConfig, model: ModelConfig, pretrain: PretrainConfig | None) -> None:
    """Text needs a model that reads tokens; a Hugging Face model needs weights to load."""
    if data.augment.active and data.text:
        raise ValueError(f"data.augment is for images; data.name = {data.name} is text")
    # text is token ids: a built-in model must read them; a user's model may read anything
    if data.causal and model.builtin and model.name not in ("hf", "gpt"):
        raise ValueError(
            f"data.name = {data.name} is text for a causal language model: it needs "
            "model.name = gpt, hf or your own model"
        )
    if data.text and not data.causal and model.builtin and model.name != "hf":
        raise ValueError(
            f"data.name = {data.name} is text (token ids): it needs model.name = hf or your "
            "own model"
        )
    if model.name == "hf" and model.init == "kaiming":
        raise ValueError(
            "model.init = kaiming is not for a Hugging Face model (its layers have their own "
            "scheme): use fresh for new weights drawn from its config with the seed, or "
            "auto/own to start from the saved weights"
        )
    if model.init == "fresh" and model.name != "hf":
        raise ValueError(
            f"model.init = fresh draws a Hugging Face model's weights from its config; "
            f"model.name = {model.name} takes auto, kaiming or own"
        )
    given = pretrain.folders if pretrain is not None else None
    if model.name == "hf" and not model.path and not given:
        raise ValueError(
            "model.path is required for model.name = hf: a saved model folder, a model id "
            "in the Hugging Face cache, or 'minilm'"
        )


def runtime_and_model(runtime: RuntimeConfig, model: ModelConfig) -> None:
    if runtime.mode == "batched" and model.name != "mlp":
        raise ValueError(
            f"runtime.mode = batched is for MLPs; model.name = {model.name} trains with "
            "auto, vmap or loop"
        )


def perturbation_times(p: PerturbConfig, recipe: RecipeConfig) -> None:
    """Times given in steps lie before the last step (once the steps are known)."""
    for s in p.steps:
        if recipe.epochs is None and s >= recipe.steps:
            raise ValueError(
                f"perturb.steps contains {s}, beyond the last step; it must be < recipe.steps "
                f"= {recipe.steps}"
            )


def threshold_kinds(threshold: ThresholdConfig | None, p: PerturbConfig) -> None:
    if threshold is not None and ("spawn" in p.kinds or "twin" in p.kinds):
        raise ValueError("threshold searches perturbation sizes: perturb.kinds cannot hold spawn "
                         "or twin")  # fmt: skip


def sizes_per_time(
    p: PerturbConfig, recipe: RecipeConfig, threshold: ThresholdConfig | None
) -> None:
    """``perturb.sigmas_at`` is a grid's: a threshold search proposes its own sizes; two times
    that fall on the same step (once the steps are known) must not ask for different sizes."""
    if not p.sigmas_at:
        return
    if threshold is not None:
        raise ValueError(
            "perturb.sigmas_at sets the sizes of a grid per time, but butterfly threshold "
            "searches the sizes itself: remove perturb.sigmas_at"
        )
    if recipe.epochs is not None:
        return
    T = recipe.steps
    seen: dict[int, tuple[float, list[float]]] = {}
    for f in p.times:
        step, sizes = round(f * T), p.sigmas_of(f)
        if step in seen and seen[step][1] != sizes:
            raise ValueError(
                f"perturb.times {seen[step][0]:g} and {f:g} are both step {step} of T = {T}, but "
                "perturb.sigmas_at gives them different sizes: drop one of the two times or give "
                "both the same sizes"
            )
        seen.setdefault(step, (f, sizes))
