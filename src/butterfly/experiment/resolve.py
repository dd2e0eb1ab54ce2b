"""Resolving a run: a validated config plus the facts of this machine and this data set,
settled once into one frozen :class:`Resolved` before anything is written or trained.

What a config cannot know by itself is decided here and nowhere else:

* ``recipe.epochs`` (and ``pretrain.recipe.epochs``) become ``steps``, from the number of
  training examples: ceil(epochs x (n_train // batch_size));
* ``runtime.device`` becomes a concrete torch device (``auto``: CUDA when available);
* the tokenizer of a text data set (:func:`tokenizer_for`, the one rule);
* ``model.task`` becomes ``classify`` or ``causal_lm`` for a Hugging Face model;
* the loss: cross-entropy, or the user's function named by ``recipe.loss``;
* what the method needs of the model (:func:`check_model`): it takes the data's inputs and
  gives a score per class (or per token), checked on two training examples;
* warnings: measures that will be left empty, and why.

A pipeline calls :func:`resolve` once at the top; everything below takes the resolved object
(and its ``cfg``) and never asks again. The data set is loaded once per process
(:func:`dataset`) and the model is built once for the checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from butterfly.config import ConfigError, DataConfig, RunConfig, build_config
from butterfly.config.sections import (
    BUILTIN_SCHEDULES,
    MASK_KINDS,
    SEED,
    PerturbConfig,
    PretrainConfig,
    RecipeConfig,
    matching,
    per_seed,
)
from butterfly.data import BatchStream, DataError, Dataset, load_dataset
from butterfly.experiment import rows
from butterfly.experiment.comparer import Comparer
from butterfly.experiment.members import TWIN_REFUSED
from butterfly.imports import ImportPathError, check_allowed, is_import_path
from butterfly.imports import resolve as import_object
from butterfly.layers import statistic_layers
from butterfly.metrics.evaluate import Bound, LossFn
from butterfly.models import ParamInfo, build_model, census, param_info, trainable
from butterfly.train import Population, PopulationTrainer
from butterfly.train.optim import TorchUpdate, Update
from butterfly.train.population import member, takes_step
from butterfly.train.recipe import lr_at, update_for


@dataclass(frozen=True)
class Resolved:
    """A run's config with every derived value settled (``cfg``: epochs as steps, the model's
    task concrete), the concrete ``device``, the text ``tokenizer``, the number of training
    examples, and what the checks found (``warnings``: measures left empty; ``notes``: what
    was derived, e.g. the steps of an epoch-based recipe).

    A fine-tuning config also holds its two runs, resolved: ``pretrain`` (pre-training here;
    None for checkpoints made elsewhere) and ``finetune`` (the first fine-tuning sweep)."""

    cfg: RunConfig
    device: str
    tokenizer: str | None
    n_train: int
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    census: str = ""  # the model's parameters by kind, one line (printed with the run's plan)
    pretrain: Resolved | None = field(default=None, repr=False)
    finetune: Resolved | None = field(default=None, repr=False)
    preview: int | None = None  # the data is a preview of this many examples per split

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def loss_fn(self) -> LossFn | None:
        """The user's loss function named by ``recipe.loss`` (None: cross-entropy)."""
        return loss_function(self.cfg.recipe.loss)

    def gpus(self) -> int:
        """How many GPUs ``runtime.gpus`` asks for (0: none; ``all``: every visible one)."""
        g = self.cfg.runtime.gpus
        if g is None:
            return 0
        if g == "all":
            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        return int(g)

    def derive(self, cfg: RunConfig) -> Resolved:
        """The same facts for a sub-run whose config differs only in where its weights start
        and its name (a fine-tuning sweep from another checkpoint of one pre-training run)."""
        return replace(self, cfg=cfg, pretrain=None, finetune=None)


# ---- the facts of this machine and this data set ---------------------------------------------


