"""The sections of a config, field by field: each field's default and one line of meaning.

Read it like a block of commented defaults: an empty config is the default sweep, the paper's
standard recipe (Table 1 'Standard': SGD with momentum, lr 0.1, 2% warm-up then linear decay)
and perturbation times (0, 0.1%, 0.5%, 2%, 10%, 50% of T) on a CPU stand-in (an MLP-64 on
MNIST-1D, T = 3000). A field's own checks live beside it; rules that join sections live in
:mod:`butterfly.config.rules`. Validators check and never write.
"""

from __future__ import annotations

import fnmatch
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from butterfly.config.errors import did_you_mean, shown
from butterfly.imports import LOCAL, is_import_path

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
INT64 = 2**63 - 1
MAX_STEPS = 100_000_000

BUILTIN_DATA = (
    "mnist1d", "digits", "synthetic", "cifar10", "cifar100", "mnist", "glue", "sentiment",
    "pairs", "gsm8k", "arithmetic",
)  # fmt: skip
CAUSAL_DATA = ("gsm8k", "arithmetic")  # question/answer text for causal language models
TEXT_DATA = ("glue", "sentiment", "pairs", *CAUSAL_DATA)
BUILTIN_MODELS = ("mlp", "cnn", "resnet", "resnet50", "vit", "gpt", "hf")
STORED = "stored"  # in-memory data given through Python, written once into the run folder


SEED = "{seed}"  # in a checkpoint's or folder's path: the seed of the run using it
PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def per_seed(path: str, seed: int) -> str:
    """``path`` with ``{seed}`` replaced by ``seed``: each seed's own checkpoint or folder
    (MultiBERT's ``multiberts-seed_{seed}-step_20k``)."""
    return path.replace(SEED, str(seed))


def seed_placeholder_only(path: str, where: str) -> str:
    """A path may hold ``{seed}`` and no other ``{...}`` (a misspelt ``{Seed}`` or ``{seeds}``
    would otherwise be read as part of the name)."""
    for m in PLACEHOLDER.findall(path):
        if m != SEED:
            raise ValueError(
                f"{where} {shown(path)} holds {m}: the one placeholder a path may hold is {SEED} "
                "(replaced by each seed, for a checkpoint or folder per seed)"
            )
    return path


def _bounded(v: Any, where: str) -> Any:
    if isinstance(v, int) and not isinstance(v, bool) and not -INT64 <= v <= INT64:
        raise ValueError(f"{where} = {v} does not fit in 64 bits")
    if isinstance(v, list):
        for x in v:
            _bounded(x, where)
    return v


class Strict(BaseModel):
    """Strict types: an integer field takes integers only (not booleans, floats or strings),
    every number must be finite, unknown keys are refused."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
    )

    @field_validator("*", mode="after")
    @classmethod
    def _fits(cls, v: Any, info: Any) -> Any:
        return _bounded(v, info.field_name)

    @model_validator(mode="before")
    @classmethod
    def _one_is_a_list_of_one(cls, data: Any) -> Any:
        """``seeds: 0`` means ``seeds: [0]``: a scalar where a list is expected is a list of one."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, f in cls.model_fields.items():
            v = out.get(name)
            if v is None or isinstance(v, (list, tuple, dict)):
                continue
            if typing.get_origin(f.annotation) is list or (
                typing.get_origin(f.annotation) in (typing.Union, types.UnionType)
                and any(typing.get_origin(a) is list for a in typing.get_args(f.annotation))
            ):
                out[name] = [v]
        return out


def _named(kind: str, v: str, builtin: tuple[str, ...]) -> str:
    if v in builtin or is_import_path(v) or v.startswith(LOCAL):
        return v
    raise ValueError(
        f"{kind}.name must be one of {', '.join(builtin)} or an import path "
        f"package.module:name; got {shown(v)}{did_you_mean(v, builtin)}"
    )


# ---- data -----------------------------------------------------------------------------------


class AugmentConfig(Strict):
    """Step-indexed augmentations of image batches (appendix A.2); all off by default."""

    flip: bool = Field(False, description="random horizontal flip")
    crop_padding: int = Field(0, ge=0, description="random crop after zero padding by this much")
    rotation: float = Field(0.0, ge=0, le=180, description="random rotation up to +-degrees")
    translate: int = Field(0, ge=0, description="random translation up to +-pixels")
    cutout: int = Field(0, ge=0, description="zero a random square of this size")

    @property
    def active(self) -> bool:
        return bool(
            self.flip or self.crop_padding or self.rotation or self.translate or self.cutout
        )


