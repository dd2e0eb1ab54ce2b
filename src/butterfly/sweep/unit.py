"""The work itself: a parent run per seed, and one population unit per (seed, t).

These functions are what executors call, in-process or in a worker process. They read the
config and the parent's checkpoints, write checkpoints atomically, and return result rows; only
the driver writes the results store.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from butterfly.config import RunConfig
from butterfly.data import BatchStream, Dataset, independent_batch, load_dataset
from butterfly.divergence import Comparer
from butterfly.metrics import is_finite, l2_distance, l2_norm
from butterfly.models import ParamInfo, build_model, model_spec, param_info
from butterfly.perturb import (
    Perturbation,
    apply_perturbation,
    eligible,
    gaussian_direction,
    make_mask,
    scale_direction,
)
from butterfly.rng import derive_seed
from butterfly.sweep.checkpoint import load_checkpoint, save_checkpoint
from butterfly.sweep.plan import ChildSpec, Unit
from butterfly.train import Population, PopulationTrainer
from butterfly.train.population import Lane, clone, member, member_state
from butterfly.train.recipe import apply_update, clip_per_member, lr_at

Tensors = dict[str, torch.Tensor]


def configure_torch(threads: int) -> None:
    """Deterministic algorithms and a fixed intra-op thread count (recorded with each run)."""
    torch.set_num_threads(threads)
    # torch.use_deterministic_algorithms(True) also sets an inductor flag, and importing
    # inductor costs ~2.5 s per process; nothing here compiles, so set the switch directly.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is not None:
        setter(True, warn_only=False)
    else:  # pragma: no cover - other torch versions
        torch.use_deterministic_algorithms(True)
    assert torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def environment(cfg: RunConfig) -> dict[str, Any]:
    """What a run's numbers depend on besides its config."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": cfg.runtime.device,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


@dataclass
class Context:
    """Everything a worker builds once per (config, seed): data, model template, trainer."""

    cfg: RunConfig
    seed: int
    data: Dataset
    model: nn.Module
    init: Tensors
    info: dict[str, ParamInfo]
    trainer: PopulationTrainer
    spec: dict[str, Any] = field(default_factory=dict)
    comparer: Comparer | None = None
    state_t: dict[str, Tensors] = field(default_factory=dict)  # the parent's optimizer state at t
    noise_sizes: dict[tuple[int, float, int], float] = field(default_factory=dict)


@lru_cache(maxsize=4)
def _dataset(data_json: str, device: str, tokenizer: str | None = None) -> Dataset:
    from butterfly.config import DataConfig

    return load_dataset(DataConfig.model_validate_json(data_json), tokenizer).to(device)


def make_context(cfg: RunConfig, seed: int) -> Context:
    device = cfg.runtime.device
    data = _dataset(cfg.data.model_dump_json(), device, cfg.tokenizer_path())
    model = build_model(cfg.model, data.input_shape, data.n_classes, seed).to(device)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    stream = BatchStream(len(data.y_train), cfg.recipe.batch_size, seed)
    trainer = PopulationTrainer(model, data, stream, cfg.recipe, cfg.runtime.mode, cfg.data.augment)
    return Context(
        cfg,
        seed,
        data,
        model,
        init,
        param_info(model),
        trainer,
        model_spec(cfg.model, data.input_shape, data.n_classes),
        Comparer(model, data, cfg.eval, seed),
    )


def parent_path(run_dir: Path, seed: int, t: int) -> Path:
    return run_dir / "parents" / f"seed{seed}" / f"step{t:07d}.safetensors"


def member_path(run_dir: Path, seed: int, t: int, name: str) -> Path:
    return run_dir / "checkpoints" / f"seed{seed}" / f"t{t:07d}" / f"{name}.safetensors"


# ---- the parent ----------------------------------------------------------------------------


def run_parent(
    cfg: RunConfig, seed: int, run_dir: Path, steps: list[int] | None = None
) -> dict[str, Any]:
    """Train the parent of ``seed`` once, saving its full state at every perturbation time t
    (or at ``steps``, e.g. pre-training checkpoints; the last may be the final step T).

    Resumes from the latest saved state; never retrains past what is saved.
    """
    start = time.perf_counter()
    ctx = make_context(cfg, seed)
    ts = sorted(steps) if steps is not None else cfg.perturbation_steps()
    missing = [t for t in ts if not parent_path(run_dir, seed, t).is_file()]
    if not missing:
        return {"seed": seed, "steps": 0, "wall_s": time.perf_counter() - start}
    saved = [t for t in ts if t < missing[0]]
    if saved:
        params, state, _ = load_checkpoint(parent_path(run_dir, seed, saved[-1]))
        pop = Population.from_members(["parent"], [params], [state], saved[-1])
    else:
        pop = Population.fresh(cfg.recipe, ctx.init)
    first = pop.step

    def save(step: int, p: Population) -> None:
        path = parent_path(run_dir, seed, step)
        if not path.is_file():
            save_checkpoint(
                path,
                member(p.params, 0),
                member_state(p.state, 0),
                {"seed": seed, "step": step, "model_spec": ctx.spec, "role": "parent"},
            )

    ctx.trainer.train(pop, max(missing), record=missing, on_record=save)
    if bool(pop.diverged.any()):
        raise FloatingPointError(
            f"the parent of seed {seed} diverged (non-finite loss) before step {max(missing)}; "
            "lower recipe.lr or check the data"
        )
    return {"seed": seed, "steps": max(missing) - first, "wall_s": time.perf_counter() - start}


