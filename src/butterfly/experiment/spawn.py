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
from butterfly.experiment import rows
from butterfly.experiment.measure import (
    original_measures,
    same_bits,
    training_row,
    trajectory_rows,
)
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


LaneSpec = tuple[list[int], int, Callable[[int], float] | None, BatchStream | None, str | None]


def lane_specs(
    setup: Setup, members: tuple[Member, ...], t: int, main_size: int | None = None
) -> list[LaneSpec]:
    """Who of a population's ``members`` (perturbed at ``t``) trains in which lane: (member
    indices, until, schedule, batch stream, code path). The first lane is the main one (the
    original's schedule and batches): it holds the original and the control, and the
    perturbed children when they train as the original does. ``main_size``: the size of the
    main lane's population, when it is more than its members here (a twin's code path is
    another than the main lane's)."""
    cfg = setup.cfg
    lr = child_lr(cfg, t)
    end = cfg.child_end(t)
    same = lr is None and end == cfg.recipe.steps
    main = [i for i, c in enumerate(members) if c.kind in ("original", "control")]
    treated = [i for i, c in enumerate(members) if c.kind in ("batch", "gaussian")]
    if same:
        main += treated
    specs: list[LaneSpec] = [(main, cfg.recipe.steps, None, None, None)]
    if not same and treated:
        specs.append((treated, end, lr, None, None))
    for i, c in enumerate(members):
        if c.kind == "spawn":
            specs.append(([i], end, lr, spawn_stream(setup, t, c.direction), None))
        if c.kind == "twin":  # the original's schedule and batches, another code path
            specs.append(([i], cfg.recipe.steps, None, None,
                          twin_mode(setup, main_size or len(main))))  # fmt: skip
    return specs


def make_lanes(
    setup: Setup,
    members: tuple[Member, ...],
    t: int,
    member_params: list[Tensors],
    state_t: OptState,
) -> tuple[list[Lane], list[int]]:
    """Group a population's members into lanes, and the order that maps the lanes'
    concatenated members back to ``members``. The original and the control share lane 0."""
    lanes = []
    order: list[int] = []
    for idx, until, lane_lr, stream, mode in lane_specs(setup, members, t):
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


def perturbed(
    perturber: Perturber, members: tuple[Member, ...], params_t: Tensors
) -> tuple[list[Tensors], dict[str, tuple[float, int]], dict[str, str]]:
    """Each member's weights at t (a copy of ``params_t``, perturbed for a batch or Gaussian
    child), leaving out the children whose perturbation is undefined; the noise each was
    given (‖σε‖, weights perturbed) and, for those left out, why."""
    member_params: list[Tensors] = []
    noise_of: dict[str, tuple[float, int]] = {}
    undefined: dict[str, str] = {}
    for m in members:
        p = clone(params_t)
        noise_of[m.name] = (0.0, 0)
        if m.kind in ("batch", "gaussian"):
            try:
                pert = perturber.perturbation(m.kind, m.fraction, m.direction)
            except FloatingPointError as err:
                undefined[m.name] = str(err)
                continue
            apply_perturbation(p, pert, m.sigma)
            noise_of[m.name] = (m.sigma * l2_norm(pert.eps), pert.n_masked)
        member_params.append(p)
    return member_params, noise_of, undefined


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
    member_params, noise_of, undefined = perturbed(perturber, members, params_t)
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


# ---- one original for every t: a seed's populations joined --------------------------------


@dataclass
class JoinedRun:
    """A seed's populations trained as one (:func:`run_joined`): one
    :class:`PopulationRun` per perturbation time, the original's state at each t (with
    ``keep_states``), and the member-steps trained in all."""

    runs: dict[int, PopulationRun]
    states: dict[int, tuple[Tensors, OptState]]
    member_steps: int