class DataConfig(Strict):
    """Which data set to train on. ``seed`` fixes how a generated data set is drawn.

    ``name`` is a built-in data set or the import path of the user's loader
    (``package.module:load``, called with ``kwargs``); ``stored`` is data given from Python,
    kept in the run folder with its content ``fingerprint``."""

    name: str = Field(
        "mnist1d",
        description="mnist1d | digits | synthetic | cifar10 | cifar100 | mnist | glue | sentiment "
        "| pairs | gsm8k | arithmetic | an import path package.module:load",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="user loader only: keyword arguments of the loader"
    )
    fingerprint: str | None = Field(
        None, description="stored data only: content hash of the tensors (set by butterfly)"
    )
    path: str | None = Field(
        None, description="folder of a file-based data set (cifar, mnist, glue, gsm8k)"
    )
    classes: list[int] | None = Field(
        None, description="keep only these classes, relabelled 0..k-1 in this order (task splits)"
    )
    tokenizer: str | None = Field(
        None, description="text only: tokenizer folder or alias (default: the hf model's path; "
        "'bytes', the built-in byte tokenizer, for gpt)"
    )
    max_length: int = Field(
        64, ge=2, description="text only: tokens per example (padded/truncated)"
    )
    max_train: int | None = Field(None, ge=2, description="use at most this many train examples")
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="image augmentations, the same for every member"
    )
    seed: int = Field(0, ge=0, description="seed of a generated data set (mnist1d, synthetic)")
    n_train: int = Field(4000, ge=2, description="synthetic only: training examples")
    n_test: int = Field(1000, ge=1, description="synthetic only: test examples")
    n_features: int = Field(20, ge=1, description="synthetic only: input dimension")
    n_classes: int = Field(10, ge=2, description="synthetic only: number of classes")

    @property
    def text(self) -> bool:
        return self.name in TEXT_DATA

    @property
    def causal(self) -> bool:
        """Question/answer text for a causal language model (next-token targets)."""
        return self.name in CAUSAL_DATA

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_DATA

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return v if v == STORED else _named("data", v, BUILTIN_DATA)

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) < 2 or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError(f"data.classes needs at least 2 distinct class indices >= 0; got {v}")
        return v


def keeps_own_init(init: str, builtin: bool) -> bool:
    """The one rule for whether a model keeps its own initialisation (``init = own``, or
    ``auto`` for a model butterfly did not write) rather than He-normal weights drawn from the
    seed. A model that keeps its own has Eq. 6 take each tensor's variance from θ0 itself
    (its mean square), not from He's 2/fan_in."""
    return init in ("own", "fresh") or (init == "auto" and not builtin)


# ---- model ----------------------------------------------------------------------------------


class ModelConfig(Strict):
    """Architecture. ``width`` is the hidden width (MLP, ViT) or base channel count (CNN,
    ResNet, ResNet-50); ``hf`` loads a Hugging Face classifier from ``path``; an import path
    ``package.module:make`` names the user's ``nn.Module`` class or factory (called with
    ``kwargs``, plus ``seed``, ``input_shape``, ``n_classes`` and ``data`` where it takes them)."""

    name: str = Field(
        "mlp",
        description="mlp | cnn | resnet | resnet50 | vit | gpt | hf | an import path "
        "package.module:make",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="user model only: keyword arguments of the factory"
    )
    init: Literal["auto", "kaiming", "own", "fresh"] = Field(
        "auto",
        description="kaiming: He-normal from the seed (built-ins and user models); own: keep "
        "the model's own initialisation (Eq. 6 then uses each tensor's mean square at θ0); "
        "fresh (hf): new weights drawn from the model's config by its own scheme with the "
        "seed, instead of the saved ones; auto: kaiming for built-ins, own otherwise",
    )
    width: int = Field(64, ge=1, description="hidden width (mlp, vit, gpt) or base channels")
    depth: int = Field(
        2, ge=1, description="hidden layers (mlp), conv layers (cnn), 6n+2 (resnet), blocks (vit, "
        "gpt)"
    )
    patch: int = Field(4, ge=1, description="vit only: patch size")
    heads: int = Field(3, ge=1, description="vit and gpt: attention heads")
    dropout: float = Field(0.0, ge=0, lt=1, description="vit and gpt: dropout rate")
    path: str | None = Field(
        None, description="hf only: local model folder ('{seed}' is replaced by the seed), "
        "cached hub id, or 'minilm' (bundled)"
    )
    task: Literal["auto", "classify", "causal_lm"] = Field(
        "auto", description="hf only: classify (sequence/image classifier) or causal_lm "
        "(AutoModelForCausalLM, next-token loss); auto: causal_lm for gsm8k/arithmetic data"
    )
    resize: list[int] | None = Field(
        None, description="images only: resize each batch to [height, width] (one number: "
        "square) before the network, bilinearly, e.g. 224 for a pre-trained ViT"
    )
    init_from: str | None = Field(
        None,
        description="start from this butterfly checkpoint ('{seed}' is replaced by the seed); "
        "the head is re-initialised",
    )

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_MODELS

    def for_seed(self, seed: int) -> ModelConfig:
        """The model of ``seed``: ``{seed}`` in ``path`` and ``init_from`` replaced by it."""
        update = {k: per_seed(v, seed) for k in ("path", "init_from")
                  if (v := getattr(self, k)) and SEED in v}  # fmt: skip
        return self.model_copy(update=update) if update else self

    @field_validator("path", "init_from")
    @classmethod
    def _placeholder(cls, v: str | None, info: Any) -> str | None:
        return v if v is None else seed_placeholder_only(v, f"model.{info.field_name}")

    @property
    def keeps_own_init(self) -> bool:
        """Whether θ0 is the model's own initialisation (see :func:`keeps_own_init`)."""
        return keeps_own_init(self.init, self.builtin)

    @field_validator("resize", mode="before")
    @classmethod
    def _resize(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v, v]
        if isinstance(v, list) and len(v) == 1:  # one size, read as a one-element list
            v = [v[0], v[0]]
        if v is not None and (
            not isinstance(v, list) or len(v) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096 for d in v)
        ):  # fmt: skip
            raise ValueError(
                f"model.resize must be one size or [height, width], whole numbers in [1, 4096]; "
                f"got {shown(v)}"
            )
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _named("model", v, BUILTIN_MODELS)

    @model_validator(mode="after")
    def _checks(self) -> ModelConfig:
        if self.name == "resnet" and (self.depth < 8 or (self.depth - 2) % 6 != 0):
            raise ValueError(
                f"model.depth must be 6n+2 (8, 14, 20, 32, ...) for a ResNet; got {self.depth}"
            )
        if self.name in ("vit", "gpt") and self.width % self.heads:
            raise ValueError(
                f"model.width = {self.width} must be divisible by model.heads = {self.heads}"
            )
        return self


