"""Spawning (DESIGN contract 3): the parent run, and the population that starts from it at t.

One parent per seed is trained once, from θ0 to the last perturbation time, and its full state
(weights, optimizer state; the schedule position is the step) is handed out at every t. A
*population* is then started from the parent's state at t:

    [original continuation, sigma = 0 control, perturbed children..., spawned children...]

Every child is perturbed once (:class:`~butterfly.experiment.perturb.Perturber`) and all
members train on the same batches to T (or, in the workshop variants, for longer or with a
rewound learning rate), in *lanes*: groups of members that step together with one schedule and
one batch stream. The original and the control always share lane 0, so the control proves the
arithmetic exact. Nothing here reads or writes files: callers give the parent's state and
receive the trained members.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from butterfly.config import RunConfig
from butterfly.data import BatchStream
from butterfly.experiment.measure import same_bits, training_row, trajectory_rows
from butterfly.experiment.members import TWIN_REFUSED, Member, TrainedMember
from butterfly.experiment.perturb import Perturber, apply_perturbation
from butterfly.experiment.setup import Setup
from butterfly.metrics import l2_norm
from butterfly.metrics.running import carrying
from butterfly.rng import derive_seed
from butterfly.train import Population
from butterfly.train.population import RUNNING, Lane, clone, member, member_state
from butterfly.train.recipe import OptState, lr_at

Tensors = dict[str, torch.Tensor]
CURVE_POINTS = 10  # the original's training curve without trajectories: log-spaced records


# ---- the parent ----------------------------------------------------------------------------


def train_parent(
    setup: Setup,
    record: list[int],
    start: tuple[Tensors, OptState, int] | None,
    on_state: Callable[[int, Tensors, OptState], None],
) -> int:
    """Train the parent from θ0 (or from ``start`` = (params, optimizer state, step)) to the
    last step of ``record``, handing its full state at every step of ``record`` to
    ``on_state``. Returns the steps trained."""
    if start is None:
        pop = Population.fresh(setup.trainer.update, setup.init)
    else:
        params, state, step = start
        pop = Population.from_members(["parent"], [params], [state], step)
    first = pop.step
    until = max(record)

    def hand_out(step: int, p: Population) -> None:
        on_state(step, member(p.params, 0), member_state(p.state, 0))

    setup.trainer.train(pop, until, record=record, on_record=hand_out)
    return until - first


# ---- lanes: who trains with which schedule and batches -------------------------------------


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


def spawn_stream(setup: Setup, t: int, direction: int) -> BatchStream:
    """The independent batch stream of a spawned child (Frankle et al.), keyed by (seed, t, d)."""
    return BatchStream(
        len(setup.data.y_train),
        setup.cfg.recipe.batch_size,
        derive_seed("spawn", setup.seed, t, direction),
        "spawn-order",
    )


def make_lanes(
    setup: Setup,
    members: tuple[Member, ...],
    t: int,
    member_params: list[Tensors],
    state_t: OptState,
) -> tuple[list[Lane], list[int]]:
    """Group a population's members into lanes, and the order that maps the lanes'
    concatenated members back to ``members``. The original and the control share lane 0."""
    cfg = setup.cfg
    lr = child_lr(cfg, t)
    end = cfg.child_end(t)
    same = lr is None and end == cfg.recipe.steps
    groups: list[tuple[list[int], int, Callable[[int], float] | None, BatchStream | None,
                       str | None]] = []  # fmt: skip
    main = [i for i, c in enumerate(members) if c.kind in ("original", "control")]
    treated = [i for i, c in enumerate(members) if c.kind in ("batch", "gaussian")]
    if same:
        main += treated
    groups.append((main, cfg.recipe.steps, None, None, None))
    if not same and treated:
        groups.append((treated, end, lr, None, None))
    for i, c in enumerate(members):
        if c.kind == "spawn":
            groups.append(([i], end, lr, spawn_stream(setup, t, c.direction), None))
        if c.kind == "twin":  # the original's schedule and batches, another code path
            groups.append(([i], cfg.recipe.steps, None, None, twin_mode(setup, len(main))))
    lanes = []
    order: list[int] = []
    for idx, until, lane_lr, stream, mode in groups:
        pop = Population.from_members(
            [members[i].name for i in idx],
            [member_params[i] for i in idx],
            [{s: clone(d) for s, d in state_t.items()} for _ in idx],
            t,
        )
        lanes.append(Lane(pop, until, lane_lr, stream, mode=mode))
        order += idx
    inverse = [order.index(i) for i in range(len(members))]
    return lanes, inverse


def twin_mode(setup: Setup, main_size: int) -> str:
    """The code path a twin trains with: another than the original's (a population of
    ``main_size``)."""
    mode = setup.trainer.twin_mode(main_size)
    if mode is None:
        raise ValueError(TWIN_REFUSED.format(model=setup.cfg.model.name))
    return mode


def gather(lanes: list[Lane], inverse: list[int]) -> tuple[Tensors, list[bool]]:
    """The members of all lanes as one stacked dict (in population order) and their
    divergence flags."""
    if len(lanes) == 1:
        return lanes[0].pop.params, lanes[0].pop.diverged.tolist()
    index = torch.tensor(inverse)
    flags = torch.cat([lane.pop.diverged.cpu() for lane in lanes])
    return _gathered([lane.pop.params for lane in lanes], index), flags[index].tolist()


def gather_running(lanes: list[Lane], inverse: list[int]) -> Tensors | None:
    """The members' running statistics (BatchNorm's) stacked in population order, or None for
    a model without them."""
    if RUNNING not in lanes[0].pop.state:
        return None
    parts = [lane.pop.state[RUNNING] for lane in lanes]
    return parts[0] if len(lanes) == 1 else _gathered(parts, torch.tensor(inverse))


def _gathered(parts: list[Tensors], index: torch.Tensor) -> Tensors:
    return {k: torch.cat([p[k] for p in parts])[index.to(v.device)] for k, v in parts[0].items()}


def log_spaced_steps(t: int, T: int, n: int) -> list[int]:
    """``t``, ``T`` and about ``n`` steps between them, log-spaced in the steps after t."""
    if n <= 0:
        return []
    offsets = np.unique(np.round(np.geomspace(1, T - t, num=n)).astype(int)) if t < T else []
    return sorted({t, T, *(t + int(o) for o in offsets)})


# ---- a population ---------------------------------------------------------------------------


@dataclass
class PopulationRun:
    """A trained population: one :class:`~butterfly.experiment.members.TrainedMember` per
    member (in population order), the original of each member chunk (one without chunking),
    the trajectory rows, the original's training curve and the member-steps trained.

    A child whose perturbation is undefined (its direction has norm 0 or is not finite, e.g.
    a batch gradient that vanished) is not trained: its ``final`` is None and ``undefined``
    says why."""

    members: list[TrainedMember]
    originals: list[Tensors]
    trajectory: list[dict[str, Any]]
    training: list[dict[str, Any]]
    member_steps: int

    @property
    def original(self) -> TrainedMember:
        return self.members[0]


OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def run_population(
    setup: Setup,
    members: tuple[Member, ...],
    t: int,
    params_t: Tensors,
    state_t: OptState,
    on_step: Callable[[int], None] | None = None,
    chunk: int | None = None,
) -> PopulationRun:
    """Perturb the children of ``members`` at the parent's state (``params_t``, ``state_t``) at
    step ``t``, train the whole population, and record its trajectories.

    ``chunk``: train at most this many children at once (memory). Every chunk is a population
    of its own [original, control, children...] on the same batches; each child is measured
    against the original of its own chunk, and each chunk's control must end bit-identical to
    that original (DESIGN contract 4: kernels may depend on the population's size on a GPU,
    so only a chunk's own members are compared). On CPU the result equals one population's,
    bit for bit. A CUDA out-of-memory error halves the chunk and starts the unit again.
    """
    perturber = Perturber(setup, params_t, state_t, t)
    children = list(members[2:])
    if chunk is None:
        chunk = auto_chunk(setup, len(children))
    while True:
        try:
            return _chunked(setup, members, children, t, params_t, state_t, perturber, on_step,
                            max(1, chunk))  # fmt: skip
        except OOM:
            if chunk <= 1:
                raise
            chunk = max(1, chunk // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def auto_chunk(setup: Setup, n_children: int) -> int:
    """``runtime.max_population``, else (on CUDA) as many children as 70% of the free memory
    holds, from a per-member estimate (weights, gradient, optimizer state, and activations of a
    batch measured on one member); on CPU every child at once."""
    cap = setup.cfg.runtime.max_population
    if cap is not None:
        return cap
    x = setup.data.x_train
    if not x.is_cuda:
        return max(n_children, 1)
    free, _ = torch.cuda.mem_get_info(x.device)
    params = sum(v.numel() * v.element_size() for v in setup.init.values())
    slots = 2 if setup.cfg.recipe.optimizer == "adamw" else 1
    torch.cuda.reset_peak_memory_stats(x.device)
    before = torch.cuda.memory_allocated(x.device)
    xb, yb = setup.trainer.batch(0)
    one = {k: v.unsqueeze(0) for k, v in setup.init.items()}
    setup.trainer.gradients(one, xb, yb, ("probe", 0))
    activations = max(torch.cuda.max_memory_allocated(x.device) - before, 0)
    per_member = params * (2 + slots) + activations
    return max(1, int(0.7 * free / max(per_member, 1)) - 2)


def _chunked(
    setup: Setup,
    members: tuple[Member, ...],
    children: list[Member],
    t: int,
    params_t: Tensors,
    state_t: OptState,
    perturber: Perturber,
    on_step: Callable[[int], None] | None,
    chunk: int,
) -> PopulationRun:
    if len(children) <= chunk:
        return _train(setup, members, t, params_t, state_t, perturber, on_step)
    original, control = members[0], members[1]
    runs = []
    for i in range(0, len(children), chunk):
        part = (original, control, *children[i : i + chunk])
        run = _train(setup, part, t, params_t, state_t, perturber, on_step if i == 0 else None,
                     reference=i == 0)  # the original's curve and rows: the first chunk's
        a, b = run.members[0].final, run.members[1].final
        if i and not (a is not None and b is not None and same_bits(a, b)):
            raise RuntimeError(
                f"the σ = 0 control of member chunk {i // chunk} did not end bit-identical to "
                "its original: training is not deterministic"
            )
        runs.append(run)
    originals = []
    trained: list[TrainedMember] = []
    for j, r in enumerate(runs):
        assert r.original.final is not None
        originals.append(r.original.final)
        trained += [replace(tm, chunk=j) for tm in (r.members if j == 0 else r.members[2:])]
    return PopulationRun(
        members=trained, originals=originals,
        trajectory=[p for r in runs for p in r.trajectory], training=runs[0].training,
        member_steps=sum(r.member_steps for r in runs),
    )  # fmt: skip


def _train(
    setup: Setup,
    members: tuple[Member, ...],
    t: int,
    params_t: Tensors,
    state_t: OptState,
    perturber: Perturber,
    on_step: Callable[[int], None] | None = None,
    reference: bool = True,
) -> PopulationRun:
    """One population, trained as one: [original, control, children...]. Without
    ``reference`` (a later member chunk, whose original and control repeat the first's), the
    original's training curve and the original's and control's trajectory rows are not
    measured."""
    all_members = members
    member_params: list[Tensors] = []
    noise_of: dict[str, tuple[float, int]] = {}
    undefined: dict[str, str] = {}
    for m in all_members:
        p = clone(params_t)
        if m.kind in ("batch", "gaussian"):
            try:
                pert = perturber.perturbation(m.kind, m.fraction, m.direction)
            except FloatingPointError as err:
                undefined[m.name] = str(err)
                noise_of[m.name] = (0.0, 0)
                continue
            apply_perturbation(p, pert, m.sigma)
            noise_of[m.name] = (m.sigma * l2_norm(pert.eps), pert.n_masked)
        else:
            noise_of[m.name] = (0.0, 0)
        member_params.append(p)
    # members' numbers do not depend on who else trains with them: leaving out the children
    # with no defined perturbation changes nothing for the others
    members = tuple(m for m in all_members if m.name not in undefined)
    lanes, inverse = make_lanes(setup, members, t, member_params, state_t)
    lanes[0].losses = []  # the original's minibatch losses (lane 0, member 0): its training curve
    trajectory: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    seen = [0]

    end = max(lane.until for lane in lanes)
    marks = log_spaced_steps(t, end, setup.cfg.eval.trajectory_points)
    curve_marks = marks or log_spaced_steps(t, end, CURVE_POINTS)  # the curve is always kept

    def record(step: int, lanes: list[Lane]) -> None:
        params, diverged = gather(lanes, inverse)
        running = gather_running(lanes, inverse)
        cmp, init = setup.comparer, setup.init
        if step in marks:
            trajectory.extend(trajectory_rows(cmp, init, setup.seed, members, t, step, params,
                                              diverged, skip=0 if reference else 2,
                                              running=running))  # fmt: skip
        if not reference:
            return
        recent = lanes[0].losses[seen[0] :] if lanes[0].losses is not None else []
        seen[0] += len(recent)
        batch_loss = float(torch.stack([x[0] for x in recent]).double().mean()) if recent else None
        original = carrying(params, running, 0)
        training.append(training_row(cmp, setup.seed, t, step, original, diverged[0], batch_loss))

    setup.trainer.train_lanes(lanes, record=curve_marks, on_record=record, on_step=on_step)
    params, diverged = gather(lanes, inverse)
    running = gather_running(lanes, inverse)
    until = {name: lane.until for lane in lanes for name in lane.pop.names}
    index = {m.name: i for i, m in enumerate(members)}
    trained = []
    for m in all_members:
        noise, n_perturbed = noise_of[m.name]
        if m.name in index:
            i = index[m.name]
            trained.append(TrainedMember(m, carrying(params, running, i), diverged[i], noise,
                                         n_perturbed, until[m.name]))  # fmt: skip
        else:
            trained.append(TrainedMember(m, None, True, noise, n_perturbed, t,
                                         undefined=undefined[m.name]))  # fmt: skip
    assert trained[0].final is not None
    return PopulationRun(
        members=trained,
        originals=[trained[0].final],
        trajectory=trajectory,
        training=training,
        member_steps=sum((lane.until - t) * lane.pop.size for lane in lanes),
    )
