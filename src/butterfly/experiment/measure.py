"""Measurement (paper section 3.4): every divergence measure between two networks, the rows of
a population, distances along its trajectories, and the sigma = 0 control check.

:class:`Comparer` measures two networks of one architecture, for each child of a sweep and for
``butterfly compare``: L2 distance; train-loss, train-error, test-loss and test-error barriers
(Eq. 4); the same barriers and L2 after weight matching and after activation matching, with the
fraction of units left in place; angular CKA of the last block's outputs (Eq. 5); and the test
accuracy of the logit-averaged ensemble. :func:`measure_children` turns a trained population
into result rows, :func:`trajectory_rows` records its members along the way, and
:func:`check_control` is the determinism check every run ends with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call

from butterfly.align import (
    NoActivations,
    NoPermutationSpec,
    PermutationSpec,
    activation_matching,
    apply_permutation,
    fixed_point_fraction,
    random_perms,
    spec_error,
    spec_for,
    weight_matching,
)
from butterfly.config import EvalConfig
from butterfly.data import Dataset
from butterfly.experiment import rows
from butterfly.metrics import alphas, curve_barrier, evaluate, interpolate, is_finite, l2_distance
from butterfly.metrics.cka import angular_cka
from butterfly.metrics.ensemble import ensemble_accuracy, f1_and_mcc
from butterfly.metrics.evaluate import Evaluation, LossFn, evaluate_stacked, logits_of
from butterfly.models.resize import resize_of, resized
from butterfly.rng import generator

if TYPE_CHECKING:
    import pandas as pd

    from butterfly.experiment.members import Member

Tensors = dict[str, torch.Tensor]
Endpoint = tuple[float, float, float, float]  # train loss, train error, test loss, test error


class _Features(nn.Module):
    """Calls ``model.features`` so ``functional_call`` can run it with other parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.features(resized(x, resize_of(self.m)))  # type: ignore[operator]


def last_linear(model: nn.Module) -> nn.Linear | None:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