def concrete_device(name: str) -> str:
    """The torch device of ``runtime.device``: ``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def tokenizer_for(
    data: DataConfig,
    model_name: str,
    model_path: str | None,
    pretrain: PretrainConfig | None,
    seed: int | None = None,
) -> str | None:
    """The tokenizer of a text data set (the one rule): ``data.tokenizer``; else the Hugging
    Face model's own (``model.path``, or the first checkpoint folder given to fine-tune from;
    a folder per seed, ``{seed}``, is ``seed``'s: the run's first seed);
    else ``bytes``, the built-in byte tokenizer (for ``gpt`` and user models)."""
    if not data.text:
        return None
    if data.tokenizer:
        return data.tokenizer
    if model_name != "hf":
        return "bytes"
    given = pretrain.folders if pretrain is not None else None
    path = model_path or (str(Path(given[0][1]).expanduser()) if given else None)
    return per_seed(path, seed) if path is not None and seed is not None else path


@lru_cache(maxsize=4)
def _cached(
    data_json: str, tokenizer: str | None, run_dir: str | None, max_rows: int | None
) -> Dataset:
    return load_dataset(DataConfig.model_validate_json(data_json), tokenizer,
                        Path(run_dir) if run_dir else None, max_rows=max_rows)  # fmt: skip


@lru_cache(maxsize=4)
def _on_device(
    data_json: str, tokenizer: str | None, run_dir: str | None, max_rows: int | None, device: str
) -> Dataset:
    return _cached(data_json, tokenizer, run_dir, max_rows).to(device)


def dataset(
    cfg: DataConfig,
    tokenizer: str | None,
    run_dir: Path | None = None,
    device: str = "cpu",
    max_rows: int | None = None,
) -> Dataset:
    """The data set ``cfg`` names, loaded once per process (and moved to ``device`` once);
    ``max_rows``: a preview of the first examples of each split of a file-based text data set
    (for planning). A loading error becomes a :class:`ConfigError`."""
    key = (cfg.model_dump_json(), tokenizer, str(run_dir) if run_dir else None, max_rows)
    try:
        return _cached(*key) if device == "cpu" else _on_device(*key, device)
    except DataError as err:
        raise ConfigError(str(err)) from None


@lru_cache(maxsize=8)
def loss_function(name: str) -> LossFn | None:
    """The loss named by ``recipe.loss``: None for cross-entropy, else the user's function."""
    if name == "cross_entropy":
        return None
    try:
        fn = import_object(name, "recipe.loss")
    except ImportPathError as err:
        raise ConfigError(str(err)) from None
    if not callable(fn):
        raise ConfigError(f"recipe.loss '{name}' is not a function")
    return fn