# ---- a population unit ---------------------------------------------------------------------


def _perturbation(ctx: Context, params_t: Tensors, child: ChildSpec, t: int) -> Perturbation:
    p = ctx.cfg.perturb
    names = eligible(ctx.info, p.mask)
    shapes = {n: params_t[n].shape for n in names}
    key = (ctx.seed, t, child.direction)
    mask = make_mask(shapes, names, child.fraction, *key, p.mask)
    if child.kind == "gaussian":
        direction = gaussian_direction(shapes, ctx.info, names, *key)
    elif child.kind == "batch":
        n = len(ctx.data.y_train)
        idx = independent_batch(n, p.batch_size or ctx.cfg.recipe.batch_size, *key)
        idx = idx.to(ctx.data.x_train.device)
        grads = ctx.trainer.single_gradient(
            params_t, ctx.data.x_train[idx], ctx.data.y_train[idx], ("perturb", *key)
        )
        direction = {k: grads[k].detach().cpu() for k in names}
    else:
        raise ValueError(f"unknown perturbation kind '{child.kind}'")
    pert = scale_direction(direction, mask, ctx.info, p.normalize)
    if p.scale == "sgd_noise":
        # one estimate per (t, mask): batch and gaussian children share it
        key_noise = (t, child.fraction, child.direction)
        if key_noise not in ctx.noise_sizes:
            ctx.noise_sizes[key_noise] = sgd_noise_size(ctx, params_t, t, list(mask), mask)
        size = ctx.noise_sizes[key_noise]
        norm = l2_norm(pert.eps)
        pert = Perturbation(
            {k: v * (size / norm) for k, v in pert.eps.items()}, pert.n_masked, size
        )
    return pert


def sgd_noise_size(
    ctx: Context, params_t: Tensors, t: int, names: list[str], mask: dict[str, torch.Tensor]
) -> float:
    """Expected L2 distance, on the masked weights, between two copies of the parent at t after
    each takes one optimizer step on an independent batch (paper Figure 10 right): the mean
    over ``perturb.noise_pairs`` pairs of batches. The optimizer state is the parent's."""
    cfg = ctx.cfg
    n = len(ctx.data.y_train)
    state_t = ctx.state_t
    sizes = []
    for i in range(cfg.perturb.noise_pairs):
        stepped = []
        for j in (0, 1):
            key = ("sgd-noise", ctx.seed, t, i, j)
            idx = independent_batch(n, cfg.recipe.batch_size, *key).to(ctx.data.x_train.device)
            g = ctx.trainer.single_gradient(
                params_t, ctx.data.x_train[idx], ctx.data.y_train[idx], key
            )
            p = {k: v.detach().clone().unsqueeze(0) for k, v in params_t.items()}
            st = {s: {k: v.clone().unsqueeze(0) for k, v in d.items()} for s, d in state_t.items()}
            grads = {k: v.detach().unsqueeze(0) for k, v in g.items()}
            if cfg.recipe.grad_clip is not None:
                clip_per_member(grads, cfg.recipe.grad_clip)
            apply_update(cfg.recipe, p, grads, st, t)
            stepped.append(p)
        d2 = sum(
            float(
                (
                    (stepped[0][k][0] - stepped[1][k][0]).double()
                    * mask[k].to(stepped[0][k].device).double()
                )
                .square()
                .sum()
            )
            for k in names
        )
        sizes.append(d2**0.5)
    return sum(sizes) / len(sizes)


def child_lr(cfg: RunConfig, t: int) -> Callable[[int], float] | None:
    """The children's schedule when it differs from the original's (workshop variants).

    * ``lr_rewind``: the schedule restarts at t, as for a fresh run of the children's length
      (warm-up included), so the step after the perturbation has the initial learning rate.
    * ``child_steps = T_after_t`` alone: the schedule of a run of t + T steps, so the children
      anneal over their longer run.
    """
    end = cfg.child_end(t)
    if cfg.perturb.lr_rewind:
        rewound = cfg.recipe.model_copy(update={"steps": end - t})
        return lambda s: lr_at(rewound, s - t)
    if end != cfg.recipe.steps:
        longer = cfg.recipe.model_copy(update={"steps": end})
        return lambda s: lr_at(longer, s)
    return None


