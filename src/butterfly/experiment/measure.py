"""The rows of a population (paper section 3.4): one result row per child against its
original at the end of training, trajectory rows along the way, the original's training curve,
and the random-permutation proxy. The measures themselves are the
:class:`~butterfly.experiment.comparer.Comparer`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from butterfly.experiment import rows
from butterfly.experiment.comparer import Comparer
from butterfly.experiment.verdict import ORIGINAL_DIVERGED, ORIGINAL_DIVERGED_EXACT
from butterfly.metrics import is_finite, l2_distance
from butterfly.metrics.running import carrying

if TYPE_CHECKING:
    from butterfly.experiment.members import Member, TrainedMember

Tensors = dict[str, torch.Tensor]


@torch.no_grad()
def trajectory_distances(params: Tensors, init: Tensors) -> tuple[list[float], list[float]]:
    """Per member of stacked ``params``: L2 to member 0 (the original) and L2 from the
    initialisation, in float64."""
    to_orig = None
    from_init = None
    for k in sorted(params):  # in sorted name order, as l2_distance sums
        v = params[k]
        v64 = v.to(torch.float64).flatten(1)
        a = (v64 - v64[:1]).square().sum(1)
        b = (v64 - init[k].to(torch.float64).flatten().to(v.device)).square().sum(1)
        to_orig = a if to_orig is None else to_orig + a
        from_init = b if from_init is None else from_init + b
    assert to_orig is not None and from_init is not None
    return to_orig.sqrt().tolist(), from_init.sqrt().tolist()


def trajectory_rows(
    cmp: Comparer,
    init: Tensors,
    seed: int,
    members: tuple[Member, ...],
    t: int,
    step: int,
    params: Tensors,
    diverged: list[bool],
    skip: int = 0,
    running: Tensors | None = None,
) -> list[dict[str, Any]]:
    """Every member of a population (stacked ``params``, and its stacked ``running``
    statistics if the model has them) at ``step``, but the first ``skip`` (rows recorded
    elsewhere): its L2 to the original and from θ0 (``init``), and (with
    ``eval.trajectory_barriers``) its train-loss barrier to the original (Figure 6)."""
    to_orig, from_init = trajectory_distances(params, init)
    bars: list[float | None] = [None] * len(members)
    if cmp.cfg.trajectory_barriers:
        a = carrying(params, running, 0)
        for i in range(max(1, skip), len(members)):
            if not diverged[i]:
                bars[i] = cmp.train_loss_barrier(a, carrying(params, running, i))
    out = []
    for i, m in enumerate(members):
        if i < skip:
            continue
        row = rows.make_row(
            "trajectories", seed=seed, t=t, member=m.name, kind=m.kind, sigma=m.sigma,
            step=step, l2_to_original=to_orig[i], l2_from_init=from_init[i],
            barrier_train_loss=bars[i],
        )  # fmt: skip
        out.append(row)
    return out


def same_bits(a: Tensors, b: Tensors) -> bool:
    """Bit-identical tensors (NaN included, unlike ``==``)."""
    return all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and bool((a[k].contiguous().view(torch.uint8) == b[k].contiguous().view(torch.uint8)).all())
        for k in a
    )  # fmt: skip


def training_row(
    cmp: Comparer,
    seed: int,
    t: int,
    step: int,
    original: Tensors,
    diverged: bool,
    batch_loss: float | None,
) -> dict[str, Any]:
    """The original's training curve at ``step``: its mean minibatch loss since the previous
    record, and its loss on the full training set and accuracy on the test set."""
    return rows.make_row("training", seed=seed, t=t, step=step, batch_loss=batch_loss,
                         **original_measures(cmp, original, diverged))  # fmt: skip


def original_measures(cmp: Comparer, original: Tensors, diverged: bool) -> dict[str, Any]:
    """The measures of a training-curve row: the original's loss on the full training set and
    its test loss and accuracy (none once it diverged)."""
    if diverged or not is_finite(original):
        return {}
    tr_loss, _, te_loss, te_err = cmp.endpoint(original)
    return {"train_loss": tr_loss, "test_loss": te_loss,
            "test_acc": None if te_err is None else 1.0 - te_err}  # fmt: skip


def measure_children(
    cmp: Comparer,
    init: Tensors,
    seed: int,
    T: int,
    t: int,
    trained: list[TrainedMember],
    originals: list[Tensors] | None = None,
) -> list[dict[str, Any]]:
    """One result row per member but the original (``trained[0]``) of a population perturbed
    at ``t`` (of ``T``): every divergence measure against the original at the end of training.

    A diverged child, or one whose perturbation was undefined, keeps its identity with
    ``diverged = 1`` and its ``status``; if the original itself diverged, every row says so,
    and the control counts as exact when its weights are bit-identical to the original's.
    With member chunks (``originals``), each child is measured against the original of its own
    chunk (``TrainedMember.chunk``)."""
    first = trained[0]
    assert first.final is not None
    originals = originals or [first.final]
    cache: dict[int, tuple[bool, Any, Any, Any]] = {}

    def reference(j: int) -> tuple[bool, Any, Any, Any]:
        if j not in cache:
            a = originals[j]
            ok = not first.diverged and is_finite(a)
            cache[j] = (ok, cmp.endpoint(a) if ok else None,
                        cmp.features(a) if ok and cmp.cfg.cka else None,
                        cmp.test_logits(a) if ok and cmp.wants_logits else None)  # fmt: skip
        return cache[j]

    out: list[dict[str, Any]] = []
    for tm in trained[1:]:
        m = tm.member
        a = originals[tm.chunk]
        a_ok, ea, feats_a, logits_a = reference(tm.chunk)
        b = tm.final
        ok = a_ok and b is not None and not tm.diverged and is_finite(b)
        if ok:
            status = "ok"
        elif tm.undefined is not None:
            status = f"perturbation undefined: {tm.undefined}"
        elif not a_ok:
            same = b is not None and m.control and same_bits(a, b)
            status = ORIGINAL_DIVERGED_EXACT if same else ORIGINAL_DIVERGED
        else:
            status = "diverged"
        values: dict[str, Any] = {
            "seed": seed, "kind": m.kind, "t": t, "t_frac": t / T,
            "sigma": m.sigma, "fraction": m.fraction, "direction": m.direction,
            "control": int(m.control), "member": m.name, "noise_l2": tm.noise_l2,
            "n_perturbed": tm.n_perturbed, "diverged": int(not ok), "status": status,
        }  # fmt: skip
        if ok:
            assert b is not None
            values.update(cmp.compare(a, b, ea, feats_a, logits_a))
            values["l2_init_a"] = l2_distance(a, init)
            values["l2_init_b"] = l2_distance(b, init)
        out.append(rows.make_row("results", **values))
    return out


def permutation_proxy_rows(cmp: Comparer, seed: int, original: Tensors) -> list[dict[str, Any]]:
    """The random-permutation proxy rows of the original at T (workshop Figure 4, left)."""
    return [
        rows.make_row("permutation_proxy", seed=seed, **r)
        for r in cmp.permutation_proxy(original, cmp.cfg.proxy_fractions, seed)
    ]
