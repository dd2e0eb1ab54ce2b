"""Optimizers as updates of a population: each member's parameters, gradients and optimizer
state are stacked along a leading member axis, and one update steps them all.

* The built-ins (:class:`Builtin`: ``sgd`` with momentum, dampening and Nesterov, ``adam``,
  ``adamw``, ``lion``, ``muon``) are written with element-wise ``torch._foreach`` operations
  and, for Muon, batched matrix products, so a member's update never depends on the others.
* Any ``torch.optim.Optimizer`` (:class:`TorchUpdate`, named by import path or handed in from
  Python) is run on the stacked tensors directly when its update of one member does not
  depend on the others (:func:`couples_members` checks it on two members before training), and
  otherwise as one optimizer per member, in a loop (e.g. per-tensor trust ratios).

Parameter groups (``recipe.groups``) give a set of parameters, chosen by name patterns and
kinds, their own learning rate scale, weight decay and optimizer settings. The learning rate
comes from the schedule at every step (:func:`butterfly.train.recipe.lr_at`), times the group's
scale. Optimizer state lives in plain dicts ``slot -> name -> stacked tensor`` that are saved
with every parent checkpoint; a number kept per parameter (a step count) is the slot
``scalar:NAME`` (one value per member) and a Python number ``number:NAME``.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from butterfly.config import ConfigError, RecipeConfig

Tensors = dict[str, torch.Tensor]
OptState = dict[str, Tensors]
SCALAR = "scalar:"  # a 0-d tensor per parameter in torch's state (a step count): one per member
NUMBER = "number:"  # a Python number per parameter in torch's state: one per member
KIND_OF_GROUP = {"weights": "weight", "biases": "bias", "norm": "norm"}


# ---- parameter groups ------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Parameters that share a learning-rate scale, a weight decay and optimizer settings."""

    names: tuple[str, ...]
    lr_scale: float = 1.0
    weight_decay: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)


def param_groups(
    recipe: RecipeConfig, names: list[str], kinds: Mapping[str, str] | None = None
) -> list[Group]:
    """Each parameter in its group (``recipe.groups`` in order; the rest in the recipe's own
    group, first), refusing a group that matches nothing and a parameter two groups match.
    ``kinds``: each parameter's kind (weight, bias, norm), for groups chosen by kind."""
    taken: dict[str, int] = {}
    out = []
    for i, g in enumerate(recipe.groups):
        if g.kinds and kinds is None:
            raise ConfigError(f"recipe.groups[{i}] chooses parameters by kind, but the model's "
                              "parameter kinds are not known here")  # fmt: skip
        chosen = []
        for n in names:
            by_name = any(fnmatch.fnmatchcase(n, pat) for pat in g.params)
            by_kind = kinds is not None and kinds.get(n) in {KIND_OF_GROUP[k] for k in g.kinds}
            if by_name or by_kind:
                if n in taken:
                    raise ConfigError(
                        f"recipe.groups[{taken[n]}] and recipe.groups[{i}] both take parameter "
                        f"'{n}': each parameter belongs to one group"
                    )
                taken[n] = i
                chosen.append(n)
        if not chosen:
            what = ", ".join([*g.params, *g.kinds])
            raise ConfigError(
                f"recipe.groups[{i}] ({what}) matches no parameter of the model; its parameters "
                f"are named like {', '.join(names[:4])}"
            )
        wd = recipe.weight_decay if g.weight_decay is None else g.weight_decay
        out.append(Group(tuple(chosen), g.lr_scale, wd, dict(g.options)))
    rest = tuple(n for n in names if n not in taken)
    return ([Group(rest, 1.0, recipe.weight_decay)] if rest else []) + out


class Update(Protocol):
    """What the trainer asks of an optimizer."""

    name: str

    def init_state(self, params: Tensors) -> OptState: ...

    def step(
        self, params: Tensors, grads: Tensors, state: OptState, step: int, lr: float
    ) -> None: ...


# ---- the built-ins -----------------------------------------------------------------------------