def spawn_stream(ctx: Context, t: int, direction: int) -> BatchStream:
    """The independent batch stream of a spawned child (Frankle et al.), keyed by (seed, t, d)."""
    return BatchStream(
        len(ctx.data.y_train),
        ctx.cfg.recipe.batch_size,
        derive_seed("spawn", ctx.seed, t, direction),
        "spawn-order",
    )


def make_lanes(
    ctx: Context, unit: Unit, member_params: list[Tensors], state_t: dict[str, Tensors]
) -> tuple[list[Lane], list[int]]:
    """Group a unit's members into lanes, and the order that maps the lanes' concatenated
    members back to ``unit.members``. The original and the control always share lane 0."""
    cfg = ctx.cfg
    t = unit.t
    lr = child_lr(cfg, t)
    end = cfg.child_end(t)
    same = lr is None and end == cfg.recipe.steps
    groups: list[tuple[list[int], int, Callable[[int], float] | None, BatchStream | None]] = []
    main = [i for i, c in enumerate(unit.members) if c.kind in ("original", "control")]
    treated = [i for i, c in enumerate(unit.members) if c.kind in ("batch", "gaussian")]
    if same:
        main += treated
    groups.append((main, cfg.recipe.steps, None, None))
    if not same and treated:
        groups.append((treated, end, lr, None))
    for i, c in enumerate(unit.members):
        if c.kind == "spawn":
            groups.append(([i], end, lr, spawn_stream(ctx, t, c.direction)))
    lanes = []
    order: list[int] = []
    for idx, until, lane_lr, stream in groups:
        pop = Population.from_members(
            [unit.members[i].name for i in idx],
            [member_params[i] for i in idx],
            [{s: clone(d) for s, d in state_t.items()} for _ in idx],
            t,
        )
        lanes.append(Lane(pop, until, lane_lr, stream))
        order += idx
    inverse = [order.index(i) for i in range(len(unit.members))]
    return lanes, inverse


def gather(lanes: list[Lane], inverse: list[int]) -> tuple[Tensors, list[bool]]:
    """The members of all lanes as one stacked dict (in ``unit.members`` order) and their
    divergence flags."""
    if len(lanes) == 1:
        return lanes[0].pop.params, lanes[0].pop.diverged.tolist()
    index = torch.tensor(inverse)
    params = {
        k: torch.cat([lane.pop.params[k] for lane in lanes])[index.to(v.device)]
        for k, v in lanes[0].pop.params.items()
    }
    diverged = torch.cat([lane.pop.diverged for lane in lanes])[index].tolist()
    return params, diverged


@dataclass
class UnitResult:
    seed: int
    t: int
    rows: list[dict[str, Any]]
    trajectory: list[dict[str, Any]]
    proxy: list[dict[str, Any]]
    steps: int
    wall_s: float
    population: int