@dataclass
class Comparer:
    """Compares networks of ``model``'s architecture on one data set with one eval config.

    ``loss_fn`` is the user's ``loss_fn(model, batch)`` (None: cross-entropy). Error rates,
    test accuracy and the ensemble need class scores for integer labels; CKA compares
    ``model.features(x)`` or, for a model without that method, the input of its last Linear
    layer (the penultimate representation); alignment needs a permutation spec
    (:func:`~butterfly.align.spec_for`). A measure the model does not support is left empty
    and :attr:`skipped` says why.
    """

    model: nn.Module
    data: Dataset
    cfg: EvalConfig
    seed: int = 0
    loss_fn: LossFn | None = None
    _spec: PermutationSpec | None = field(default=None, init=False)
    skipped: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        n = self.cfg.max_train_examples or len(self.data.y_train)
        self.x_train, self.y_train = self.data.x_train[:n], self.data.y_train[:n]
        m = self.cfg.max_test_examples or len(self.data.y_test)
        self.x_test, self.y_test = self.data.x_test[:m], self.data.y_test[:m]
        self.x_align = self.data.x_train[: self.cfg.align_examples]
        self.x_cka = self.data.x_test[: self.cfg.cka_examples]
        self.ws = alphas(self.cfg.alphas)
        self._features = _Features(self.model)
        self.classifies = self._classifies()
        if not self.classifies:
            self.skipped["ensemble"] = "the model's outputs are not class scores for the labels"
        if not hasattr(self.model, "features") and last_linear(self.model) is None:
            self.skipped["cka"] = "the model has no features() method and no Linear layer"
        if self.cfg.weight_matching or self.cfg.activation_matching or self.cfg.proxy_fractions:
            try:
                self._spec = spec_for(self.model)
            except NoPermutationSpec as err:
                self.skipped["alignment"] = str(err)
            else:
                self._check_derived_spec()

    def _check_derived_spec(self) -> None:
        """A spec derived from the traced graph must leave the function unchanged: checked
        once on a few training inputs (a hand-written spec is the model's own business)."""
        if callable(getattr(self.model, "permutation_spec", None)) or self._spec is None:
            return
        err = spec_error(self.model, self._spec, self.x_train[:16])
        if not err < 1e-4:
            self._spec = None
            self.skipped["alignment"] = (
                f"the permutation spec derived from {type(self.model).__name__}'s graph changes "
                f"its outputs (relative error {err:.2g}); give the model a permutation_spec() "
                "method (README, 'Your own model')"
            )

    @torch.no_grad()
    def _classifies(self) -> bool:
        """Whether the outputs on two training inputs are scores for the data's classes."""
        if self.data.n_classes < 2 or self.y_train.is_floating_point():
            return False
        out = self.model(self.x_train[:2])
        return isinstance(out, torch.Tensor) and tuple(out.shape) == (2, self.data.n_classes)

    @property
    def spec(self) -> PermutationSpec:
        if self._spec is None:
            self._spec = spec_for(self.model)
        return self._spec

    @property
    def aligns(self) -> bool:
        return "alignment" not in self.skipped

    def evaluate(self, params: Tensors, x: torch.Tensor, y: torch.Tensor) -> Evaluation:
        return evaluate(self.model, params, x, y, self.cfg.batch_size, self.loss_fn)

    def endpoint(self, params: Tensors) -> Endpoint:
        tr = self.evaluate(params, self.x_train, self.y_train)
        te = self.evaluate(params, self.x_test, self.y_test)
        return tr.loss, tr.error, te.loss, te.error

    def _path(
        self,
        a: Tensors,
        b: Tensors,
        x: torch.Tensor,
        y: torch.Tensor,
        ends: tuple[Evaluation, Evaluation] | None = None,
    ) -> list[Evaluation]:
        """Loss and error at every alpha on the path from a to b, on one data set: one
        vectorised pass when :meth:`_fits`, else point by point (reusing known ``ends``)."""
        if self._fits(a):
            points = [interpolate(a, b, w) for w in self.ws]
            stacked = {k: torch.stack([p[k] for p in points]) for k in a}
            return evaluate_stacked(self.model, stacked, x, y, self.cfg.batch_size)
        inner = [self.evaluate(interpolate(a, b, w), x, y) for w in self.ws[1:-1]]
        if ends is None:
            ends = (self.evaluate(a, x, y), self.evaluate(b, x, y))
        return [ends[0], *inner, ends[1]]

    def barriers(
        self, a: Tensors, b: Tensors, ea: Endpoint, eb: Endpoint
    ) -> dict[str, float | None]:
        """Eq. 4 on the linear path from a to b for the four loss/error x train/test curves."""
        tr = self._path(a, b, self.x_train, self.y_train,
                        (Evaluation(ea[0], ea[1]), Evaluation(eb[0], eb[1])))  # fmt: skip
        te = self._path(a, b, self.x_test, self.y_test,
                        (Evaluation(ea[2], ea[3]), Evaluation(eb[2], eb[3])))  # fmt: skip
        curves = {
            "train_loss": [e.loss for e in tr],
            "train_error": [e.error for e in tr],
            "test_loss": [e.loss for e in te],
            "test_error": [e.error for e in te],
        }
        return {f"barrier_{n}": curve_barrier(v, self.ws) for n, v in curves.items()}

    def train_loss_barrier(self, a: Tensors, b: Tensors) -> float:
        """Eq. 4 on the training loss only (cheaper; used along trajectories)."""
        losses = [e.loss for e in self._path(a, b, self.x_train, self.y_train)]
        out = curve_barrier(losses, self.ws)
        assert out is not None
        return out

    def _fits(self, params: Tensors) -> bool:
        """Whether to evaluate the path as one batch: asked for (or, by default, on CUDA, where
        it pays; on CPU it measured slower), the stacked path stays under ~1 GB, and the loss
        is cross-entropy (a user's loss runs point by point)."""
        want = self.cfg.batched_path
        if want is None:
            want = next(iter(params.values())).is_cuda
        n = sum(v.numel() * v.element_size() for v in params.values())
        return want and self.loss_fn is None and n * len(self.ws) < 1 << 30

    @torch.no_grad()
    def features(self, params: Tensors) -> torch.Tensor | None:
        """The representation CKA compares, on the CKA inputs (None if the model has none)."""
        if hasattr(self.model, "features"):
            prefixed = {f"m.{k}": v for k, v in params.items()}
            return functional_call(self._features, prefixed, (self.x_cka,))
        head = last_linear(self.model)
        if head is None:
            return None
        seen: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            functional_call(self.model, params, (self.x_cka,))
        finally:
            hook.remove()
        return seen[-1].flatten(1) if seen else None

    def compare(
        self,
        a: Tensors,
        b: Tensors,
        ea: Endpoint | None = None,
        feats_a: torch.Tensor | None = None,
        logits_a: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """All measures between ``a`` (the original) and ``b``; ``ea``/``feats_a``/``logits_a``
        may be cached."""
        ea = ea or self.endpoint(a)
        eb = self.endpoint(b)
        out: dict[str, Any] = {
            "l2": l2_distance(a, b),
            **self.barriers(a, b, ea, eb),
            "train_loss_a": ea[0],
            "train_loss_b": eb[0],
            "test_loss_a": ea[2],
            "test_loss_b": eb[2],
            "test_acc_a": None if ea[3] is None else 1.0 - ea[3],
            "test_acc_b": None if eb[3] is None else 1.0 - eb[3],
        }
        if self.cfg.weight_matching and self.aligns:
            res = weight_matching(self.spec, a, b, self.cfg.wm_max_iter, self.seed)
            out.update(self._aligned(a, b, res.perms, ea, "wm"))
            out["wm_iterations"] = res.iterations
        if self.cfg.activation_matching and self.aligns and "activation_matching" not in self.skipped:
            try:
                perms = activation_matching(self.model, self.spec, a, b,
                                             resized(self.x_align, resize_of(self.model)))
            except NoActivations as err:
                self.skipped["activation_matching"] = str(err)
            else:
                out.update(self._aligned(a, b, perms, ea, "am"))
        if self.cfg.cka and "cka" not in self.skipped:
            fa = self.features(a) if feats_a is None else feats_a
            fb = self.features(b)
            if fa is not None and fb is not None:
                out["cka"] = angular_cka(fa, fb)
        if self.wants_logits:  # each network's test logits once, for both measures below
            la = self.test_logits(a) if logits_a is None else logits_a
            lb = self.test_logits(b)
            if self.cfg.ensemble:
                out["ensemble_test_acc"] = ensemble_accuracy([la, lb], self.y_test)
            if self.data.n_classes == 2:  # GLUE's F1 and Matthews correlation
                for tag, lg in (("a", la), ("b", lb)):
                    out[f"test_f1_{tag}"], out[f"test_mcc_{tag}"] = f1_and_mcc(
                        lg.argmax(-1), self.y_test
                    )
        return out

    @property
    def wants_logits(self) -> bool:
        """Whether :meth:`compare` reads test logits (logit ensemble, two-class F1/MCC)."""
        return self.classifies and (self.cfg.ensemble or self.data.n_classes == 2)

    @torch.no_grad()
    def test_logits(self, p: Tensors) -> torch.Tensor:
        return logits_of(self.model, p, self.x_test, self.cfg.batch_size)

    def _aligned(
        self, a: Tensors, b: Tensors, perms: dict[str, torch.Tensor], ea: Endpoint, tag: str
    ) -> dict[str, Any]:
        bp = apply_permutation(self.spec, perms, b)
        bars = self.barriers(a, bp, ea, self.endpoint(bp))
        pooled, per = fixed_point_fraction(perms)
        return {
            f"barrier_train_loss_{tag}": bars["barrier_train_loss"],
            f"barrier_test_error_{tag}": bars["barrier_test_error"],
            f"fixed_point_fraction_{tag}": pooled,
            f"fixed_points_{tag}": json.dumps(per, sort_keys=True),
            f"l2_{tag}": l2_distance(a, bp),
        }

    def permutation_proxy(
        self, params: Tensors, fractions: list[float], seed: int = 0
    ) -> list[dict[str, Any]]:
        """Workshop Figure 4 (left): permute ``params`` with a random permutation that leaves a
        given fraction of units in place, and measure barrier and L2 to the unpermuted network.
        """
        ea = self.endpoint(params)
        rows = []
        for f in fractions:
            perms = random_perms(self.spec, params, f, generator("proxy", seed, f))
            permuted = apply_permutation(self.spec, perms, params)
            bars = self.barriers(params, permuted, ea, self.endpoint(permuted))
            rows.append(
                {
                    "fixed_fraction": f,
                    "fixed_point_fraction": fixed_point_fraction(perms)[0],
                    "l2": l2_distance(params, permuted),
                    "barrier_train_loss": bars["barrier_train_loss"],
                    "barrier_test_error": bars["barrier_test_error"],
                }
            )
        return rows


# ---- a population's rows ------------------------------------------------------------------


@torch.no_grad()
def trajectory_distances(params: Tensors, init: Tensors) -> tuple[list[float], list[float]]:
    """Per member of stacked ``params``: L2 to member 0 (the original) and L2 from the
    initialisation, in float64."""
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
) -> list[dict[str, Any]]:
    """Every member of a population (stacked ``params``) at ``step``, but the first ``skip``
    (rows recorded elsewhere): its L2 to the original and from θ0 (``init``), and (with
    ``eval.trajectory_barriers``) its train-loss barrier to the original (Figure 6)."""
    to_orig, from_init = trajectory_distances(params, init)
    bars: list[float | None] = [None] * len(members)
    if cmp.cfg.trajectory_barriers:
        a = {k: v[0] for k, v in params.items()}
        for i in range(max(1, skip), len(members)):
            if not diverged[i]:
                b = {k: v[i] for k, v in params.items()}
                bars[i] = cmp.train_loss_barrier(a, b)
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
    values: dict[str, Any] = {"seed": seed, "t": t, "step": step, "batch_loss": batch_loss}
    if not diverged and is_finite(original):
        tr_loss, _, te_loss, te_err = cmp.endpoint(original)
        values.update(train_loss=tr_loss, test_loss=te_loss,
                      test_acc=None if te_err is None else 1.0 - te_err)  # fmt: skip
    return rows.make_row("training", **values)


