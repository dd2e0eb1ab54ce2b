"""Evaluation of many parameter sets on a data set: mean cross-entropy and 0-1 error.

Two code paths: :func:`evaluate` runs one parameter set at a time, :func:`evaluate_stacked` K
stacked sets in one vectorised pass. Within one path every parameter set goes through the same
operations with the same chunking, so identical parameters give bit-identical numbers (the two
paths agree to rounding, not bit for bit). :func:`evaluate` sums each chunk's cross-entropy in
the model's dtype and accumulates the chunks in float64; :func:`evaluate_stacked` sums
per-example losses in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

Tensors = dict[str, torch.Tensor]


LossFn = Callable[[Any, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    loss: float
    error: float | None  # None where the model is not a classifier of the data's labels

    @property
    def accuracy(self) -> float | None:
        return None if self.error is None else 1.0 - self.error


class Bound:
    """``model`` with the parameters ``params``, callable like the module itself: what a user's
    ``loss_fn(model, batch)`` receives, so the same loss trains stacked members (under vmap)
    and evaluates interpolated networks. Other attributes are the module's own. Records its
    calls, so an evaluation can tell whether the loss ran the model once on the inputs."""

    def __init__(self, model: nn.Module, params: Tensors):
        self.module = model
        self.params = params
        self.calls = 0
        self.last: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = functional_call(self.module, self.params, args, kwargs)
        self.calls += 1
        self.last = out
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


IGNORE = -100  # a target no loss or accuracy counts: a causal LM's prompt and padding


def is_sequence(logits: Any, y: torch.Tensor) -> bool:
    """Whether ``logits`` are next-token scores ``(N, L, V)`` for token targets ``y`` ``(N, L)``
    (a causal language model); their loss and error are token-level, shifted by one."""
    return (
        isinstance(logits, torch.Tensor) and logits.dim() == 3 and y.dim() == 2
        and not y.is_floating_point() and tuple(logits.shape[:2]) == tuple(y.shape)
    )  # fmt: skip


def _shifted(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores at positions 0..L-2 and the tokens they predict (1..L-1), flattened."""
    return logits[..., :-1, :].flatten(-3, -2), y[..., 1:].flatten(-2, -1)


def token_loss_sum(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over the counted targets, and their number."""
    lg, tg = _shifted(logits, y)
    return F.cross_entropy(lg, tg, ignore_index=IGNORE, reduction="sum"), (tg != IGNORE).sum()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss: mean cross-entropy over examples, or, for a causal LM, over the
    counted answer tokens of the batch (next-token prediction)."""
    if is_sequence(logits, y):
        total, n = token_loss_sum(logits, y)
        return total / n.clamp_min(1)
    return F.cross_entropy(logits, y)


def _wrong(logits: Any, y: torch.Tensor) -> int | None:
    """Misclassified examples, if ``logits`` are class scores for integer labels ``y``; for a
    causal LM, examples whose answer is not reproduced exactly (teacher forced: some counted
    token is not the arg-max of its prediction)."""
    if is_sequence(logits, y):
        pred = logits[:, :-1].argmax(-1)
        tg = y[:, 1:]
        return int(((pred != tg) & (tg != IGNORE)).any(1).sum())
    ok = (
        isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] == len(y)
        and logits.shape[1] > 1 and not y.is_floating_point() and y.dim() == 1
    )  # fmt: skip
    return int((logits.argmax(-1) != y).sum()) if ok else None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    params: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 2048,
    loss_fn: LossFn | None = None,
) -> Evaluation:
    """Mean loss and error rate of ``model`` with ``params`` on ``(x, y)``: cross-entropy, or
    the user's ``loss_fn(model, (x, y))`` (a batch mean, weighted by batch size here). The
    error rate is None unless the model's outputs are class scores for the labels."""
    loss_sum = 0.0
    count = 0  # examples, or a causal LM's counted tokens
    wrong: int | None = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        if loss_fn is None:
            logits = functional_call(model, params, (xb,))
            if is_sequence(logits, yb):
                total, n_tok = token_loss_sum(logits, yb)
                loss_sum += float(total.to(torch.float64))
                count += int(n_tok)
            else:
                loss_sum += float(F.cross_entropy(logits, yb, reduction="sum").to(torch.float64))
                count += len(yb)
        else:
            bound = Bound(model, params)
            loss_sum += float(loss_fn(bound, (xb, yb)).to(torch.float64)) * len(yb)
            count += len(yb)
            logits = bound.last if bound.calls == 1 else None
        w = _wrong(logits, yb)
        wrong = None if (w is None or wrong is None) else wrong + w
    n = len(y)
    return Evaluation(loss_sum / max(count, 1), None if wrong is None else wrong / n)


@torch.no_grad()
def logits_of(
    model: nn.Module, params: Tensors, x: torch.Tensor, batch_size: int = 2048
) -> torch.Tensor:
    return torch.cat(
        [
            functional_call(model, params, (x[i : i + batch_size],))
            for i in range(0, len(x), batch_size)
        ]
    )


@torch.no_grad()
def evaluate_stacked(
    model: nn.Module, params: Tensors, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> list[Evaluation]:
    """:func:`evaluate` for K parameter sets stacked on a leading axis, in one vectorised pass
    per chunk of examples (K x chunk <= ``batch_size`` rows at a time)."""
    K = next(iter(params.values())).shape[0]
    chunk = max(1, batch_size // K)
    forward = vmap(lambda p, xb: functional_call(model, p, (xb,)), in_dims=(0, None))
    loss_sum = torch.zeros(K, dtype=torch.float64)
    wrong = torch.zeros(K, dtype=torch.int64)
    count = 0
    for i in range(0, len(y), chunk):
        xb, yb = x[i : i + chunk], y[i : i + chunk]
        logits = forward(params, xb)  # (K, B, C), or (K, B, L, V) for a causal LM
        if is_sequence(logits[0], yb):
            lg, tg = _shifted(logits, yb)  # (K, B(L-1), V), (B(L-1),)
            ce = F.cross_entropy(lg.flatten(0, 1), tg.repeat(K), ignore_index=IGNORE,
                                 reduction="none")  # fmt: skip
            loss_sum += ce.view(K, -1).to(torch.float64).sum(1).cpu()
            count += int((tg != IGNORE).sum())
            pred, t1 = logits[:, :, :-1].argmax(-1), yb[:, 1:]
            wrong += ((pred != t1) & (t1 != IGNORE)).any(-1).sum(1).cpu()
            continue
        ce = F.cross_entropy(logits.flatten(0, 1), yb.repeat(K), reduction="none")
        loss_sum += ce.view(K, -1).to(torch.float64).sum(1).cpu()
        wrong += (logits.argmax(-1) != yb).sum(1).cpu()
        count += len(yb)
    n = len(y)
    return [Evaluation(float(loss_sum[k]) / max(count, 1), int(wrong[k]) / n) for k in range(K)]