# ---- recipe ---------------------------------------------------------------------------------


BUILTIN_OPTIMIZERS = ("sgd", "adamw", "adam", "lion", "muon")
BUILTIN_SCHEDULES = ("linear", "cosine", "constant", "step", "multistep", "wsd")
GROUP_KINDS = ("weights", "biases", "norm")


class GroupConfig(Strict):
    """A parameter group: the parameters it takes (name patterns and kinds) and what differs
    for them (learning rate, weight decay, the optimizer's own settings)."""

    params: list[str] = Field(
        default_factory=list, description="name patterns (fnmatch: 'embed.*', '*.bias')"
    )
    kinds: list[Literal["weights", "biases", "norm"]] = Field(
        default_factory=list, description="parameter kinds: weights, biases, norm (or both ways)"
    )
    lr_scale: float = Field(1.0, gt=0, description="the group's learning rate: recipe.lr x this")
    weight_decay: float | None = Field(None, ge=0, description="the group's weight decay")
    options: dict[str, Any] = Field(
        default_factory=dict, description="further optimizer settings of the group (momentum...)"
    )

    @model_validator(mode="after")
    def _something(self) -> GroupConfig:
        if not self.params and not self.kinds:
            raise ValueError("a recipe.groups entry needs params (name patterns) or kinds")
        return self


