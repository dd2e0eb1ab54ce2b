"""Population training: the members of one population share every batch and train as one.

A population is [original continuation, sigma = 0 control, children...], all started from the
parent's state at step t (DESIGN contract 3). Parameters and optimizer state are stacked along a
leading member axis. Three modes compute the per-member gradients:

* ``vmap``: ``torch.func.vmap(grad_and_value(loss))`` over the stacked parameters with
  ``functional_call``: one vectorised pass for any model.
* ``batched``: a hand-written batched forward/backward (``baddbmm``) for MLPs, the fastest.
* ``loop``: one ``grad_and_value`` call per member, for models that cannot be vectorised.

``auto`` picks ``batched`` for MLPs, otherwise ``vmap`` for populations and ``loop`` for a
single model (the parent).

In every mode each member's arithmetic is independent of the others, so an unperturbed member
stays bit-identical to the original within a population (checked by the control).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from butterfly.config import AugmentConfig, RecipeConfig
from butterfly.data import BatchStream, Dataset
from butterfly.data.augment import augment
from butterfly.layers import running_statistics, trainable
from butterfly.metrics.evaluate import Bound, LossFn, cross_entropy
from butterfly.rng import derive_seed
from butterfly.train.batched_mlp import BatchedMLP
from butterfly.train.recipe import (
    OptState,
    Tensors,
    Update,
    clip_per_member,
    init_state,
    lr_at,
    plain_update,
)

MODES = ("auto", "vmap", "batched", "loop")


def stack(members: list[Tensors]) -> Tensors:
    """Stack per-member parameter dicts along a new leading axis."""
    return {k: torch.stack([m[k] for m in members]) for k in members[0]}


def member(stacked: Tensors, i: int) -> Tensors:
    """Member ``i`` of a stacked dict (views, not copies)."""
    return {k: v[i] for k, v in stacked.items()}


def stack_state(states: list[OptState]) -> OptState:
    return {slot: stack([s[slot] for s in states]) for slot in states[0]}


def member_state(state: OptState, i: int) -> OptState:
    return {slot: member(v, i) for slot, v in state.items()}


def clone(tensors: Tensors) -> Tensors:
    return {k: v.detach().clone() for k, v in tensors.items()}


@dataclass
class Population:
    """Stacked parameters and optimizer state of ``len(names)`` members at ``step``."""

    names: list[str]
    params: Tensors
    state: OptState
    step: int
    diverged: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def __post_init__(self) -> None:
        if self.diverged.numel() != len(self.names):
            self.diverged = torch.zeros(len(self.names), dtype=torch.bool)

    @property
    def size(self) -> int:
        return len(self.names)

    @classmethod
    def from_members(
        cls, names: list[str], params: list[Tensors], states: list[OptState], step: int
    ) -> Population:
        return cls(list(names), stack(params), stack_state(states), step)

    @classmethod
    def fresh(
        cls, recipe: RecipeConfig | Update, params: Tensors, name: str = "parent"
    ) -> Population:
        """A population of one member at step 0 with zero optimizer state (``recipe``: the
        recipe, or the optimizer update itself)."""
        p = clone(params)
        return cls.from_members([name], [p], [init_state(recipe, p)], 0)

    def join(self, names: list[str], params: list[Tensors], states: list[OptState]) -> None:
        """Add members at the current step (appended after the others, which keep their
        indices): weights and optimizer state per member, not yet diverged."""
        if not names:
            return
        new = stack(params)
        self.params = {k: torch.cat([v, new[k].to(v.device)]) for k, v in self.params.items()}
        extra = stack_state(states)
        self.state = {slot: {k: torch.cat([v, extra[slot][k].to(v.device)])
                             for k, v in d.items()} for slot, d in self.state.items()}  # fmt: skip
        self.diverged = torch.cat([self.diverged.to(torch.device("cpu")),
                                   torch.zeros(len(names), dtype=torch.bool)])  # fmt: skip
        self.names = self.names + list(names)


@dataclass
class Lane:
    """Members that train in lockstep on one batch stream with one schedule, up to ``until``.

    A plain sweep has one lane. Variants add lanes: children that train longer or restart
    their learning-rate schedule (workshop), or that see an independent batch stream after t
    (Frankle et al.'s spawning baseline). Lanes advance step by step together, so trajectories
    can compare members of different lanes at the same step.
    """

    pop: Population
    until: int
    lr: Callable[[int], float] | None = None  # None: the recipe's schedule
    stream: BatchStream | None = None  # None: the trainer's (the parent's) stream
    losses: list[torch.Tensor] | None = None  # a list: every step's minibatch losses, kept
    mode: str | None = None  # None: the trainer's; else this code path (a twin's)


def cross_entropy_loss(
    model: nn.Module,
) -> Callable[[Tensors, torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(params: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(functional_call(model, params, (x,)), y)

    return loss


def takes_step(fn: Callable[..., Any]) -> bool:
    """Whether a loss function takes the step: ``loss_fn(model, batch, step)``."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    except (TypeError, ValueError):
        return False
    return len(params) >= 3 or "step" in inspect.signature(fn).parameters


def at_step(loss_fn: LossFn | None, step: int) -> LossFn | None:
    """A loss that takes the step, fixed at ``step`` (what measurement evaluates: the loss of
    the end of training); any other loss as it is."""
    if loss_fn is None or not takes_step(loss_fn):
        return loss_fn
    return lambda model, batch: loss_fn(model, batch, step)  # type: ignore[call-arg]


def user_loss(
    model: nn.Module, loss_fn: LossFn, step: Callable[[], int] = lambda: 0
) -> Callable[[Tensors, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The user's ``loss_fn(model, (x, y)[, step])`` as a function of the parameters: the
    model it receives runs with the (possibly stacked, vmapped) parameters being trained;
    ``step()`` is the step being trained (for step-dependent training)."""
    with_step = takes_step(loss_fn)

    def loss(params: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if with_step:
            return loss_fn(Bound(model, params), (x, y), step())  # type: ignore[call-arg]
        return loss_fn(Bound(model, params), (x, y))

    return loss


def plain_grad_and_value(
    fn: Callable[..., tuple[torch.Tensor, Any]],
) -> Callable[..., tuple[Tensors, tuple[torch.Tensor, Any]]]:
    """``torch.func.grad_and_value(fn, has_aux=True)`` for unstacked parameters, with plain
    autograd: the same operations and backward formulas, so bit-identical gradients, without
    torch.func's first call, which imports ``torch._dynamo`` (2 to 3 s in every worker
    process). Inputs the loss does not use get zero gradients, as under torch.func. Called
    inside a torch.func transform (Lyapunov's ``jvp`` through a step), it is torch.func's."""
    transformed = grad_and_value(fn, has_aux=True)
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor

    def run(params: Tensors, *args: Any) -> tuple[Tensors, tuple[torch.Tensor, Any]]:
        if any(wrapped(v) for v in params.values()):
            return transformed(params, *args)
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            loss, aux = fn(leaves, *args)
            found = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        grads = {k: torch.zeros_like(v) if g is None else g
                 for (k, v), g in zip(leaves.items(), found, strict=True)}  # fmt: skip
        if isinstance(aux, dict):
            aux = {k: v.detach() for k, v in aux.items()}
        return grads, (loss.detach(), aux)

    return run


RUNNING = "running"  # the optimizer-state slot that holds each member's running statistics


def with_running(
    loss: Callable[[Tensors, torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[Tensors, Tensors, torch.Tensor, torch.Tensor], tuple[torch.Tensor, Tensors]]:
    """``loss(params, x, y)`` as ``(params, running, x, y) -> (loss, running after)``: the
    forward runs with copies of ``running`` (BatchNorm's running statistics), which the model
    updates as it does in training, and hands them back (a pure function, so it vectorises over
    members with ``vmap`` and each member's statistics follow its own batches' statistics)."""

    def run(params: Tensors, running: Tensors, x: torch.Tensor, y: torch.Tensor
            ) -> tuple[torch.Tensor, Tensors]:  # fmt: skip
        if not running:
            return loss(params, x, y), running
        after = {k: v.clone() for k, v in running.items()}
        return loss({**params, **after}, x, y), after

    return run


class PopulationTrainer:
    """Trains populations of one model on one data set with one recipe.

    A model with running statistics (BatchNorm) has them per member: they live in each
    population's optimizer state under the slot :data:`RUNNING` (so they are stacked, spawned,
    checkpointed and chunked with it), start from the model's own as it was built, and are
    updated by every training forward pass exactly as ``model.train()`` updates them. The
    module's own buffers are never written."""

    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        stream: BatchStream,
        recipe: RecipeConfig,
        mode: str = "auto",
        augment: AugmentConfig | None = None,
        loss_fn: LossFn | None = None,
        update: Update | None = None,
    ):
        self.model = model
        self.data = data
        self.stream = stream
        self.recipe = recipe
        self.augment = augment
        self.update = update or plain_update(recipe, list(trainable(model)))
        self.current_step = 0  # the step being trained, for a loss that takes it
        loss = (cross_entropy_loss(model) if loss_fn is None else
                user_loss(model, loss_fn, lambda: self.current_step))  # fmt: skip
        self.running0 = running_statistics(model)  # θ0's statistics, as the model was built
        self._loss_running = with_running(loss)
        # the loss of the parameters alone (Lyapunov's map): statistics from θ0's, discarded
        self.loss = (loss if not self.running0 else
                     lambda p, x, y: self._loss_running(p, self.running0, x, y)[0])  # fmt: skip
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.precision)
        self._single = plain_grad_and_value(self._loss_running)  # a member at a time
        self._vmapped = vmap(grad_and_value(self._loss_running, has_aux=True),
                             in_dims=(0, 0, None, None), randomness="same")  # fmt: skip
        # BatchNorm under vmap is not member-independent (measured on CPU: with BatchNorm1d a
        # member's numbers depend on its position in the population and on the population's
        # size), so `auto` trains models with running statistics one member at a time
        self.vmappable = bool(getattr(model, "vmappable", True)) and not self.running0
        self._vmap_tried = False
        if mode not in MODES:
            raise ValueError(f"runtime.mode must be one of {', '.join(MODES)}; got '{mode}'")
        hand_batched = loss_fn is None and BatchedMLP.supports(model)  # it writes out the CE
        self.batched = BatchedMLP(model) if hand_batched else None  # type: ignore[arg-type]
        if self.autocast is not None and self.batched is not None and mode != "batched":
            self.batched = None  # the hand-written MLP has no autocast: vmap under autocast
        if mode == "batched" and self.batched is None:
            raise ValueError(
                f"runtime.mode = batched needs an MLP; {type(model).__name__} trains with vmap or loop"
            )
        self.mode = mode

    def running_of(self, pop: Population) -> Tensors:
        """``pop``'s running statistics (slot :data:`RUNNING` of its state), θ0's for a
        population that has none yet; empty for a model without them."""
        if not self.running0:
            return {}
        if RUNNING not in pop.state:
            pop.state[RUNNING] = {k: torch.stack([v] * pop.size).to(v.device)
                                  for k, v in self.running0.items()}  # fmt: skip
        return pop.state[RUNNING]

    def twin_mode(self, population_size: int) -> str | None:
        """Another code path than a population of this size trains with, for a twin: loop
        (one autograd pass per member) for batched or vmapped populations, vmap for a model
        that trains in a loop and can be vectorised; None when there is no other."""
        main = self.mode_for(population_size)
        if main != "loop":
            return "loop"
        return "vmap" if bool(getattr(self.model, "vmappable", True)) and not self.running0 \
            else None  # fmt: skip

    def mode_for(self, population_size: int) -> str:
        """The mode actually used for a population of this size."""
        if self.mode != "auto":
            return self.mode
        if self.batched is not None:
            return "batched"
        return "vmap" if population_size > 1 and self.vmappable else "loop"

    @contextmanager
    def _noise(self, key: tuple[object, ...] | None) -> Iterator[None]:
        """Training mode (``model.train()``, whatever the model keys on it: ``nn.Dropout``,
        ``F.dropout(x, p, self.training)``, stochastic depth, attention dropout) with torch's
        generator seeded by ``key``, so every random draw inside (dropout masks) is a pure
        function of the key and the same for every member; the caller's random state and eval
        mode are restored after. ``key`` None: as the model is (eval mode, for measuring)."""
        if key is None:
            yield
            return
        devices = [self.data.x_train.device] if self.data.x_train.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed("dropout", *key))
            self.model.train()
            try:
                yield
            finally:
                self.model.eval()

    def gradients(
        self,
        params: Tensors,
        x: torch.Tensor,
        y: torch.Tensor,
        key: tuple[object, ...] | None = None,
        running: Tensors | None = None,
        mode: str | None = None,
    ) -> tuple[Tensors, torch.Tensor]:
        """Per-member gradients and losses of stacked ``params`` on one batch.

        ``key`` (e.g. (stream seed, step)) seeds dropout: every member sees the same masks,
        in every mode and whatever the population's size. With ``recipe.accumulation = k`` the
        batch is split into k equal micro-batches (each with its own masks) and their gradients
        and losses are averaged: one batch's mean-loss gradient, up to rounding, in k passes.
        ``running``: the members' stacked running statistics, updated in place by each forward
        pass as training updates them (None: θ0's, and the update is dropped). ``mode``: the
        code path (vmap, batched, loop) instead of the trainer's (a twin's).
        """
        if running is None:
            P = next(iter(params.values())).shape[0]
            running = {n: v.expand(P, *v.shape) for n, v in self.running0.items()}
            keep = False
        else:
            keep = True
        k = self.recipe.accumulation
        if k == 1:
            return self._gradients(params, x, y, key, running, keep, mode)
        size = x.shape[0] // k
        total: Tensors | None = None
        losses = None
        for i in range(k):
            part = slice(i * size, (i + 1) * size)
            g, loss = self._gradients(params, x[part], y[part],
                                      None if key is None else (*key, "micro", i), running,
                                      keep, mode)  # fmt: skip
            if total is None:
                total, losses = g, loss
            else:
                torch._foreach_add_(list(total.values()), list(g.values()))
                losses = losses + loss
        assert total is not None and losses is not None
        torch._foreach_div_(list(total.values()), float(k))
        return total, losses / k

    def _gradients(
        self,
        params: Tensors,
        x: torch.Tensor,
        y: torch.Tensor,
        key: tuple[object, ...] | None,
        running: Tensors,
        keep: bool,
        mode: str | None = None,
    ) -> tuple[Tensors, torch.Tensor]:
        if self.autocast is None:
            grads, losses, after = self._compute(params, x, y, key, running, mode)
        else:
            with torch.autocast(x.device.type, dtype=self.autocast):
                grads, losses, after = self._compute(params, x, y, key, running, mode)
            grads, losses = {n: g.float() for n, g in grads.items()}, losses.float()
        if keep:
            with torch.no_grad():
                for n, v in running.items():
                    v.copy_(after[n])
        return grads, losses

    def _compute(
        self,
        params: Tensors,
        x: torch.Tensor,
        y: torch.Tensor,
        key: tuple[object, ...] | None,
        running: Tensors,
        mode: str | None = None,
    ) -> tuple[Tensors, torch.Tensor, Tensors]:
        P = next(iter(params.values())).shape[0]
        mode = mode or self.mode_for(P)
        if mode == "batched":
            assert self.batched is not None and not running
            return (*self.batched.grad_and_loss(params, x, y), running)
        if mode == "vmap":
            try:
                with self._noise(key):
                    grads, (losses, after) = self._vmapped(params, running, x, y)
                    return grads, losses, after
            except Exception:
                # `auto` on a model vmap cannot run (data-dependent control flow, .item()):
                # found at the first step, before any update, so every member of every
                # population of this model trains in a loop instead.
                if self.mode != "auto" or self._vmap_tried or mode != self.mode_for(P):
                    raise
                self.vmappable = False
            finally:
                self._vmap_tried = True
        out = []
        for i in range(P):
            with self._noise(key):
                out.append(self._single(member(params, i), member(running, i), x, y))
        after = stack([r for _, (_, r) in out]) if running else running
        return (stack([g for g, _ in out]), torch.stack([loss for _, (loss, _) in out]), after)

    def batch(
        self, step: int, stream: BatchStream | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step`` of ``stream`` (default: the parent's) and its augmentation: a pure
        function of (stream seed, step)."""
        stream = stream or self.stream
        idx = stream.indices(step).to(self.data.x_train.device)
        x = self.data.x_train[idx]
        if self.augment is not None and self.augment.active:
            x = augment(x, self.augment, stream.seed, step)  # on the data's device
        return x, self.data.y_train[idx]

    def train(
        self,
        pop: Population,
        until: int,
        record: Iterable[int] = (),
        on_record: Callable[[int, Population], None] | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> Population:
        """Train ``pop`` in place from ``pop.step`` to step ``until``.

        ``on_record(step, pop)`` is called whenever ``pop.step`` reaches a step in ``record``
        (including the starting step), e.g. to save a parent checkpoint or log a trajectory.
        """
        rec = None if on_record is None else (lambda s, lanes: on_record(s, lanes[0].pop))
        self.train_lanes([Lane(pop, until)], record, rec, on_step)
        return pop

    def train_lanes(
        self,
        lanes: list[Lane],
        record: Iterable[int] = (),
        on_record: Callable[[int, list[Lane]], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        before: Callable[[int, list[Lane]], None] | None = None,
    ) -> list[Lane]:
        """Train every lane from the common start step to its own ``until``, step by step.

        ``on_record(step, lanes)`` is called at each step in ``record`` (a lane that has
        finished keeps its final state). ``before(step, lanes)`` is called at every step
        before its record and its training: it may add members to a lane
        (:meth:`Population.join`) or append lanes that start at this step (members that join
        a seed's population at their perturbation time).
        """
        marks = set(record)
        step = lanes[0].pop.step
        if any(lane.pop.step != step for lane in lanes):
            raise ValueError("lanes must start at the same step")
        if before is not None:
            before(step, lanes)
        end = max(lane.until for lane in lanes)
        for lane in lanes:
            self.running_of(lane.pop)  # θ0's statistics in the state from the first record on
        if step in marks and on_record is not None:
            on_record(step, lanes)
        while step < end:
            batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            for lane in lanes:
                if step >= lane.until:
                    continue
                stream = lane.stream or self.stream
                if id(stream) not in batches:
                    batches[id(stream)] = self.batch(step, stream)
                x, y = batches[id(stream)]
                pop = lane.pop
                self.current_step = step
                grads, losses = self.gradients(pop.params, x, y, (stream.seed, stream.name, step),
                                               self.running_of(pop), lane.mode)  # fmt: skip
                losses = losses.detach()
                # stays on the device: no host round trip per step
                pop.diverged = pop.diverged.to(losses.device) | ~torch.isfinite(losses)
                if lane.losses is not None:
                    lane.losses.append(losses)
                if self.recipe.grad_clip is not None:
                    clip_per_member(grads, self.recipe.grad_clip)
                lr = lane.lr(step) if lane.lr is not None else lr_at(self.recipe, step)
                self.update.step(pop.params, grads, pop.state, step, lr)
                pop.step = step + 1
            step += 1
            if on_step is not None:
                on_step(step)
            if before is not None:
                before(step, lanes)
                end = max(lane.until for lane in lanes)
                for lane in lanes:
                    self.running_of(lane.pop)
            if step in marks and on_record is not None:
                on_record(step, lanes)
        return lanes

    def single_gradient(
        self,
        params: Tensors,
        x: torch.Tensor,
        y: torch.Tensor,
        key: tuple[object, ...] | None = None,
    ) -> Tensors:
        """Gradient of the loss of one (unstacked) model on one batch (``key`` seeds dropout;
        running statistics from θ0's, not kept: a perturbation's direction, Lyapunov's map)."""
        with self._noise(key):
            grads, _ = self._single(params, self.running0, x, y)
        return grads