def epochs_as_steps(recipe: RecipeConfig, n_train: int) -> int:
    """ceil(epochs x (n_train // batch_size)): an epoch is what the batch stream draws in one
    pass, its n_train // batch_size full batches (the rest is left out of that pass, in a new
    random subset each epoch)."""
    assert recipe.epochs is not None
    per_epoch = max(1, n_train // recipe.batch_size)
    return max(1, math.ceil(recipe.epochs * per_epoch - 1e-9))


# ---- the checks ------------------------------------------------------------------------------


def check_given(cfg: RunConfig) -> None:
    """Checkpoints made elsewhere must exist, as folders (hf) or files (built-in models); a
    path with ``{seed}`` once for every seed of the run."""
    assert cfg.pretrain is not None
    for step, template in cfg.pretrain.folders or []:
        seeds = cfg.seeds if SEED in template else [None]
        for seed in seeds:
            path = template if seed is None else per_seed(template, seed)
            p = Path(path).expanduser()
            hf = cfg.model.name == "hf"
            if not (p.is_dir() if hf else p.is_file()):
                raise ConfigError(
                    f"pretrain.checkpoints: {path} (step {step}"
                    + (f", seed {seed} of {template}" if seed is not None else "") + ") is not a "
                    + ("model folder" if hf else "checkpoint file")
                    + (" (model.name = hf loads Hugging Face folders)" if hf else
                       " (built-in models start from safetensors files; hf models from folders)")
                )  # fmt: skip


def check_layers(p: PerturbConfig, info: dict[str, ParamInfo], name: str) -> None:
    """Each ``perturb.layers`` pattern matches a parameter of the model, and together they
    leave something for ``perturb.mask`` to perturb."""
    if not p.layers:
        return
    names = list(info)
    for pat in p.layers:
        if not matching(names, [pat]):
            raise ConfigError(
                f"perturb.layers pattern '{pat}' matches no parameter of model '{name}'; its "
                f"parameters are named like {', '.join(names[:6])}"
                f"{' ...' if len(names) > 6 else ''} (patterns are fnmatch globs: 'blocks.0.*')"
            )
    matched = matching(names, p.layers)
    if not [n for n in matched if info[n].kind in MASK_KINDS[p.mask]]:
        kinds = ", ".join(sorted({info[n].kind for n in matched}))
        raise ConfigError(
            f"perturb.layers {p.layers} and perturb.mask = {p.mask} together select no parameter "
            f"of model '{name}': the patterns match only {kinds} parameters; widen perturb.mask "
            "(e.g. all) or the patterns"
        )



def check_device(cfg: RunConfig, device: str, gpus: int) -> None:
    """The device the config asks for exists on this machine."""
    rt = cfg.runtime
    if rt.gpus is not None and not device.startswith("cuda"):
        raise ConfigError(
            f"runtime.gpus = {rt.gpus} needs CUDA, but runtime.device = {rt.device} runs on "
            f"{device}"
        )
    if isinstance(rt.gpus, int) and ":" in rt.device:
        raise ConfigError("runtime.gpus picks each worker's GPU: use runtime.device = cuda")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        wanted = max(index + 1, gpus)
        if wanted > count or count == 0:
            raise ConfigError(
                f"runtime.device = {device} (runtime.gpus = {rt.gpus}), but this machine has "
                f"{count} CUDA device{'' if count == 1 else 's'} (torch {torch.__version__}); use "
                "cpu or auto"
            )


def check_recipe(cfg: RunConfig, data: Dataset) -> None:
    """Batches the data can fill; measures the recipe supports."""
    n = len(data.y_train)
    if cfg.recipe.batch_size > n:
        raise ConfigError(
            f"recipe.batch_size = {cfg.recipe.batch_size} exceeds the {n} training examples of "
            f"'{cfg.data.name}'"
        )
    r = cfg.recipe
    if cfg.eval.lyapunov and (r.optimizer != "sgd" or r.nesterov or r.dampening or r.groups
                              or r.accumulation > 1 or r.precision != "float32"):  # fmt: skip
        raise ConfigError(
            f"eval.lyapunov follows the plain SGD training map (momentum, weight decay, "
            f"clipping); recipe.optimizer = {r.optimizer} with Nesterov, dampening, groups, "
            "accumulation or reduced precision is not supported (set eval.lyapunov: false)"
        )
    check_schedule(r)
    pb = cfg.perturb.batch_size
    if pb is not None and pb > n and "batch" in cfg.perturb.kinds:
        raise ConfigError(
            f"perturb.batch_size = {pb} exceeds the {n} training examples of '{cfg.data.name}'"
        )
    th = cfg.threshold
    if th is not None and th.metric not in rows.names("results"):
        raise ConfigError(
            f"threshold.metric '{th.metric}' is not a result column; e.g. barrier_train_loss, "
            "barrier_test_error, l2"
        )


def check_model(
    model: nn.Module, data: Dataset, loss_fn: LossFn | None, name: str, causal: bool = False
) -> None:
    """What the trainer needs of a model, checked on two training examples. ``causal``: the
    data are a causal language model's token targets (the only integer targets of more than
    one axis that the built-in loss reads, as next-token targets)."""
    half = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                   if p.dtype in (torch.float16, torch.bfloat16)})  # fmt: skip
    if half:
        raise ConfigError(
            f"model '{name}' has {'/'.join(half)} parameters, and the weights butterfly trains, "
            "perturbs and measures are float32 (as are the inputs): build the model in float32 "
            "(drop .half() or .to(torch.bfloat16), or call .float()); to train in half "
            "precision, set recipe.precision: bf16 or fp16 (autocast)"
        )
    x, y = data.x_train[:2], data.y_train[:2]
    try:
        with torch.no_grad():
            if loss_fn is None:
                out = model(x)
            else:
                bound = Bound(model, dict(model.named_parameters()))
                loss = (loss_fn(bound, (x, y), 0) if takes_step(loss_fn)  # type: ignore[call-arg]
                        else loss_fn(bound, (x, y)))  # fmt: skip
    except Exception as err:
        raise ConfigError(
            f"model '{name}' fails on two training examples of shape {tuple(x.shape[1:])}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    if loss_fn is not None:
        if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
            raise ConfigError("recipe.loss must return a scalar tensor (the batch's mean loss)")
        return
    if data.n_classes < 2:
        raise ConfigError(
            f"data '{data.name}' has no class labels (float targets): cross-entropy needs them; "
            "give a loss function (recipe.loss, or loss_fn= in Python)"
        )
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if y.dim() > 1 and not y.is_floating_point() and not causal:
        raise ConfigError(
            f"data '{data.name}' has integer targets of shape {tuple(y.shape[1:])} per example: "
            "the built-in cross-entropy reads one class per example (or next-token targets of "
            "the causal-LM data sets gsm8k and arithmetic); for per-token labels give a loss "
            "function (recipe.loss, or loss_fn= in Python)"
        )
    if causal:  # token targets: next-token scores over a vocabulary at least the tokenizer's
        # (a model may pad its embedding beyond the tokenizer, as OLMo and Pythia do)
        ok = isinstance(out, torch.Tensor) and out.dim() == 3
        if not (ok and shape[:2] == tuple(y.shape) and shape[2] >= data.n_classes):
            raise ConfigError(
                f"model '{name}' outputs {shape} for 2 examples, but next-token cross-entropy on "
                f"'{data.name}' needs {(*y.shape, data.n_classes)} (or a wider vocabulary): a "
                "score per token and vocabulary entry"
            )
        return
    if shape != (2, data.n_classes):
        raise ConfigError(
            f"model '{name}' outputs {shape} for 2 examples, but cross-entropy on "
            f"'{data.name}' needs (2, {data.n_classes}): one score per class"
        )


def check_schedule(recipe: RecipeConfig) -> None:
    """A schedule function must give a finite learning rate >= 0 at every step (checked at
    every step up to 10^5 steps, and at 10^5 evenly spread steps beyond)."""
    if recipe.schedule in BUILTIN_SCHEDULES:
        return
    T = recipe.steps
    steps = range(T) if T <= 100_000 else sorted({round(i * (T - 1) / 99_999) for i in range(100_000)})
    for s in steps:
        try:
            lr = lr_at(recipe, s)
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(f"recipe.schedule {recipe.schedule} fails at step {s}: "
                              f"{type(err).__name__}: {err}") from None  # fmt: skip
        if not (isinstance(lr, float) and math.isfinite(lr) and lr >= 0):
            raise ConfigError(
                f"recipe.schedule {recipe.schedule} gives the learning rate {lr:.6g} at step {s} "
                "(recipe.lr x lr_factor(step, T)): it must be a finite number >= 0"
            )


SKIPPED = {"alignment": "weight matching, activation matching and the permutation proxy",
           "activation_matching": "activation matching", "cka": "CKA",
           "ensemble": "the ensemble accuracy"}  # fmt: skip


def model_warnings(
    cfg: RunConfig, data: Dataset, loss_fn: LossFn | None
) -> tuple[tuple[str, ...], str]:
    """Build the model once (seed ``seeds[0]``), check it, and say which asked-for measures
    it cannot give; and the census of its parameters (trainable weights, biases, norm
    parameters, frozen, tied), one line."""
    try:
        model = build_model(cfg.model, data.input_shape, data.n_classes, cfg.seeds[0],
                            (data.x_train, data.y_train))
    except ValueError as err:  # HFUnavailable, a bad init_from checkpoint, a shape mismatch
        if not cfg.model.builtin or cfg.model.name == "hf" or cfg.model.init_from:
            raise ConfigError(str(err)) from None
        raise ConfigError(
            f"model '{cfg.model.name}' cannot take '{cfg.data.name}' inputs: {err}"
        ) from None
    check_model(model, data, loss_fn, cfg.model.name, causal=cfg.data.causal)
    init = {k: v.detach().clone() for k, v in trainable(model).items()}
    info = param_info(model, init, own_init=cfg.model.keeps_own_init)
    check_layers(cfg.perturb, info, cfg.model.name)
    update = update_for(cfg.recipe, init, info)  # groups matched, the optimizer made, checked
    check_step(cfg, model, data, loss_fn, init, update)
    cmp = Comparer(model, data, cfg.eval, cfg.seeds[0], loss_fn)
    ev = cfg.eval
    wanted = {
        "alignment": ev.weight_matching or ev.activation_matching or bool(ev.proxy_fractions),
        "activation_matching": ev.activation_matching,
        "cka": ev.cka,
        "ensemble": ev.ensemble,
    }
    notes = [f"{SKIPPED[key]} will be left empty: {why}"
             for key, why in cmp.skipped.items() if wanted.get(key)]  # fmt: skip
    if isinstance(update, TorchUpdate):
        notes.append(
            f"recipe.optimizer {update.label} couples members (its update of one member depends "
            "on another's): each member gets its own optimizer, in a loop" if update.per_member
            else f"recipe.optimizer {update.label} updates the members as one (checked on two "
            "members: a member's update does not depend on the other's)"
        )
    line = census(model, info).line()
    layers = statistic_layers(model)
    if layers:
        kinds = ", ".join(sorted({type(m).__name__ for m in layers.values()}))
        how = (f"re-estimated for every network measured on {min(ev.running_stats_examples, len(data.y_train))} training inputs"
               if ev.running_stats == "reestimate" else
               "the endpoints' own, interpolated along each path")  # fmt: skip
        line += (f"; running statistics in {len(layers)} layers ({kinds}): per member in "
                 f"training, {how} (eval.running_stats)")  # fmt: skip
        if cfg.runtime.mode == "vmap":
            notes.append("runtime.mode = vmap with running statistics (BatchNorm): a member's "
                         "numbers can depend on its place in the population (measured for "
                         "BatchNorm1d on CPU), which the sigma = 0 control would show; auto "
                         "trains such models one member at a time")  # fmt: skip
        if cfg.runtime.mode == "auto":
            notes.append("the model has running statistics (BatchNorm): its members train one "
                         "at a time (runtime.mode loop), because under vmap a BatchNorm "
                         "member's numbers can depend on its place in the population, which "
                         "would break the exact sigma = 0 control")  # fmt: skip
    return tuple(notes), line


def check_step(
    cfg: RunConfig, model: nn.Module, data: Dataset, loss_fn: LossFn | None, init: dict[str, torch.Tensor],
    update: Update,
) -> None:  # fmt: skip
    """One real step on a handful of training examples, as a run takes it: a perturbed copy
    and the original stacked as a 2-member population, one training step (train mode, seeded
    randomness, the recipe's optimizer, precision and accumulation), one measurement in eval
    mode. What fails here (a tied or shared parameter that cannot be stacked, a loss that is
    not a scalar, a forward that breaks under the trainer) is one sentence before anything
    is written, not a failed worker."""
    k = cfg.recipe.accumulation
    n = min(len(data.y_train), 2 * k)
    n -= n % k
    if n == 0:
        return
    recipe = cfg.recipe.model_copy(update={"batch_size": n})
    trainer = PopulationTrainer(model, data, BatchStream(len(data.y_train), n, 0), recipe,
                                cfg.runtime.mode, None, loss_fn, update)  # fmt: skip
    if "twin" in cfg.perturb.kinds and trainer.twin_mode(2) is None:
        raise ConfigError(TWIN_REFUSED.format(model=cfg.model.name))
    g = torch.Generator().manual_seed(0)
    child = {k_: v + 1e-3 * torch.randn(v.shape, generator=g).to(v) if v.is_floating_point()
             else v for k_, v in init.items()}  # fmt: skip
    x, y = data.x_train[:n], data.y_train[:n]
    try:
        pop = Population.from_members(["original", "child"], [init, child],
                                      [update.init_state(init), update.init_state(child)], 0)  # fmt: skip
        grads, losses = trainer.gradients(pop.params, x, y, ("check", 0))
        if losses.shape != (2,):
            raise ValueError(f"the loss gives shape {tuple(losses.shape[1:])} per model, not a "
                             "scalar")  # fmt: skip
        update.step(pop.params, grads, pop.state, 0, lr_at(cfg.recipe, 0))
        with torch.no_grad():
            torch.func.functional_call(model, member(pop.params, 0), (x,))
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(
            f"model '{cfg.model.name}' fails in one training step of a 2-member population on "
            f"{n} training examples: {type(err).__name__}: {first}"
        ) from None


# ---- resolving -------------------------------------------------------------------------------


def settled(cfg: RunConfig, n_train: int, n_pretrain: int | None) -> tuple[RunConfig, list[str]]:
    """``cfg`` with epochs turned into steps and a Hugging Face model's task chosen, and what
    was derived (one line each)."""
    raw = cfg.to_dict()
    notes = []
    recipes: list[tuple[str, RecipeConfig, dict[str, Any], int | None]] = [
        ("recipe", cfg.recipe, raw["recipe"], n_train)
    ]
    if cfg.pretrain is not None:
        recipes.append(("pretrain.recipe", cfg.pretrain.recipe, raw["pretrain"]["recipe"],
                        n_pretrain))  # fmt: skip
    for what, recipe, out, n in recipes:
        if recipe.epochs is not None:
            assert n is not None
            out["steps"] = epochs_as_steps(recipe, n)
            out["epochs"] = None
            notes.append(f"{what}.epochs = {recipe.epochs:g} at batch {recipe.batch_size}: "
                         f"{out['steps']:,} steps")  # fmt: skip
    if cfg.model.name == "hf" and cfg.model.task == "auto":
        raw["model"]["task"] = "causal_lm" if cfg.data.causal else "classify"
    changed = bool(notes) or raw["model"]["task"] != cfg.model.task
    return (build_config(raw) if changed else cfg), notes


def resolve(
    cfg: RunConfig, run_dir: Path | None = None, check: bool = True, preview: int | None = None
) -> Resolved:
    """Settle ``cfg`` for this machine and its data set (``run_dir``: the run folder, which
    holds data given from Python). ``check``: also check the model against the data (off for
    a run folder that is only being read). ``preview``: read only the first ``preview``
    examples of each split of a file-based data set (``--dry-run``; an epoch-based recipe still
    counts the whole training split). Raises :class:`ConfigError` (one sentence)."""
    for what, name in cfg.code_named():
        if is_import_path(name):  # refused before anything is read or imported
            try:
                check_allowed(name, what)
            except ImportPathError as err:
                raise ConfigError(str(err)) from None
    if cfg.pretrain is not None and cfg.pretrain.folders is not None:
        check_given(cfg)  # before their tokenizer is looked for in them
    device = concrete_device(cfg.runtime.device)
    tokenizer = tokenizer_for(cfg.data, cfg.model.name, cfg.model.path, cfg.pretrain,
                              cfg.seeds[0])  # fmt: skip
    data = dataset(cfg.data, tokenizer, run_dir, max_rows=preview)
    n_train = len(data.y_train)
    if preview is not None and cfg.recipe.epochs is not None:
        n_train = len(dataset(cfg.data, tokenizer, run_dir).y_train)
    n_pretrain = None
    pre_tok = None
    if cfg.pretrain is not None:
        pre_tok = tokenizer_for(cfg.pretrain.data, cfg.model.name, cfg.model.path, cfg.pretrain,
                                cfg.seeds[0])  # fmt: skip
        if cfg.pretrain.recipe.epochs is not None:
            n_pretrain = len(dataset(cfg.pretrain.data, pre_tok, run_dir).y_train)
    cfg, notes = settled(cfg, n_train, n_pretrain)
    out = Resolved(cfg, device, tokenizer, n_train, (), tuple(notes), preview=preview)
    if not check:
        return out
    if cfg.pretrain is not None:  # a fine-tuning config is two runs: each is checked
        from_here = cfg.pretrain.folders is None
        pre = resolve(pretrain_config(cfg), run_dir) if from_here else None
        first = cfg.pretrain.folders[0] if not from_here else (0, None)  # type: ignore[index]
        fine = resolve(finetune_config(cfg, *first), run_dir)
        return replace(out, warnings=fine.warnings, pretrain=pre, finetune=fine)
    check_device(cfg, device, out.gpus())
    check_recipe(cfg, data)
    warnings, parameters = model_warnings(cfg, data, out.loss_fn())
    return replace(out, warnings=warnings, census=parameters)


# ---- the two runs of a fine-tuning config (paper section 4.4) -------------------------------


def pretrain_config(cfg: RunConfig) -> RunConfig:
    """The pre-training run: the sweep's model on ``pretrain.data`` with ``pretrain.recipe``,
    one parent per seed (its saved states are the checkpoints)."""
    assert cfg.pretrain is not None
    raw = cfg.to_dict()
    raw["data"] = cfg.pretrain.data.model_dump()
    raw["recipe"] = cfg.pretrain.recipe.model_dump()
    raw["pretrain"] = None
    raw["threshold"] = None  # pre-training is one parent per seed; only fine-tuning searches
    raw["model"]["init_from"] = None
    raw["perturb"] = {"times": [0.0], "steps": []}
    raw["name"] = f"{cfg.name}-pretrain"
    return build_config(raw)


def finetune_config(cfg: RunConfig, step: int, start: str | None) -> RunConfig:
    """The sweep that fine-tunes from the checkpoint of pre-training step ``step``, whose
    weights are at ``start`` (None: random initialisation, or a Hugging Face model as
    loaded). A Hugging Face folder becomes ``model.path``; any other checkpoint
    ``model.init_from`` (a template with ``{seed}`` when each seed has its own)."""
    assert cfg.pretrain is not None
    raw = cfg.to_dict()
    raw["pretrain"] = None
    raw["name"] = f"{cfg.name}-from{step}"
    given = dict(cfg.pretrain.folders or [])
    if step in given and cfg.model.name == "hf":
        raw["model"]["path"] = str(Path(given[step]).expanduser())
    elif step in given:
        raw["model"]["init_from"] = str(Path(given[step]).expanduser())
    else:
        raw["model"]["init_from"] = start
    return build_config(raw)