class RecipeConfig(Strict):
    """Optimizer and schedule, all as functions of the step so a run can resume anywhere."""

    optimizer: str = Field(
        "sgd", description="sgd | adamw | adam | lion | muon (orthogonalised momentum for "
        "matrices) | any torch.optim.Optimizer by import path (torch.optim:NAdam)"
    )
    optimizer_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="an optimizer by import path: its keyword arguments"
    )
    lr: float = Field(0.1, gt=0, description="peak learning rate, reached after the warm-up")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd, muon: momentum")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum (muon: always)")
    dampening: float = Field(0.0, ge=0, lt=1, description="sgd: dampening of the momentum")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), strict=False, description="adam, adamw, lion: the moments' decay rates"
    )
    eps: float = Field(1e-8, gt=0, description="adam, adamw: added to the denominator")
    weight_decay: float = Field(
        0.0, ge=0, description="sgd, adam: L2 added to the gradient; adamw, lion, muon: "
        "decoupled decay; an optimizer by import path: its weight_decay"
    )
    groups: list[GroupConfig] = Field(
        default_factory=list, description="parameter groups, e.g. no weight decay on biases and "
        "norms (each parameter in at most one; the rest: the recipe's settings)"
    )
    warmup: float = Field(0.02, ge=0, lt=1, description="warm-up length as a fraction of steps")
    schedule: str = Field(
        "linear", description="decay after the warm-up: linear, cosine (both to min_lr), "
        "constant, step (x gamma at each milestone), multistep, wsd (warm-up, stable, decay), or "
        "lr_factor(step, T) by import path"
    )
    min_lr: float = Field(0.0, ge=0, description="linear, cosine, wsd: the learning rate at T")
    milestones: list[float] = Field(
        default_factory=lambda: [0.5, 0.75],
        description="step, multistep: fractions of T where the rate is multiplied by gamma",
    )
    gamma: float = Field(0.1, gt=0, le=1, description="step, multistep: the factor")
    decay: float = Field(0.2, gt=0, le=1, description="wsd: the last fraction of T that decays")
    precision: Literal["float32", "bf16", "fp16"] = Field(
        "float32", description="training forward and backward under autocast (measured in "
        "float32)"
    )
    accumulation: int = Field(
        1, ge=1, le=4096, description="micro-batches per step (the step's batch split in k)"
    )
    steps: int = Field(
        3000, ge=1, le=MAX_STEPS, description=f"total training steps T (at most {MAX_STEPS:,})"
    )
    epochs: float | None = Field(
        None, gt=0, description="T in epochs instead: steps = ceil(epochs x training examples / "
        "batch_size), set when the run starts"
    )
    batch_size: int = Field(128, ge=1, description="examples per training step")
    grad_clip: float | None = Field(
        None, gt=0, description="clip each member's global gradient norm to this value"
    )
    loss: str = Field(
        "cross_entropy",
        description="cross_entropy, or the import path package.module:loss_fn of a function "
        "loss_fn(model, batch[, step]) -> scalar, batch = (inputs, targets)",
    )

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        if v in BUILTIN_OPTIMIZERS or is_import_path(v) or v.startswith(LOCAL):
            return v
        raise ValueError(
            f"recipe.optimizer must be one of {', '.join(BUILTIN_OPTIMIZERS)} or an import path "
            f"package.module:Optimizer; got {shown(v)}{did_you_mean(v, BUILTIN_OPTIMIZERS)}"
        )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if v in BUILTIN_SCHEDULES or is_import_path(v) or v.startswith(LOCAL):
            return v
        raise ValueError(
            f"recipe.schedule must be one of {', '.join(BUILTIN_SCHEDULES)} or an import path "
            f"package.module:lr_factor; got {shown(v)}{did_you_mean(v, BUILTIN_SCHEDULES)}"
        )

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[float]) -> list[float]:
        if any(not 0 < x < 1 for x in v) or sorted(v) != v:
            raise ValueError(f"recipe.milestones are increasing fractions of T in (0, 1); got {v}")
        return v

    @model_validator(mode="after")
    def _accumulation(self) -> RecipeConfig:
        if self.batch_size % self.accumulation:
            raise ValueError(
                f"recipe.accumulation = {self.accumulation} does not divide recipe.batch_size = "
                f"{self.batch_size}: each micro-batch must hold the same number of examples"
            )
        return self

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        if v == "cross_entropy" or is_import_path(v) or v.startswith(LOCAL):
            return v
        raise ValueError(
            f"recipe.loss must be cross_entropy or an import path package.module:loss_fn; got {shown(v)}"
        )

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("recipe.betas must both lie in [0, 1)")
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if self.epochs is not None:  # steps are not known yet: only epochs is the recipe's
            out.pop("steps", None)
        return out

    @model_validator(mode="after")
    def _epochs(self) -> RecipeConfig:
        if self.epochs is not None and "steps" in self.model_fields_set:
            raise ValueError(
                f"recipe.steps = {self.steps} and recipe.epochs = {self.epochs} are both set: "
                "give one (steps are derived from epochs when the run starts)"
            )
        return self


# ---- perturbation ---------------------------------------------------------------------------

Kind = Literal["batch", "gaussian", "spawn", "twin"]
Mask = Literal["weights", "weights+biases", "norm", "biases", "biases+norm", "all"]
MASK_KINDS: dict[str, tuple[str, ...]] = {  # the parameter kinds each perturb.mask takes
    "weights": ("weight",),
    "weights+biases": ("weight", "bias"),
    "biases": ("bias",),
    "norm": ("norm",),
    "biases+norm": ("bias", "norm"),
    "all": ("weight", "bias", "norm"),
}