def run_unit(cfg: RunConfig, unit: Unit, run_dir: Path, reporter: Any = None) -> UnitResult:
    """Train one population from the parent's state at t to T and measure every child."""
    start = time.perf_counter()
    ctx = make_context(cfg, unit.seed)
    T = cfg.recipe.steps
    params_t, state_t, _ = load_checkpoint(parent_path(run_dir, unit.seed, unit.t))
    device = cfg.runtime.device
    params_t = {k: v.to(device) for k, v in params_t.items()}
    state_t = {s: {k: v.to(device) for k, v in d.items()} for s, d in state_t.items()}

    ctx.state_t = state_t
    cache: dict[tuple[str, float, int], Perturbation] = {}
    member_params: list[Tensors] = []
    noise: list[tuple[float, int]] = []
    for child in unit.members:
        p = clone(params_t)
        if child.kind in ("batch", "gaussian"):
            k = (child.kind, child.fraction, child.direction)
            if k not in cache:
                cache[k] = _perturbation(ctx, params_t, child, unit.t)
            pert = cache[k]
            apply_perturbation(p, pert, child.sigma)
            noise.append((child.sigma * l2_norm(pert.eps), pert.n_masked))
        else:
            noise.append((0.0, 0))
        member_params.append(p)
    lanes, inverse = make_lanes(ctx, unit, member_params, state_t)
    trajectory: list[dict[str, Any]] = []

    def record(step: int, lanes: list[Lane]) -> None:
        params, diverged = gather(lanes, inverse)
        to_orig, from_init = distances(params, ctx.init)
        bars: list[float | None] = [None] * len(unit.members)
        if cfg.eval.trajectory_barriers and ctx.comparer is not None:
            a = member(params, 0)
            for i in range(1, len(unit.members)):
                if not diverged[i]:
                    bars[i] = ctx.comparer.train_loss_barrier(a, member(params, i))
        for i, child in enumerate(unit.members):
            trajectory.append(
                {
                    "seed": unit.seed, "t": unit.t, "member": child.name, "kind": child.kind,
                    "sigma": child.sigma, "step": step, "l2_to_original": to_orig[i],
                    "l2_from_init": from_init[i], "barrier_train_loss": bars[i],
                }
            )  # fmt: skip

    end = max(lane.until for lane in lanes)
    marks = log_spaced_steps(unit.t, end, cfg.eval.trajectory_points)
    every = max(1, (end - unit.t) // 50)

    def report(step: int) -> None:
        if step % every == 0:
            reporter.put((unit.seed, unit.t, step))

    ctx.trainer.train_lanes(
        lanes, record=marks, on_record=record, on_step=report if reporter is not None else None
    )
    params, diverged = gather(lanes, inverse)
    member_steps = sum((lane.until - unit.t) * lane.pop.size for lane in lanes)
    finals = [member(params, i) for i in range(len(unit.members))]
    if cfg.runtime.checkpoints:
        for i, child in enumerate(unit.members):
            save_checkpoint(
                member_path(run_dir, unit.seed, unit.t, child.name),
                finals[i],
                None,
                {
                    "model_spec": ctx.spec,
                    "seed": unit.seed,
                    "t": unit.t,
                    "step": T,
                    "member": child.name,
                    "kind": child.kind,
                    "sigma": child.sigma,
                    "fraction": child.fraction,
                    "direction": child.direction,
                    "data": cfg.data.model_dump(),
                    "eval": cfg.eval.model_dump(),
                },
            )
    rows = measure(ctx, unit, finals, diverged, noise)
    proxy: list[dict[str, Any]] = []
    fractions = cfg.eval.proxy_fractions
    if fractions and unit.t == cfg.perturbation_steps()[0] and not diverged[0]:
        assert ctx.comparer is not None
        proxy = [
            {"seed": unit.seed, **r}
            for r in ctx.comparer.permutation_proxy(finals[0], fractions, unit.seed)
        ]
    wall = time.perf_counter() - start
    for r in rows:
        r["unit_wall_s"] = wall
    return UnitResult(
        unit.seed, unit.t, rows, trajectory, proxy, member_steps, wall, len(unit.members)
    )


def log_spaced_steps(t: int, T: int, n: int) -> list[int]:
    """``t``, ``T`` and about ``n`` steps between them, log-spaced in the steps after t."""
    if n <= 0:
        return []
    import numpy as np

    offsets = np.unique(np.round(np.geomspace(1, T - t, num=n)).astype(int)) if t < T else []
    return sorted({t, T, *(t + int(o) for o in offsets)})


@torch.no_grad()
def distances(params: Tensors, init: Tensors) -> tuple[list[float], list[float]]:
    """Per member: L2 to member 0 (the original) and L2 from the initialisation, in float64."""
    to_orig = None
    from_init = None
    for k, v in params.items():
        v64 = v.to(torch.float64).flatten(1)
        a = (v64 - v64[:1]).square().sum(1)
        b = (v64 - init[k].to(torch.float64).flatten().to(v.device)).square().sum(1)
        to_orig = a if to_orig is None else to_orig + a
        from_init = b if from_init is None else from_init + b
    assert to_orig is not None and from_init is not None
    return to_orig.sqrt().tolist(), from_init.sqrt().tolist()


def measure(
    ctx: Context,
    unit: Unit,
    finals: list[Tensors],
    diverged: list[bool],
    noise: list[tuple[float, int]],
) -> list[dict[str, Any]]:
    """One row per non-original member: every divergence measure against the original."""
    assert ctx.comparer is not None
    cmp = ctx.comparer
    T = ctx.cfg.recipe.steps
    a = finals[0]
    a_ok = not diverged[0] and is_finite(a)
    ea = cmp.endpoint(a) if a_ok else None
    feats_a = cmp.features(a) if a_ok and ctx.cfg.eval.cka else None
    rows: list[dict[str, Any]] = []
    for i, child in enumerate(unit.members):
        if i == 0:
            continue
        b = finals[i]
        row: dict[str, Any] = {
            "seed": ctx.seed,
            "kind": child.kind,
            "t": unit.t,
            "t_frac": unit.t / T,
            "sigma": child.sigma,
            "fraction": child.fraction,
            "direction": child.direction,
            "control": int(child.control),
            "member": child.name,
            "noise_l2": noise[i][0],
            "n_perturbed": noise[i][1],
        }
        ok = a_ok and not diverged[i] and is_finite(b)
        row["diverged"] = int(not ok)
        if ok:
            row.update(cmp.compare(a, b, ea, feats_a))
            row["l2_init_a"] = l2_distance(a, ctx.init)
            row["l2_init_b"] = l2_distance(b, ctx.init)
        rows.append(row)
    return rows
