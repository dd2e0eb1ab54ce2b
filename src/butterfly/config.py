"""Typed sweep configuration: YAML + ``--set key=value`` overrides, validated before any training.

Every field has a default, so an empty config is the default sweep: the paper's standard recipe
(Table 1 'Standard': SGD with momentum, lr 0.1, 2% warm-up then linear decay) and perturbation
times (0, 0.1%, 0.5%, 2%, 10%, 50% of T) on a CPU stand-in (an MLP-64 on MNIST-1D, T = 3000). Validation errors are raised as :class:`ConfigError` with one clear
sentence that names the field and the allowed values.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from butterfly.imports import LOCAL, is_import_path

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ConfigError(ValueError):
    """A configuration value a user can fix. The message names the field."""


INT64 = 2**63 - 1
MAX_STEPS = 100_000_000


def _bounded(v: Any, where: str) -> Any:
    if isinstance(v, int) and not isinstance(v, bool) and not -INT64 <= v <= INT64:
        raise ValueError(f"{where} = {v} does not fit in 64 bits")
    if isinstance(v, list):
        for x in v:
            _bounded(x, where)
    return v


class _Strict(BaseModel):
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


class AugmentConfig(_Strict):
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


BUILTIN_DATA = (
    "mnist1d", "digits", "synthetic", "cifar10", "cifar100", "mnist", "glue", "sentiment",
    "pairs", "gsm8k", "arithmetic",
)  # fmt: skip
CAUSAL_DATA = ("gsm8k", "arithmetic")  # question/answer text for causal language models
BUILTIN_MODELS = ("mlp", "cnn", "resnet", "resnet50", "vit", "gpt", "hf")
STORED = "stored"  # in-memory data given through Python, written once into the run folder


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` to a misspelt ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _named(kind: str, v: str, builtin: tuple[str, ...]) -> str:
    if v in builtin or is_import_path(v) or v.startswith(LOCAL):
        return v
    raise ValueError(
        f"{kind}.name must be one of {', '.join(builtin)} or an import path "
        f"package.module:name; got {v!r}{did_you_mean(v, builtin)}"
    )


class DataConfig(_Strict):
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
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    seed: int = Field(0, ge=0, description="seed of a generated data set (mnist1d, synthetic)")
    n_train: int = Field(4000, ge=2, description="synthetic only: training examples")
    n_test: int = Field(1000, ge=1, description="synthetic only: test examples")
    n_features: int = Field(20, ge=1, description="synthetic only: input dimension")
    n_classes: int = Field(10, ge=2, description="synthetic only: number of classes")

    @property
    def text(self) -> bool:
        return self.name in ("glue", "sentiment", "pairs", *CAUSAL_DATA)

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


class ModelConfig(_Strict):
    """Architecture. ``width`` is the hidden width (MLP, ViT) or base channel count (CNN,
    ResNet, ResNet-50); ``hf`` loads a Hugging Face classifier from ``path``; an import path
    ``package.module:make`` names the user's ``nn.Module`` class or factory (called with
    ``kwargs``, plus ``seed``, ``input_shape`` and ``n_classes`` where it takes them)."""

    name: str = Field(
        "mlp",
        description="mlp | cnn | resnet | resnet50 | vit | gpt | hf | an import path "
        "package.module:make",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="user model only: keyword arguments of the factory"
    )
    init: Literal["auto", "kaiming", "own"] = Field(
        "auto",
        description="kaiming: He-normal from the seed (built-ins); own: keep the user model's "
        "initialisation (Eq. 6 then uses each tensor's mean square at θ0); auto: kaiming for "
        "built-ins, own for user models",
    )
    width: int = Field(64, ge=1)
    depth: int = Field(
        2, ge=1, description="hidden layers (mlp), conv layers (cnn), 6n+2 (resnet), blocks (vit, "
        "gpt)"
    )
    patch: int = Field(4, ge=1, description="vit only: patch size")
    heads: int = Field(3, ge=1, description="vit and gpt: attention heads")
    dropout: float = Field(0.0, ge=0, lt=1, description="vit and gpt: dropout rate")
    path: str | None = Field(
        None, description="hf only: local model folder, cached hub id, or 'minilm' (bundled)"
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
                f"got {v!r}"
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


class RecipeConfig(_Strict):
    """Optimizer and schedule, all as functions of the step so a run can resume anywhere."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = Field((0.9, 0.999), strict=False)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup: float = Field(0.02, ge=0, lt=1, description="warm-up length as a fraction of steps")
    schedule: Literal["cosine", "linear", "constant"] = "linear"
    steps: int = Field(
        3000, ge=1, le=MAX_STEPS, description=f"total training steps T (at most {MAX_STEPS:,})"
    )
    epochs: float | None = Field(
        None, gt=0, description="T in epochs instead: steps = ceil(epochs x training examples / "
        "batch_size), set when the run starts"
    )
    batch_size: int = Field(128, ge=1)
    grad_clip: float | None = Field(
        None, gt=0, description="clip each member's global gradient norm to this value"
    )
    loss: str = Field(
        "cross_entropy",
        description="cross_entropy, or the import path package.module:loss_fn of a function "
        "loss_fn(model, batch) -> scalar, batch = (inputs, targets)",
    )

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        if v == "cross_entropy" or is_import_path(v) or v.startswith(LOCAL):
            return v
        raise ValueError(
            f"recipe.loss must be cross_entropy or an import path package.module:loss_fn; got {v!r}"
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

    def with_epochs_resolved(self, n_train: int) -> dict[str, Any]:
        """This recipe as a dict with ``epochs`` turned into ``steps`` for ``n_train`` training
        examples: ceil(epochs x (n_train // batch_size)). An epoch is what the batch stream
        draws in one pass: its n_train // batch_size full batches (the rest is left out of
        that pass, in a new random subset each epoch)."""
        raw = self.model_dump()
        if self.epochs is not None:
            per_epoch = max(1, n_train // self.batch_size)
            raw["steps"] = max(1, math.ceil(self.epochs * per_epoch - 1e-9))
            raw["epochs"] = None
        return raw


Kind = Literal["batch", "gaussian", "spawn"]
Mask = Literal["weights", "weights+biases", "norm", "biases", "biases+norm", "all"]


class PerturbConfig(_Strict):
    """The perturbation grid: times t, sizes sigma, kinds, masks (paper Eq. 2, 3, 6)."""

    times: list[float] = Field(
        default_factory=lambda: [0.0, 0.001, 0.005, 0.02, 0.1, 0.5],
        description="perturbation times as fractions of T, in [0, 1)",
    )
    steps: list[int] = Field(default_factory=list, description="perturbation times as steps")
    sigmas: list[float] = Field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1])
    kinds: list[Kind] = Field(default_factory=lambda: ["batch", "gaussian"])
    mask: Mask = "weights"
    fractions: list[float] = Field(
        default_factory=lambda: [1.0], description="fraction of the masked weights perturbed"
    )
    normalize: bool = Field(True, description="scale the masked direction by Eq. 6")
    directions: int = Field(1, ge=1, description="independent directions per (kind, sigma)")
    batch_size: int | None = Field(None, ge=1, description="batch perturbation batch size")
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