def matching(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names that match one of the glob ``patterns`` (``fnmatch``, case-sensitive, as
    ``perturb.layers`` and ``recipe.groups`` read them), in their order; every name when there
    are no patterns."""
    if not patterns:
        return list(names)
    return [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]


class PerturbConfig(Strict):
    """The perturbation grid: times t, sizes sigma (per t with ``sigmas_at``), kinds, masks
    (kinds of parameters, name patterns ``layers``, fractions) (paper Eq. 2, 3, 6)."""

    times: list[float] = Field(
        default_factory=lambda: [0.0, 0.001, 0.005, 0.02, 0.1, 0.5],
        description="perturbation times as fractions of T, in [0, 1)",
    )
    steps: list[int] = Field(default_factory=list, description="perturbation times as steps")
    sigmas: list[float] = Field(
        default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1],
        description="perturbation sizes σ (the σ = 0 control is always added)",
    )
    kinds: list[Kind] = Field(
        default_factory=lambda: ["batch", "gaussian"],
        description="batch (a batch gradient, Eq. 2), gaussian (Eq. 3), spawn (no perturbation, "
        "an independent batch stream after t), twin (no perturbation, the same batches, trained "
        "by another code path: how far rounding alone carries a network, appendix C.2)",
    )
    mask: Mask = Field(
        "weights", description="which parameters are perturbed: weights, biases, norm, or sums"
    )
    fractions: list[float] = Field(
        default_factory=lambda: [1.0], description="fraction of the masked weights perturbed"
    )
    normalize: bool = Field(True, description="scale the masked direction by Eq. 6")
    directions: int = Field(1, ge=1, description="independent directions per (kind, sigma)")
    batch_size: int | None = Field(
        None, ge=1, description="batch perturbation: its batch size (default recipe.batch_size)"
    )
    scale: Literal["init", "sgd_noise"] = Field(
        "init",
        description="what sigma = 1 means: the init scale of Eq. 6, or the expected distance "
        "between two copies after one SGD step on independent batches at t (Figure 10 right)",
    )
    noise_pairs: int = Field(8, ge=1, description="sgd_noise: batch pairs averaged")
    child_steps: Literal["to_T", "T_after_t"] = Field(
        "to_T",
        description="children train to T (ICML), or T more steps after t (workshop, appendix A)",
    )
    lr_rewind: bool = Field(
        False, description="restart children's LR schedule at t (workshop appendix D)"
    )
    sigmas_at: dict[float, list[float]] = Field(
        default_factory=dict,
        description="sizes per perturbation time: {t: [σ, ...]} replaces perturb.sigmas at "
        "that t (each key one of perturb.times), e.g. smaller sizes early and larger late",
    )
    layers: list[str] = Field(
        default_factory=list,
        description="perturb only the parameters whose names match one of these patterns "
        "(fnmatch: 'blocks.0.*'), within perturb.mask; [] = every parameter perturb.mask takes",
    )

    def sigmas_of(self, t_frac: float | None) -> list[float]:
        """The sizes of the population at time fraction ``t_frac`` (None: perturb.sigmas)."""
        if t_frac is None:
            return list(self.sigmas)
        return list(self.sigmas_at.get(t_frac, self.sigmas))

    @field_validator("sigmas_at", mode="before")
    @classmethod
    def _sigmas_at_keys(cls, v: Any) -> Any:
        """Keys are times: numbers, or their text (a config read back from JSON, ``--set``)."""
        if not isinstance(v, dict):
            return v
        out: dict[float, Any] = {}
        for k, sizes in v.items():
            t: float | None = None
            if isinstance(k, (int, float)) and not isinstance(k, bool):
                t = float(k)
            elif isinstance(k, str):
                try:
                    t = float(k)
                except ValueError:
                    t = None
            if t is None or t != t or t in (float("inf"), float("-inf")):
                raise ValueError(
                    f"perturb.sigmas_at maps perturbation times (fractions of T, as in "
                    f"perturb.times) to lists of sizes; the key {shown(k)} is not a time"
                )
            if t in out:
                raise ValueError(f"perturb.sigmas_at gives t = {t:g} twice")
            out[t] = sizes if isinstance(sizes, list) else [sizes]
        return out

    @field_validator("sigmas_at")
    @classmethod
    def _sigmas_at(cls, v: dict[float, list[float]]) -> dict[float, list[float]]:
        for t, sizes in v.items():
            if not sizes:
                raise ValueError(
                    f"perturb.sigmas_at gives t = {t:g} no sizes: give at least one, or leave "
                    "the time out to use perturb.sigmas"
                )
            for x in sizes:
                if not x > 0 or x != x or x == float("inf"):
                    raise ValueError(
                        f"perturb.sigmas_at at t = {t:g}: sizes must be positive and finite; got "
                        f"{x} (the sigma = 0 control is always added)"
                    )
            if len(set(sizes)) != len(sizes):
                raise ValueError(f"perturb.sigmas_at at t = {t:g} has duplicate sizes: {sizes}")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[str]) -> list[str]:
        for pat in v:
            if not pat.strip():
                raise ValueError(
                    "perturb.layers holds an empty pattern: give parameter name patterns such "
                    "as 'blocks.0.*'"
                )
        if len(set(v)) != len(v):
            raise ValueError(f"perturb.layers has duplicate patterns: {v}")
        return v

    @model_validator(mode="after")
    def _sigmas_at_times(self) -> PerturbConfig:
        for t in self.sigmas_at:
            if t not in self.times:
                shown_times = ", ".join(f"{x:g}" for x in self.times) or "none"
                raise ValueError(
                    f"perturb.sigmas_at gives sizes for t = {t:g}, which is not one of "
                    f"perturb.times ({shown_times}): each key must be a perturbation time listed "
                    "in perturb.times"
                )
        return self

    @field_validator("times")
    @classmethod
    def _times(cls, v: list[float]) -> list[float]:
        for x in v:
            if not 0.0 <= x < 1.0:
                raise ValueError(f"perturb.times are fractions of T in [0, 1); got {x}")
        return v

    @field_validator("sigmas")
    @classmethod
    def _sigmas(cls, v: list[float]) -> list[float]:
        for x in v:
            if not x > 0 or x != x or x == float("inf"):
                raise ValueError(
                    f"perturb.sigmas must be positive and finite; got {x} "
                    "(the sigma = 0 control is always added)"
                )
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        for x in v:
            if not 0.0 < x <= 1.0:
                raise ValueError(f"perturb.fractions must lie in (0, 1]; got {x}")
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        for x in v:
            if x < 0:
                raise ValueError(f"perturb.steps must be >= 0; got {x}")
        return v


# ---- measurement ----------------------------------------------------------------------------


class EvalConfig(Strict):
    """How the end-of-training metrics are computed (paper section 3.4, appendix B.1)."""

    alphas: int = Field(11, ge=3, description="points on the linear path, endpoints included")
    max_train_examples: int | None = Field(
        None, ge=1, description="evaluate train loss on at most this many examples"
    )
    max_test_examples: int | None = Field(
        None, ge=1, description="evaluate test loss/error on at most this many examples"
    )
    batch_size: int = Field(2048, ge=1, description="examples per evaluation forward pass")
    batched_path: bool | None = Field(
        None,
        description="evaluate a path's points as one vectorised batch; None = only on CUDA "
        "(on CPU it measured 1.5x slower than point by point)",
    )
    weight_matching: bool = Field(True, description="barrier/L2 after weight matching")
    activation_matching: bool = Field(True, description="barrier after activation matching")
    cka: bool = Field(True, description="angular CKA of the last block's outputs")
    ensemble: bool = Field(True, description="test accuracy of the logit-averaged pair")
    cka_examples: int = Field(1000, ge=4, description="test inputs for CKA (m)")
    align_examples: int = Field(1000, ge=2, description="train inputs for activation matching")
    wm_max_iter: int = Field(100, ge=1, description="weight matching: passes at most")
    proxy_fractions: list[float] = Field(
        default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 1.0],
        description="random-permutation proxy: fractions of fixed points ([] = off)",
    )
    trajectory_barriers: bool = Field(
        True, description="also the train-loss barrier at each trajectory step (Figure 6)"
    )
    trajectory_points: int = Field(
        20, ge=0, description="log-spaced steps at which L2 is recorded during training (0: off)"
    )
    lyapunov: bool = Field(
        False,
        description="estimate the top Lyapunov exponent of the training map from each t to T "
        "and the linearised L2 prediction (Appendix B.4; SGD recipes)",
    )
    lyapunov_every: int = Field(10, ge=1, description="lyapunov: renormalise every k steps")
    running_stats: Literal["reestimate", "interpolate"] = Field(
        "reestimate",
        description="models with BatchNorm: each evaluated network's running statistics are "
        "re-estimated on training inputs (every point of a path, endpoints included), or "
        "(interpolate) the endpoints' own statistics are interpolated along the path",
    )
    running_stats_examples: int = Field(
        2048, ge=2, description="training inputs the running statistics are re-estimated on"
    )


# ---- where it runs --------------------------------------------------------------------------


SLURM_TIME = re.compile(
    r"(\d+)|(\d+):(\d+)|(\d+):(\d+):(\d+)|(\d+)-(\d+)|(\d+)-(\d+):(\d+)|(\d+)-(\d+):(\d+):(\d+)"
)


class SlurmConfig(Strict):
    """``--executor slurm``: how each array task is submitted (``sbatch``). Tasks run the units
    of the sweep and write each finished unit's rows into the run folder; only the driver that
    holds the folder's lock writes ``results.db``."""

    partition: str | None = Field(None, description="sbatch --partition (default: the cluster's)")
    account: str | None = Field(None, description="sbatch --account")
    qos: str | None = Field(None, description="sbatch --qos")
    time: str = Field(
        "1:00:00", description="time limit of each task, as sbatch reads it (MM, HH:MM:SS, "
        "D-HH:MM, ...)"
    )
    cpus_per_task: int = Field(1, ge=1, le=4096, description="sbatch --cpus-per-task")
    mem: str | None = Field(None, description="memory per task, as sbatch reads it (e.g. 8G)")
    gpus_per_task: int = Field(0, ge=0, le=64, description="GPUs per task (sbatch --gres=gpu:N)")
    extra: list[str] = Field(
        default_factory=list, description="further sbatch options, one per item (#SBATCH lines)"
    )
    setup: list[str] = Field(
        default_factory=list, description="shell lines each task runs first (module load ...)"
    )
    array_cap: int = Field(
        100, ge=1, le=100_000, description="at most this many array tasks queued at once "
        "(clusters cap a user's queued jobs)"
    )
    units_per_task: int = Field(
        1, ge=0, description="units one task runs before it ends (0: until none is left)"
    )
    max_attempts: int = Field(
        3, ge=1, le=100, description="a unit whose task is killed, times out or is pre-empted "
        "is tried again up to this many times in all, then recorded as failed"
    )
    poll: float = Field(5.0, gt=0, le=3600, description="seconds between looks at the queue")
    python: str | None = Field(
        None, description="the Python that runs butterfly on the compute nodes (default: this one)"
    )

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        if not SLURM_TIME.fullmatch(v.strip()):
            raise ValueError(
                f"runtime.slurm.time {shown(v)} is not a SLURM time limit: give minutes, MM:SS, "
                "HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
            )
        return v.strip()

    @field_validator("mem")
    @classmethod
    def _mem(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d+[KMGT]?", v.strip()):
            raise ValueError(f"runtime.slurm.mem {shown(v)} is not a size like 8000M or 8G")
        return v

    @field_validator("partition", "account", "qos")
    @classmethod
    def _word(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9._,-]{1,100}", v):
            raise ValueError(f"a SLURM name must be letters, digits, '.', '_', ',' or '-'; got {shown(v)}")
        return v


class RuntimeConfig(Strict):
    """Where and how to run. Does not change results except through ``device``/``threads``."""

    device: str = Field(
        "cpu", description="cpu | cuda | cuda:N | auto (CUDA when available, else CPU)"
    )
    threads: int = Field(1, ge=1, description="torch intra-op threads per process")
    workers: int = Field(0, ge=0, description="worker processes; 0 = one per core")
    mode: Literal["auto", "vmap", "batched", "loop"] = Field(
        "auto", description="population training mode: vmap, batched (MLPs), loop, or auto"
    )
    checkpoints: bool = Field(True, description="save final weights of every member")
    tf32: bool = Field(
        False, description="allow TF32 matrix products on CUDA (faster, not float32-exact)"
    )
    gpus: int | Literal["all"] | None = Field(
        None, description="local executor on CUDA: one worker per GPU, each pinned to its own "
        "(N or all; default: one process on the one device)"
    )
    max_population: int | None = Field(
        None, ge=1, description="train at most this many children per chunk of a population "
        "(each chunk with its own original and control; set, each t's population trains on its "
        "own instead of joined with the seed's one original); CUDA: chosen from free memory"
    )
    ray_cpus: float = Field(1.0, gt=0, description="ray: CPUs each unit asks for")
    ray_gpus: float | None = Field(
        None, ge=0, description="ray: GPUs each unit asks for (default 1 on CUDA, 0 on CPU)"
    )
    slurm: SlurmConfig = Field(
        default_factory=SlurmConfig, description="--executor slurm: how tasks are submitted"
    )

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"runtime.gpus must be at least 1 or all; got {v}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", v):
            raise ValueError(f"runtime.device must be cpu, cuda, cuda:N or auto; got {shown(v)}")
        return v


# ---- fine-tuning ----------------------------------------------------------------------------


class FolderCheckpoint(Strict):
    """A checkpoint made elsewhere: its path and the pre-training step it was saved at."""

    path: str = Field(description="a Hugging Face model folder, or a safetensors file")
    step: int = Field(ge=0, le=10**12, description="the pre-training step it was saved at")


STEP_IN_NAME = re.compile(r"(?<![0-9A-Za-z])step[_-]?(\d+(?:\.\d+)?)([kKmMbB]?)(?![0-9A-Za-z])")


def step_in_name(path: str) -> int:
    """The pre-training step in a checkpoint's name: ``multiberts-seed_0-step_20k`` -> 20000,
    ``OLMo-1B-hf/step20000-tokens84B`` -> 20000, ``step0000040.safetensors`` -> 40 (the last
    match in the path wins; ``step`` must start a word, so ``substep_5`` is no step)."""
    found = STEP_IN_NAME.findall(str(path).replace("\\", "/"))
    how = "name it with step_<N>[k|M|B] or give {path: ..., step: N}"
    if not found:
        raise ValueError(
            f"pretrain.checkpoints: cannot read the pre-training step from {path!r}; {how}"
        )
    num, unit = found[-1]
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}[unit.lower()]
    whole, _, frac = num.partition(".")
    if len(frac) > len(str(scale)) - 1:  # 2.5 or 2.5000k: not a whole number of steps
        raise ValueError(
            f"pretrain.checkpoints: 'step{num}{unit}' in {path!r} is not a whole number of "
            f"steps; {how}"
        )
    step = int(whole) * scale + (int(frac.ljust(len(str(scale)) - 1, "0")) if frac else 0)
    if step > 10**12:
        raise ValueError(f"pretrain.checkpoints: step {step} in {path!r} exceeds 10^12; {how}")
    return step