def zero_state(slots: tuple[str, ...], params: Tensors) -> OptState:
    return {s: {k: torch.zeros_like(v) for k, v in params.items()} for s in slots}


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximately orthogonal matrix with the row and column spaces of each member's
    ``g`` (members, rows, cols): Muon's quintic Newton-Schulz iteration, in float32, each
    member normalised by its own Frobenius norm."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-2, -1)
    x = x / (x.flatten(1).norm(dim=1).view(-1, 1, 1) + 1e-7)
    for _ in range(steps):
        m = torch.bmm(x, x.transpose(-2, -1))
        x = a * x + torch.bmm(b * m + c * torch.bmm(m, m), x)
    if tall:
        x = x.transpose(-2, -1)
    return x.to(g.dtype)


@dataclass
class Builtin:
    """butterfly's own optimizers on stacked members (``torch.optim`` semantics for sgd, adam
    and adamw; Lion as Chen et al. 2023; Muon as Jordan et al. 2024: Nesterov momentum
    orthogonalised by Newton-Schulz for every weight matrix, plain Nesterov SGD for the rest)."""

    recipe: RecipeConfig
    groups: list[Group]
    matrices: frozenset[str] = frozenset()  # muon: the parameters orthogonalised

    @property
    def name(self) -> str:
        return self.recipe.optimizer

    def init_state(self, params: Tensors) -> OptState:
        if self.name in ("sgd", "muon"):
            return zero_state(("momentum",), params)
        if self.name == "lion":
            return zero_state(("exp_avg",), params)
        return zero_state(("exp_avg", "exp_avg_sq"), params)

    @torch.no_grad()
    def step(
        self, params: Tensors, grads: Tensors, state: OptState, step: int, lr: float
    ) -> None:
        for g in self.groups:
            names = [n for n in g.names if n in params]
            opts = g.options
            glr = lr * g.lr_scale
            if self.name == "sgd":
                self._sgd(params, grads, state, names, step, glr, g.weight_decay, opts)
            elif self.name in ("adam", "adamw"):
                self._adam(params, grads, state, names, step, glr, g.weight_decay, opts)
            elif self.name == "lion":
                self._lion(params, grads, state, names, glr, g.weight_decay, opts)
            else:
                self._muon(params, grads, state, names, glr, g.weight_decay, opts)

    def _sgd(self, params: Tensors, grads: Tensors, state: OptState, names: list[str],
             step: int, lr: float, wd: float, opts: Mapping[str, Any]) -> None:  # fmt: skip
        # torch.optim.SGD: g += wd p; buf = momentum buf + (1 - dampening) g (buf = g at the
        # first step); g = g + momentum buf (Nesterov) or buf; p -= lr g
        momentum = opts.get("momentum", self.recipe.momentum)
        dampening = opts.get("dampening", self.recipe.dampening)
        nesterov = opts.get("nesterov", self.recipe.nesterov)
        p = [params[k] for k in names]
        g = [grads[k] for k in names]
        if wd:
            g = torch._foreach_add(g, p, alpha=wd)
        if momentum:
            buf = [state["momentum"][k] for k in names]
            torch._foreach_mul_(buf, momentum)
            if dampening and step > 0:
                torch._foreach_add_(buf, g, alpha=1.0 - dampening)
            else:
                torch._foreach_add_(buf, g)
            g = torch._foreach_add(g, buf, alpha=momentum) if nesterov else buf
        torch._foreach_add_(p, g, alpha=-lr)

    def _adam(self, params: Tensors, grads: Tensors, state: OptState, names: list[str],
              step: int, lr: float, wd: float, opts: Mapping[str, Any]) -> None:  # fmt: skip
        # torch.optim.AdamW (decoupled decay) and Adam (L2 added to the gradient), with
        # bias-corrected moments counting the member's steps, step + 1
        b1, b2 = opts.get("betas", self.recipe.betas)
        eps = opts.get("eps", self.recipe.eps)
        k = step + 1
        p = [params[n] for n in names]
        g = [grads[n] for n in names]
        m = [state["exp_avg"][n] for n in names]
        v = [state["exp_avg_sq"][n] for n in names]
        if wd and self.name == "adamw":
            torch._foreach_mul_(p, 1.0 - lr * wd)
        elif wd:
            g = torch._foreach_add(g, p, alpha=wd)
        torch._foreach_lerp_(m, g, 1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
        bc1 = 1.0 - b1**k
        bc2_sqrt = math.sqrt(1.0 - b2**k)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(p, m, denom, value=-lr / bc1)

    def _lion(self, params: Tensors, grads: Tensors, state: OptState, names: list[str],
              lr: float, wd: float, opts: Mapping[str, Any]) -> None:  # fmt: skip
        # Lion: p *= 1 - lr wd; p -= lr sign(b1 m + (1 - b1) g); m = b2 m + (1 - b2) g
        b1, b2 = opts.get("betas", self.recipe.betas)
        p = [params[n] for n in names]
        g = [grads[n] for n in names]
        m = [state["exp_avg"][n] for n in names]
        if wd:
            torch._foreach_mul_(p, 1.0 - lr * wd)
        c = torch._foreach_mul(m, b1)
        torch._foreach_add_(c, g, alpha=1.0 - b1)
        torch._foreach_add_(p, torch._foreach_sign(c), alpha=-lr)
        torch._foreach_mul_(m, b2)
        torch._foreach_add_(m, g, alpha=1.0 - b2)

    def _muon(self, params: Tensors, grads: Tensors, state: OptState, names: list[str],
              lr: float, wd: float, opts: Mapping[str, Any]) -> None:  # fmt: skip
        # buf = momentum buf + g; u = g + momentum buf (Nesterov); a weight matrix's u is
        # orthogonalised and scaled by sqrt(max(1, rows / cols)); p *= 1 - lr wd; p -= lr u
        momentum = opts.get("momentum", self.recipe.momentum)
        steps = int(opts.get("ns_steps", 5))
        for n in names:
            p, g, buf = params[n], grads[n], state["momentum"][n]
            buf.mul_(momentum).add_(g)
            u = g.add(buf, alpha=momentum)
            if n in self.matrices:
                mat = u.reshape(u.shape[0], u.shape[1], -1)
                u = newton_schulz(mat, steps).reshape(u.shape)
                u = u * max(1.0, mat.shape[1] / mat.shape[2]) ** 0.5
            if wd:
                p.mul_(1.0 - lr * wd)
            p.add_(u, alpha=-lr)


# ---- any torch.optim.Optimizer -----------------------------------------------------------------


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@dataclass
class TorchUpdate:
    """A ``torch.optim.Optimizer`` class (or factory ``f(param_groups, **kwargs)``) stepping
    stacked members: on the stacked tensors themselves (``per_member = False``) or one
    optimizer per member over its slices (``True``). Its state is moved in and out of the
    plain state dicts at every step, by reference (no copy)."""

    factory: Callable[..., torch.optim.Optimizer]
    kwargs: Mapping[str, Any]
    groups: list[Group]
    label: str
    per_member: bool = False
    _cache: dict[tuple[int, ...], torch.optim.Optimizer] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.label

    def init_state(self, params: Tensors) -> OptState:
        return {}  # torch creates its state at the first step

    def make(self, tensors: Mapping[str, torch.Tensor]) -> torch.optim.Optimizer:
        """An optimizer over ``tensors`` (one member's slices, or the stacked tensors)."""
        groups = []
        for g in self.groups:
            entry: dict[str, Any] = {"params": [tensors[n] for n in g.names if n in tensors],
                                     **g.options}  # fmt: skip
            if g.weight_decay and _accepts(self.factory, "weight_decay"):
                entry["weight_decay"] = g.weight_decay
            groups.append(entry)
        try:
            opt = self.factory(groups, **self.kwargs)
        except Exception as err:
            raise ConfigError(
                f"recipe.optimizer {self.label} cannot be made for the model's parameters "
                f"(with recipe.optimizer_kwargs {dict(self.kwargs)}): {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}"
            ) from None
        if not isinstance(opt, torch.optim.Optimizer):
            raise ConfigError(f"recipe.optimizer {self.label} made a {type(opt).__name__}, not a "
                              "torch.optim.Optimizer")  # fmt: skip
        return opt

    @torch.no_grad()
    def step(
        self, params: Tensors, grads: Tensors, state: OptState, step: int, lr: float
    ) -> None:
        names = [n for g in self.groups for n in g.names if n in params]
        size = next(iter(params.values())).shape[0]
        members = range(size) if self.per_member else [None]
        for i in members:
            view = {n: params[n] if i is None else params[n][i] for n in names}
            key = tuple(id(v) for v in view.values()) if i is None else ()
            opt = self._cache.get(key) if key else None
            if opt is None:
                opt = self.make(view)
                if key:
                    self._cache.clear()  # one population at a time
                    self._cache[key] = opt
            for g, og in zip(self.groups, opt.param_groups, strict=True):
                og["lr"] = lr * g.lr_scale
            for n in names:
                p = view[n]
                p.grad = grads[n] if i is None else grads[n][i]
                opt.state[p] = self._load(state, n, i, size)
            opt.step()
            for n in names:
                p = view[n]
                self._save(state, n, i, size, opt.state[p])
                p.grad = None

    @staticmethod
    def _load(state: OptState, name: str, i: int | None, size: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for slot, by_name in state.items():
            if name not in by_name:
                continue
            t = by_name[name]
            if slot.startswith(SCALAR):
                out[slot[len(SCALAR):]] = (t[0] if i is None else t[i]).clone()
            elif slot.startswith(NUMBER):
                v = (t[0] if i is None else t[i]).item()
                out[slot[len(NUMBER):]] = v
            else:
                out[slot] = t if i is None else t[i]
        return out

    @staticmethod
    def _save(state: OptState, name: str, i: int | None, size: int, st: Mapping[str, Any]) -> None:
        for slot, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                if i is None:
                    state.setdefault(slot, {})[name] = v
                else:
                    full = state.setdefault(slot, {}).get(name)
                    if full is None or full.shape[1:] != v.shape:
                        full = torch.zeros((size, *v.shape), dtype=v.dtype, device=v.device)
                        state[slot][name] = full
                    if full[i].data_ptr() != v.data_ptr():
                        full[i].copy_(v)
            else:
                scalar = isinstance(v, torch.Tensor)
                key = (SCALAR if scalar else NUMBER) + slot
                value = v if scalar else torch.tensor(v, dtype=torch.float64 if isinstance(
                    v, float) else torch.int64)  # fmt: skip
                full = state.setdefault(key, {}).get(name)
                if full is None:
                    full = torch.zeros(size, dtype=value.dtype, device=value.device)
                    state[key][name] = full
                if i is None:
                    full.fill_(value)
                else:
                    full[i] = value


def couples_members(update: TorchUpdate, params: Tensors, seed: int = 0) -> bool:
    """Whether ``update`` run on stacked tensors lets one member's update depend on another's:
    two steps of two members [θ, θ + δ] with different gradients, against the first member
    alone; any difference in the first member's weights means coupled."""
    g = torch.Generator().manual_seed(seed)

    def noise(v: torch.Tensor) -> torch.Tensor:
        return torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.dtype)

    base = {k: v.detach().clone() for k, v in params.items()}
    other = {k: v + noise(v) for k, v in base.items()}
    grads = [({k: noise(v) for k, v in base.items()}, {k: 3.0 * noise(v) for k, v in base.items()})
             for _ in range(2)]  # fmt: skip
    pair = {k: torch.stack([base[k], other[k]]) for k in base}
    alone = {k: base[k].unsqueeze(0).clone() for k in base}
    trial = TorchUpdate(update.factory, update.kwargs, update.groups, update.label)
    solo = TorchUpdate(update.factory, update.kwargs, update.groups, update.label)
    s_pair: OptState = {}
    s_alone: OptState = {}
    for step, (g0, g1) in enumerate(grads):
        trial.step(pair, {k: torch.stack([g0[k], g1[k]]) for k in base}, s_pair, step, 1e-2)
        solo.step(alone, {k: g0[k].unsqueeze(0) for k in base}, s_alone, step, 1e-2)
    return not all(torch.equal(pair[k][0], alone[k][0]) for k in base)