def run_joined(
    setup: Setup,
    joinings: list[tuple[int, tuple[Member, ...]]],
    start: tuple[Tensors, OptState, int] | None = None,
    on_state: Callable[[int, Tensors, OptState], None] | None = None,
    state_steps: tuple[int, ...] = (),
    on_step: Callable[[int], None] | None = None,
    reference: bool = True,
    keep_states: bool = False,
) -> JoinedRun:
    """Train one original from θ0 (or from ``start`` = (params, optimizer state, step)) to
    T, and let the members of every perturbation time join its population at their t:
    ``joinings`` holds (t, [original, control, children...]) as a unit does.

    At t the members are made from the original's state at that step (weights, optimizer
    state, running statistics; children perturbed as :func:`run_population` does) and train
    in the same population as the original from then on, in lanes as
    :func:`make_lanes` groups them: the original's lane grows, lanes with another schedule or
    batch stream start at t. So every member is compared with the original it lives beside,
    and each t's σ = 0 control proves that joining and training beside others changed no bit;
    the sweep trains its minimum of member-steps (one original per seed, not one per t).
    Each member's arithmetic is independent of the others' on CPU, so every t's numbers equal
    those of a population of its own started from the same state.

    ``on_state(step, params, state)`` receives the original's state at every step of
    ``state_steps`` (the parent's checkpoints). Without ``reference`` (a later piece of a seed
    whose children are split over workers, whose original repeats the first piece's), the
    original's training curve and trajectory rows are not measured.
    """
    cfg, cmp = setup.cfg, setup.comparer
    T = cfg.recipe.steps
    if start is None:
        pop = Population.fresh(setup.trainer.update, setup.init, name="original")
    else:
        params0, state0, step0 = start
        pop = Population.from_members(["original"], [clone(params0)],
                                      [{s: clone(d) for s, d in state0.items()}], step0)  # fmt: skip
    first = pop.step
    groups = {t: members for t, members in joinings}
    if any(t < first for t in groups) or any(m[0].kind != "original" for m in groups.values()):
        raise ValueError("members join the original at or after its starting step")
    setup.trainer.running_of(pop)  # BatchNorm's statistics are part of the state handed out
    lanes = [Lane(pop, T)]
    lanes[0].losses = []  # the original's minibatch losses: its training curve
    where: dict[tuple[int, str], tuple[int, int]] = {}
    joined: dict[int, tuple[Member, ...]] = {}
    noise: dict[tuple[int, str], tuple[float, int]] = {}
    undefined: dict[tuple[int, str], str] = {}
    states: dict[int, tuple[Tensors, OptState]] = {}
    steps_of: dict[int, int] = {}
    traj_marks: dict[int, list[int]] = {}
    curve_marks: dict[int, list[int]] = {}
    trajectory: dict[int, list[dict[str, Any]]] = {t: [] for t in groups}
    training: dict[int, list[dict[str, Any]]] = {t: [] for t in groups}
    last_mark: dict[int, int] = {}
    hand_out = set(state_steps)

    def join(t: int, lanes: list[Lane]) -> None:
        members = groups[t]
        params_t = clone(member(pop.params, 0))
        state_t = {s: clone(d) for s, d in member_state(pop.state, 0).items()}
        if keep_states:
            states[t] = (params_t, state_t)
        member_params, noise_of, why = perturbed(Perturber(setup, params_t, state_t, t),
                                                 members, params_t)  # fmt: skip
        noise.update({(t, n): v for n, v in noise_of.items()})
        undefined.update({(t, n): v for n, v in why.items()})
        defined = tuple(m for m in members if m.name not in why)
        joined[t] = defined
        joining_main = len(lane_specs(setup, defined, t)[0][0]) - 1  # all but the original
        specs = lane_specs(setup, defined, t, main_size=pop.size + joining_main)
        where[(t, "original")] = (0, 0)
        steps = 0
        for k, (idx, until, lane_lr, stream, mode) in enumerate(specs):
            idx = [i for i in idx if i != 0]  # the original is already there
            if not idx:
                continue
            names = [defined[i].name for i in idx]
            own = [member_params[i] for i in idx]
            own_states = [{s: clone(d) for s, d in state_t.items()} for _ in idx]
            if k == 0:
                at = pop.size
                pop.join(names, own, own_states)
                where.update({(t, n): (0, at + j) for j, n in enumerate(names)})
            else:
                lanes.append(Lane(Population.from_members(names, own, own_states, t), until,
                                  lane_lr, stream, mode=mode))  # fmt: skip
                where.update({(t, n): (len(lanes) - 1, j) for j, n in enumerate(names)})
            steps += (until - t) * len(idx)
        steps_of[t] = steps
        last_mark[t] = t

    def before(step: int, lanes: list[Lane]) -> None:
        if step in hand_out and on_state is not None:
            on_state(step, member(pop.params, 0), member_state(pop.state, 0))
        if step in groups:
            join(step, lanes)

    def select(t: int, lanes: list[Lane]) -> tuple[Tensors, list[bool], Tensors | None]:
        """The stacked weights, divergence flags and running statistics of t's members."""
        at = [where[(t, m.name)] for m in joined[t]]
        params = {k: torch.stack([lanes[a].pop.params[k][i] for a, i in at])
                  for k in pop.params}  # fmt: skip
        flags = [lane.pop.diverged.tolist() for lane in lanes]
        running = None
        if RUNNING in pop.state:
            running = {k: torch.stack([lanes[a].pop.state[RUNNING][k][i] for a, i in at])
                       for k in pop.state[RUNNING]}  # fmt: skip
        return params, [flags[a][i] for a, i in at], running

    def record(step: int, lanes: list[Lane]) -> None:
        measured: dict[str, Any] | None = None
        for t in joined:
            if step in traj_marks[t]:
                params, diverged, running = select(t, lanes)
                trajectory[t].extend(trajectory_rows(
                    cmp, setup.init, setup.seed, joined[t], t, step, params, diverged,
                    skip=0 if reference else 1, running=running))  # fmt: skip
            if not reference or step not in curve_marks[t]:
                continue
            losses = lanes[0].losses or []
            recent = losses[last_mark[t] - first : step - first]
            last_mark[t] = step
            batch_loss = float(torch.stack([x[0] for x in recent]).double().mean()) \
                if recent else None  # fmt: skip
            if measured is None:
                running = pop.state.get(RUNNING)
                original = carrying(pop.params, running, 0)
                measured = original_measures(cmp, original, bool(pop.diverged[0]))
            training[t].append(rows.make_row("training", seed=setup.seed, t=t, step=step,
                                             batch_loss=batch_loss, **measured))  # fmt: skip

    for t, members in groups.items():  # every t's marks, from its lanes' ends
        end = max(spec[1] for spec in lane_specs(setup, members, t))
        traj_marks[t] = log_spaced_steps(t, end, cfg.eval.trajectory_points)
        curve_marks[t] = traj_marks[t] or log_spaced_steps(t, end, CURVE_POINTS)
    marks = sorted({s for t in groups for s in (*traj_marks[t], *curve_marks[t])})
    setup.trainer.train_lanes(lanes, record=marks, on_record=record, on_step=on_step,
                              before=before)  # fmt: skip
    runs: dict[int, PopulationRun] = {}
    for k, t in enumerate(sorted(groups)):
        params, diverged, running = select(t, lanes)
        index = {m.name: i for i, m in enumerate(joined[t])}
        trained = []
        for m in groups[t]:
            n_l2, n_perturbed = noise[(t, m.name)]
            if m.name in index:
                i = index[m.name]
                lane = lanes[where[(t, m.name)][0]]
                trained.append(TrainedMember(m, carrying(params, running, i), diverged[i], n_l2,
                                             n_perturbed, lane.until))  # fmt: skip
            else:
                trained.append(TrainedMember(m, None, True, n_l2, n_perturbed, t,
                                             undefined=undefined[(t, m.name)]))  # fmt: skip
        assert trained[0].final is not None
        runs[t] = PopulationRun(
            members=trained, originals=[trained[0].final], trajectory=trajectory[t],
            training=training[t],
            member_steps=steps_of[t] + ((T - first) if k == 0 else 0),
        )  # fmt: skip
    return JoinedRun(runs, states, sum(r.member_steps for r in runs.values()))