class PretrainConfig(Strict):
    """Fine-tuning experiments (paper section 4.4): pre-train on ``data`` with ``recipe`` and
    fine-tune the sweep's task from the weights after each of ``checkpoints`` steps (0 = from
    random initialisation, the baseline)."""

    data: DataConfig = Field(default_factory=DataConfig, description="the pre-training data")
    recipe: RecipeConfig = Field(
        default_factory=RecipeConfig, description="the pre-training recipe"
    )
    checkpoints: list[int | str | FolderCheckpoint] = Field(
        default_factory=lambda: [0],
        description="pre-training steps to fine-tune from; or, instead of pre-training here, "
        "local checkpoints made elsewhere (MultiBERT, OLMo): Hugging Face model folders for "
        "model.name = hf, butterfly/safetensors files otherwise, each a path whose name holds "
        "its step (step_20k, step2000) or {path, step}; '{seed}' in a path is replaced by each "
        "seed (a checkpoint per seed: multiberts-seed_{seed}-step_20k)",
    )

    @property
    def folders(self) -> list[tuple[int, str]] | None:
        """(pre-training step, path) of each given checkpoint, sorted by step; None when the
        checkpoints are steps of the pre-training done here."""
        if not self.checkpoints or isinstance(self.checkpoints[0], int):
            return None
        out = []
        for c in self.checkpoints:
            if isinstance(c, FolderCheckpoint):
                out.append((c.step, c.path))
            else:
                assert isinstance(c, str)
                out.append((step_in_name(c), c))
        return sorted(out)

    @model_validator(mode="after")
    def _checkpoints(self) -> PretrainConfig:
        if not self.checkpoints:
            raise ValueError("pretrain.checkpoints is empty: give the steps to fine-tune from")
        ints = [isinstance(c, int) for c in self.checkpoints]
        if any(ints) and not all(ints):
            raise ValueError(
                "pretrain.checkpoints mixes pre-training steps and checkpoint paths: give steps "
                "(pre-train here) or paths (checkpoints made elsewhere), not both"
            )
        if not all(ints):
            folders = self.folders
            assert folders is not None
            for _, path in folders:
                seed_placeholder_only(path, "pretrain.checkpoints:")
            steps = [s for s, _ in folders]
            if len(set(steps)) != len(steps):
                raise ValueError(
                    f"pretrain.checkpoints: two checkpoints have the same step {steps}; give each "
                    "its own with {path: ..., step: N}"
                )
            return self
        for c in self.checkpoints:
            if self.recipe.epochs is None and not 0 <= c <= self.recipe.steps:
                raise ValueError(
                    f"pretrain.checkpoints contains {c}; each must lie in [0, pretrain.recipe.steps"
                    f" = {self.recipe.steps}]"
                )
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise ValueError(f"pretrain.checkpoints has duplicates: {self.checkpoints}")
        return self