# A child's status when the original diverged; the control's says whether it did so bit for bit
# (then the determinism check counts it as exact).
ORIGINAL_DIVERGED = "original diverged"
ORIGINAL_DIVERGED_EXACT = f"{ORIGINAL_DIVERGED} (control bit-identical)"


def measure_children(
    cmp: Comparer,
    init: Tensors,
    seed: int,
    T: int,
    members: tuple[Member, ...],
    t: int,
    finals: list[Tensors | None],
    diverged: list[bool],
    noise: list[tuple[float, int]],
    undefined: dict[str, str] | None = None,
    originals: list[Tensors] | None = None,
    anchors: list[int] | None = None,
) -> list[dict[str, Any]]:
    """One result row per member but the original (members[0]) of a population perturbed at
    ``t`` (of ``T``): every divergence measure against the original at the end of training.

    A diverged child, or one whose perturbation was ``undefined``, keeps its identity with
    ``diverged = 1`` and its ``status``; if the original itself diverged, every row says so,
    and the control counts as exact when its weights are bit-identical to the original's.
    With member chunks (``originals``, ``anchors``), each child is measured against the original
    of its own chunk."""
    undefined = undefined or {}
    first = finals[0]
    assert first is not None
    originals = originals or [first]
    anchors = anchors or [0] * len(members)
    cache: dict[int, tuple[bool, Any, Any, Any]] = {}

    def reference(j: int) -> tuple[bool, Any, Any, Any]:
        if j not in cache:
            a = originals[j]
            ok = not diverged[0] and is_finite(a)
            cache[j] = (ok, cmp.endpoint(a) if ok else None,
                        cmp.features(a) if ok and cmp.cfg.cka else None,
                        cmp.test_logits(a) if ok and cmp.wants_logits else None)  # fmt: skip
        return cache[j]

    out: list[dict[str, Any]] = []
    for i, m in enumerate(members):
        if i == 0:
            continue
        a = originals[anchors[i]]
        a_ok, ea, feats_a, logits_a = reference(anchors[i])
        b = finals[i]
        ok = a_ok and b is not None and not diverged[i] and is_finite(b)
        if ok:
            status = "ok"
        elif m.name in undefined:
            status = f"perturbation undefined: {undefined[m.name]}"
        elif not a_ok:
            same = b is not None and m.control and same_bits(a, b)
            status = ORIGINAL_DIVERGED_EXACT if same else ORIGINAL_DIVERGED
        else:
            status = "diverged"
        values: dict[str, Any] = {
            "seed": seed, "kind": m.kind, "t": t, "t_frac": t / T,
            "sigma": m.sigma, "fraction": m.fraction, "direction": m.direction,
            "control": int(m.control), "member": m.name, "noise_l2": noise[i][0],
            "n_perturbed": noise[i][1], "diverged": int(not ok), "status": status,
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


def check_control(df: pd.DataFrame) -> list[str]:
    """Problems with the sigma = 0 control rows (empty when every control is exactly zero):
    DESIGN contract 2, the determinism check every run ends with. L2 and the train-loss
    barrier must be exactly 0.0; so must the test-error barrier where the model has one (a
    regression has none)."""
    problems = []
    for _, r in rows.controls(df).iterrows():
        if str(r.get("status") or "") == ORIGINAL_DIVERGED_EXACT:
            continue  # the original diverged; its control did so bit for bit
        bad = {c: r[c] for c in ("l2", "barrier_train_loss") if not _exact_zero(r[c])}
        err = r["barrier_test_error"]
        if err is not None and err == err and err != 0.0:
            bad["barrier_test_error"] = err
        if bad or r["diverged"]:
            problems.append(
                f"seed {r['seed']} t={r['t']}: " + ", ".join(f"{k}={v!r}" for k, v in bad.items())
            )
    return problems


def original_diverged(df: pd.DataFrame) -> int:
    """Populations whose original continuation diverged (a result, not a determinism
    failure: report it and lower the learning rate)."""
    if "status" not in df:
        return 0
    status = rows.controls(df)["status"].fillna("").astype(str)
    return int(status.str.startswith(ORIGINAL_DIVERGED).sum())


def _exact_zero(v: object) -> bool:
    return v is not None and v == 0.0