class EvalConfig(_Strict):
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


class RuntimeConfig(_Strict):
    """Where and how to run. Does not change results except through ``device``/``threads``."""

    device: str = Field(
        "cpu", description="cpu | cuda | cuda:N | auto (CUDA when available, else CPU)"
    )
    threads: int = Field(1, ge=1, description="torch intra-op threads per process")
    workers: int = Field(0, ge=0, description="worker processes; 0 = one per core")
    mode: Literal["auto", "vmap", "batched", "loop"] = Field(
        "auto", description="population training mode"
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
        "(each chunk with its own original and control); CUDA: chosen from free memory"
    )
    ray_cpus: float = Field(1.0, gt=0, description="ray: CPUs each unit asks for")
    ray_gpus: float | None = Field(
        None, ge=0, description="ray: GPUs each unit asks for (default 1 on CUDA, 0 on CPU)"
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
            raise ValueError(f"runtime.device must be cpu, cuda, cuda:N or auto; got {v!r}")
        return v


class FolderCheckpoint(_Strict):
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


class PretrainConfig(_Strict):
    """Fine-tuning experiments (paper section 4.4): pre-train on ``data`` with ``recipe`` and
    fine-tune the sweep's task from the weights after each of ``checkpoints`` steps (0 = from
    random initialisation, the baseline)."""

    data: DataConfig = Field(default_factory=DataConfig)
    recipe: RecipeConfig = Field(default_factory=RecipeConfig)
    checkpoints: list[int | str | FolderCheckpoint] = Field(
        default_factory=lambda: [0],
        description="pre-training steps to fine-tune from; or, instead of pre-training here, "
        "local checkpoints made elsewhere (MultiBERT, OLMo): Hugging Face model folders for "
        "model.name = hf, butterfly/safetensors files otherwise, each a path whose name holds "
        "its step (step_20k, step2000) or {path, step}",
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


class ThresholdConfig(_Strict):
    """The edge of stability (``butterfly threshold``): for each perturbation time t (seed,
    kind), the smallest σ whose ``metric`` reaches ε, by an adaptive search in log σ; or, with
    ``over: t``, for the size ``sigma``, the earliest t after which it stays below ε."""

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
    max_rounds: int = Field(8, ge=1, le=100)
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


class RunConfig(_Strict):
    """A whole sweep. ``seeds`` repeat the experiment: each seed fixes init, batches and noise."""

    name: str = Field(
        "default", description="the run's name; the default run folder is runs/<name>"
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    recipe: RecipeConfig = Field(default_factory=RecipeConfig)
    perturb: PerturbConfig = Field(default_factory=PerturbConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
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
                f"name {v!r} must be one folder name: letters, digits, '.', '_' or '-', starting "
                "with a letter or digit, at most 100 characters"
            )
        return v

    @model_validator(mode="after")
    def _grid(self) -> RunConfig:
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has duplicates: {self.seeds}")
        p = self.perturb
        if not p.times and not p.steps:
            raise ValueError("perturb.times and perturb.steps are both empty: no perturbation time")
        if not p.sigmas:
            raise ValueError("perturb.sigmas is empty: give at least one perturbation size")
        if not p.kinds:
            raise ValueError("perturb.kinds is empty: choose from batch, gaussian, spawn")
        if self.data.augment.active and self.data.text:
            raise ValueError(f"data.augment is for images; data.name = {self.data.name} is text")
        if self.data.causal and self.model.name not in ("hf", "gpt"):
            raise ValueError(
                f"data.name = {self.data.name} is text for a causal language model: it needs "
                "model.name = gpt or hf"
            )
        if self.data.text and not self.data.causal and self.model.name != "hf":
            raise ValueError(
                f"data.name = {self.data.name} is text (token ids): it needs model.name = hf"
            )
        given = self.pretrain.folders if self.pretrain is not None else None
        if self.model.name == "hf" and not self.model.path and not given:
            raise ValueError(
                "model.path is required for model.name = hf: a saved model folder, a model id "
                "in the Hugging Face cache, or 'minilm'"
            )
        if self.model.name == "hf" and self.model.task == "auto":
            self.model.task = "causal_lm" if self.data.causal else "classify"
        if not p.fractions:
            raise ValueError("perturb.fractions is empty: use [1.0] to perturb every masked weight")
        if self.runtime.mode == "batched" and self.model.name != "mlp":
            raise ValueError(
                f"runtime.mode = batched is for MLPs; model.name = {self.model.name} trains with "
                "auto, vmap or loop"
            )
        if self.threshold is not None and "spawn" in p.kinds:
            raise ValueError("threshold searches perturbation sizes: perturb.kinds cannot hold spawn")
        for s in p.steps:
            if self.recipe.epochs is None and s >= self.recipe.steps:
                raise ValueError(
                    f"perturb.steps contains {s}, beyond the last step; it must be < recipe.steps "
                    f"= {self.recipe.steps}"
                )
        return self

    # ---- derived quantities -------------------------------------------------------------
    def tokenizer_path(self, data: DataConfig | None = None) -> str | None:
        """The tokenizer of a text data set (``data``, default the sweep's own; e.g. the
        pre-training data): data.tokenizer, else the hf model's path, else bytes."""
        data = data or self.data
        if not data.text:
            return None
        if data.tokenizer:
            return data.tokenizer
        if self.model.name != "hf":
            return "bytes"
        given = self.pretrain.folders if self.pretrain is not None else None
        return self.model.path or (str(Path(given[0][1]).expanduser()) if given else None)

    def child_end(self, t: int) -> int:
        """The step at which perturbed children perturbed at ``t`` stop training."""
        T = self.recipe.steps
        return t + T if self.perturb.child_steps == "T_after_t" else T

    def perturbation_steps(self) -> list[int]:
        """All perturbation times t in steps, sorted and unique."""
        T = self.recipe.steps
        ts = {round(f * T) for f in self.perturb.times} | set(self.perturb.steps)
        return sorted(t for t in ts if t < T)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    @property
    def needs_epochs(self) -> bool:
        """Whether ``recipe.epochs`` (or ``pretrain.recipe.epochs``) still has to become steps."""
        pre = self.pretrain is not None and self.pretrain.recipe.epochs is not None
        return self.recipe.epochs is not None or pre

    def with_epochs(self, n_train: int, n_pretrain: int | None = None) -> RunConfig:
        """The config with every ``epochs`` turned into ``steps`` (``n_train``: training
        examples of ``data``; ``n_pretrain``: of ``pretrain.data``); validated again."""
        raw = self.to_dict()
        raw["recipe"] = self.recipe.with_epochs_resolved(n_train)
        if self.pretrain is not None and self.pretrain.recipe.epochs is not None:
            assert n_pretrain is not None
            raw["pretrain"]["recipe"] = self.pretrain.recipe.with_epochs_resolved(n_pretrain)
        return build_config(raw)


# ---- loading, overrides, errors -------------------------------------------------------------


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for configs: refuses aliases (an alias bomb of a few hundred bytes
    expands to gigabytes) and duplicate keys (a silent last-one-wins), and reads 1e-3 as a
    float (YAML 1.2; YAML 1.1 reads it as a string)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a config", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """A YAML document read with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)


def _section(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config class at ``loc`` (a path of field names from RunConfig)."""
    model: Any = RunConfig
    for part in loc:
        f = model.model_fields.get(part) if isinstance(part, str) else None
        if f is None:
            return None
        ann = f.annotation
        candidates = [ann, *typing.get_args(ann)]
        model = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)),
                     None)  # fmt: skip
        if model is None:
            return None
    return model


def _union_tag(part: object) -> bool:
    """Whether a location part names a branch of a union (``int``, ``str``, a model class),
    not a config key (keys are lower-case identifiers)."""
    return isinstance(part, str) and (
        part in ("int", "str", "float", "bool") or "[" in part or part[:1].isupper()
    )


def _format_error(err: ValidationError) -> str:
    errors = err.errors()
    e = errors[0]
    msg = e["msg"]
    if e["loc"] and _union_tag(e["loc"][-1]):  # a value no branch of a union took: report
        parent = e["loc"][:-1]  # the branch that got furthest (a dict: the model's own error),
        branches = [x for x in errors if x["loc"][: len(parent)] == parent]
        e = max(branches, key=lambda x: len(x["loc"]))  # or, if none did, what each wants
        msg = e["msg"]
        if len(e["loc"]) == len(parent) + 1:
            wants = dict.fromkeys(x["msg"].removeprefix("Input should be ") for x in branches
                                  if len(x["loc"]) == len(parent) + 1)  # fmt: skip
            msg = "Input should be " + ", or ".join(wants)
    field = ".".join(str(p) for p in e["loc"] if not _union_tag(p)) or "config"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if e["type"] == "extra_forbidden":
        section = _section(tuple(e["loc"][:-1]))
        hint = ""
        if section is not None:
            prefix = ".".join(str(p) for p in e["loc"][:-1])
            names = [f"{prefix}.{n}" if prefix else n for n in section.model_fields]
            hint = did_you_mean(field, names)
        return f"unknown config key '{field}'{hint}: check its spelling (README, 'Configuration')"
    if e["type"] == "literal_error":
        expected = re.findall(r"'([^']*)'", msg)
        return (f"config field '{field}': {msg}, got {e.get('input')!r}"
                f"{did_you_mean(str(e.get('input')), expected)}")  # fmt: skip
    if msg.startswith(
        ("seeds", "perturb.", "model.", "recipe.", "runtime.", "data.", "pretrain.", "name ",
         "threshold")
    ):
        return msg
    return f"config field '{field}': {msg} (got {e.get('input')!r})"


def _parse_value(text: str) -> Any:
    """Parse an override value as YAML, so ``1e-3``, ``[0, 0.5]`` and ``true`` work."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError as err:
        if isinstance(err, yaml.composer.ComposerError):
            raise ConfigError(f"--set value {text!r}: aliases are not allowed") from None
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict (a copy is returned)."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(text)
    return out


def build_config(
    raw: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Validate a raw dict (plus overrides) into a :class:`RunConfig`, or raise ConfigError."""
    data = apply_overrides(raw or {}, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


PRESET_DIR = Path(__file__).parent / "presets"
SCALES = ("cpu", "full")
SCALE_KEYS = ("expected_runtime", "data", "note", "config")


def is_preset(doc: dict[str, Any]) -> bool:
    """A preset document: a ``description``, one section per scale (``cpu``, ``full``) and an
    optional shared ``config`` (no sweep config has any of these keys)."""
    return any(k in doc for k in ("description", "config", *SCALES))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists included)
    replaces."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_path(path: str | Path, relative_to: Path | None = None) -> Path:
    """A config path as given (relative to ``relative_to``'s folder when that is set and the
    path is relative), or a packaged preset by name (``NAME``, ``presets/NAME.yaml``)."""
    p = Path(path).expanduser()
    if relative_to is not None and not p.is_absolute() and (relative_to.parent / p).is_file():
        return relative_to.parent / p
    if p.is_file():
        return p
    packaged = PRESET_DIR / (p.stem + ".yaml")
    if p.suffix in ("", ".yaml") and packaged.is_file():
        return packaged
    return p


def unknown_preset(name: str | Path) -> ConfigError:
    """The error for a config path that is neither a file nor a packaged preset."""
    stem = Path(name).stem
    presets = [q.stem for q in sorted(PRESET_DIR.glob("*.yaml"))]
    hint = did_you_mean(stem, presets)
    return ConfigError(
        f"config file '{name}' does not exist and is not a preset{hint}; "
        "`butterfly presets` lists the presets"
    )


def _read_yaml(p: Path) -> dict[str, Any]:
    if p.is_dir():
        raise ConfigError(f"config file '{p}' is a folder; give a YAML file or a preset name")
    if not p.is_file():
        raise unknown_preset(p)
    try:
        loaded = parse_yaml(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "parse error"
        raise ConfigError(f"config file '{p}' is not valid YAML{where}: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys to values")
    return loaded


def read_document(path: str | Path, scale: str = "cpu", _seen: tuple[Path, ...] = ()) -> dict:
    """A config or preset file with its ``extends:`` chain resolved.

    ``extends: BASE`` (a packaged preset name or a file, relative to this one) starts from
    BASE and applies this document on top (:func:`deep_merge`). A preset may extend a preset
    (both scales, and the shared top-level ``config``, merge); a plain config may extend a
    preset, which then contributes its config at ``scale``.
    """
    p = resolve_path(path, _seen[-1] if _seen else None)
    if p.resolve() in [q.resolve() for q in _seen]:
        chain = " -> ".join(q.stem for q in (*_seen, p))
        raise ConfigError(f"config file '{p}' extends itself ({chain})")
    doc = _read_yaml(p)
    base_ref = doc.pop("extends", None)
    if base_ref is None:
        return _fold(doc, SCALES) if is_preset(doc) else doc
    if not isinstance(base_ref, str):
        raise ConfigError(f"config file '{p}': extends must name one preset or file")
    base = read_document(base_ref, scale, (*_seen, p))
    if is_preset(base) and not is_preset(doc):
        base = preset_config(base, scale, Path(base_ref).stem, name=False)
    elif is_preset(doc):
        doc = _fold(doc, [s for s in SCALES if s in base or s in doc])
    return deep_merge(base, doc)


def _fold(doc: dict[str, Any], scales: Iterable[str]) -> dict[str, Any]:
    """A preset with its shared top-level ``config`` folded into each scale's ``config`` (the
    scale's own keys win), so that a preset extending another overrides both of its scales."""
    shared = doc.get("config") or {}
    out = {k: v for k, v in doc.items() if k != "config"}
    for s in scales:
        if s in doc or shared:
            section = dict(doc.get(s) or {})
            section["config"] = deep_merge(shared, section.get("config") or {})
            out[s] = section
    return out


def preset_config(doc: dict[str, Any], scale: str, stem: str, name: bool = True) -> dict:
    """The config of a (folded) preset at ``scale``, named ``STEM`` (full) or ``STEM-cpu``
    unless the preset names it."""
    if scale not in SCALES:
        raise ConfigError(f"--scale must be one of {', '.join(SCALES)}; got '{scale}'")
    if scale not in doc:
        raise ConfigError(f"preset '{stem}' has no '{scale}' scale")
    cfg = dict(doc[scale].get("config") or {})
    if name and "name" not in cfg:
        cfg["name"] = stem if scale == "full" else f"{stem}-{scale}"
    return cfg


def list_presets() -> list[tuple[str, dict[str, Any]]]:
    """(name, preset document with its ``extends`` resolved) of every packaged preset."""
    return [(p.stem, read_document(p)) for p in sorted(PRESET_DIR.glob("*.yaml"))]


def load_raw(path: str | Path | None, scale: str = "cpu") -> dict[str, Any]:
    """The raw config mapping of a YAML file or preset (none: the default sweep, ``{}``)."""
    if path is None:
        return {}
    doc = read_document(path, scale)
    if is_preset(doc):
        return preset_config(doc, scale, resolve_path(path).stem)
    return doc


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, scale: str = "cpu"
) -> RunConfig:
    """Read a YAML config or preset (or none: the default sweep) and apply ``--set`` overrides.

    A preset holds one config per scale (``cpu``: minutes on a laptop; ``full``: the paper's
    setting); ``scale`` picks one. ``extends:`` is resolved first (:func:`read_document`).
    """
    return build_config(load_raw(path, scale), overrides)