# ---- the edge of stability ------------------------------------------------------------------


class ThresholdConfig(Strict):
    """The edge of stability (``butterfly threshold``): for each perturbation time t (seed,
    kind), the smallest σ whose ``metric`` reaches ε, by an adaptive search in log σ; or, with
    ``over: t``, for the size ``sigma``, the earliest t after which it stays below ε. These
    defaults are the search's, the report's and the command line's."""

    over: Literal["sigma", "t"] = Field("sigma", description="search σ*(t), or t*(σ)")
    metric: str = Field("barrier_train_loss", description="the result column compared with ε")
    eps: float = Field(
        0.05, gt=0, description="ε: absolute, in the metric's units (0.05 nats: above the "
        "barriers the smallest perturbations already give early in training)"
    )
    relative: bool = Field(False, description="ε relative to the original's final train loss")
    sigma_min: float = Field(1e-6, gt=0, description="the bracket's smallest σ")
    sigma_max: float = Field(1.0, gt=0, description="the bracket's largest σ")
    per_round: int = Field(6, ge=2, le=64, description="values measured per round")
    resolution: float = Field(1.25, gt=1, description="stop when the bracket is this narrow")
    max_rounds: int = Field(8, ge=1, le=100, description="stop after this many rounds")
    sigma: float | None = Field(
        None, gt=0, description="over t: the size whose t* is searched (default perturb.sigmas[0])"
    )

    @model_validator(mode="after")
    def _bracket(self) -> ThresholdConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"threshold.sigma_min = {self.sigma_min} must be below threshold.sigma_max = "
                f"{self.sigma_max}"
            )
        return self


def default_of(section: type[BaseModel], name: str) -> Any:
    """A field's default, as the schema states it (for help texts that must not drift)."""
    return section.model_fields[name].get_default(call_default_factory=True)
