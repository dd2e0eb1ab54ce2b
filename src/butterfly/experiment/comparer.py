"""Comparing two networks (paper section 3.4): every divergence measure between two networks of
one architecture on one data set, for each child of a sweep and for ``butterfly compare``.

L2 distance; train-loss, train-error, test-loss and test-error barriers (Eq. 4); the same
barriers and L2 after weight matching and after activation matching, with the fraction of units
left in place; angular CKA of the last block's outputs (Eq. 5); and the test accuracy of the
logit-averaged ensemble (with F1 and Matthews correlation for two-class tasks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from butterfly.align import (
    NoActivations,
    NoPermutationSpec,
    PermutationSpec,
    activation_matching,
    analyse,
    apply_permutation,
    fixed_point_fraction,
    is_identity,
    random_perms,
    spec_error,
    spec_for,
    weight_matching,
)
from butterfly.config import EvalConfig
from butterfly.data import Dataset
from butterfly.layers import running_statistics, statistic_layers, trainable
from butterfly.metrics import alphas, curve_barrier, evaluate, interpolate, l2_distance
from butterfly.metrics.cka import angular_cka
from butterfly.metrics.ensemble import ensemble_accuracy, f1_and_mcc
from butterfly.metrics.evaluate import Evaluation, LossFn, evaluate_stacked, logits_of
from butterfly.metrics.running import WithRunning, interpolated, reestimated, running_of
from butterfly.models.resize import resize_of, resized
from butterfly.rng import generator

Tensors = dict[str, torch.Tensor]
Endpoint = tuple[float, float, float, float]  # train loss, train error, test loss, test error


class _Features(nn.Module):
    """Calls ``model.features`` so ``functional_call`` can run it with other parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.features(resized(x, resize_of(self.m)))  # type: ignore[operator]


def movable(spec: PermutationSpec, model: nn.Module) -> PermutationSpec:
    """``spec`` without the permutations that would move a frozen parameter (butterfly never
    changes those, so their units stay in place)."""
    ok = set(trainable(model)) | set(running_statistics(model))
    return spec.keep({p for p, axes in spec.perm_to_axes.items()
                      if all(a[0] in ok for a in axes)})  # fmt: skip


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

    A model with running statistics (BatchNorm) is evaluated with statistics re-estimated on
    the first ``eval.running_stats_examples`` training inputs for every network (each point of
    a path, the endpoints too: one procedure along the whole path, and identical weights get
    identical statistics), or, with ``eval.running_stats: interpolate``, with the endpoints'
    own statistics (carried by :class:`~butterfly.metrics.running.WithRunning` parameters)
    interpolated like the weights and permuted with them.
    """

    model: nn.Module
    data: Dataset
    cfg: EvalConfig
    seed: int = 0
    loss_fn: LossFn | None = None
    _spec: PermutationSpec | None = field(default=None, init=False)
    skipped: dict[str, str] = field(default_factory=dict, init=False)
    _stats: dict[int, tuple[Tensors, Tensors]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        n = self.cfg.max_train_examples or len(self.data.y_train)
        self.x_train, self.y_train = self.data.x_train[:n], self.data.y_train[:n]
        m = self.cfg.max_test_examples or len(self.data.y_test)
        self.x_test, self.y_test = self.data.x_test[:m], self.data.y_test[:m]
        self.x_align = self.data.x_train[: self.cfg.align_examples]
        self.x_cka = self.data.x_test[: self.cfg.cka_examples]
        self.ws = alphas(self.cfg.alphas)
        self.has_stats = bool(statistic_layers(self.model))
        self.x_stats = self.data.x_train[: self.cfg.running_stats_examples]
        self._features = _Features(self.model)
        self.classifies = self._classifies()
        if not self.classifies:
            self.skipped["ensemble"] = "the model's outputs are not class scores for the labels"
        if not hasattr(self.model, "features") and last_linear(self.model) is None:
            self.skipped["cka"] = "the model has no features() method and no Linear layer"
        if self.cfg.weight_matching or self.cfg.activation_matching or self.cfg.proxy_fractions:
            try:
                self._spec = movable(spec_for(self.model, self._example(2)), self.model)
            except NoPermutationSpec as err:
                self.skipped["alignment"] = str(err)
            else:
                self._check_derived_spec()
        if self.cfg.activation_matching and self.aligns:
            try:  # activations are read from the traced graph
                analyse(self.model, self._example(2))
            except Exception as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                self.skipped["activation_matching"] = (
                    f"torch.fx cannot trace {type(self.model).__name__} to read its activations "
                    f"({reason[:200]}); weight matching still aligns it"
                )

    def _check_derived_spec(self) -> None:
        """A spec derived from the traced graph (or butterfly's spec of a Hugging Face model)
        must leave the function unchanged: checked once on a few training inputs (a spec the
        user wrote is the model's own business)."""
        own = callable(getattr(self.model, "permutation_spec", None))
        if (own and not getattr(self.model, "spec_checked", False)) or self._spec is None:
            return
        err = spec_error(self.model, self._spec, self._example(16))
        if not err < 1e-4:
            self._spec = None
            self.skipped["alignment"] = (
                f"the permutation spec derived for {type(self.model).__name__} changes "
                f"its outputs (relative error {err:.2g}); give the model a permutation_spec() "
                "method (README, 'Your own model')"
            )

    def _example(self, n: int) -> torch.Tensor:
        """The first ``n`` training inputs as the model's forward reads them (a traced graph
        runs without the resize hook of ``model.resize``)."""
        return resized(self.x_train[:n], resize_of(self.model))

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
            self._spec = movable(spec_for(self.model, self._example(2)), self.model)
        return self._spec

    @property
    def aligns(self) -> bool:
        return "alignment" not in self.skipped

    def full(self, params: Tensors) -> Tensors:
        """``params`` with the running statistics the network is evaluated with (itself for a
        model without them): its own under ``interpolate``, else re-estimated (cached for the
        last few networks)."""
        if not self.has_stats:
            return params
        own = running_of(params)
        if own is not None and self.cfg.running_stats == "interpolate":
            return {**params, **own}
        hit = self._stats.get(id(params))
        if hit is None or hit[0] is not params:
            stats = reestimated(self.model, params, self.x_stats, self.cfg.batch_size)
            hit = self._stats[id(params)] = (params, stats)
            while len(self._stats) > 4:
                self._stats.pop(next(iter(self._stats)))
        return {**params, **hit[1]}

    def _carry(self, params: Tensors, running: Tensors | None) -> Tensors:
        """``params`` carrying ``running`` when the interpolated statistics are used."""
        if running is None or not self.has_stats or self.cfg.running_stats != "interpolate":
            return params
        return WithRunning(params, running)

    def evaluate(self, params: Tensors, x: torch.Tensor, y: torch.Tensor) -> Evaluation:
        return evaluate(self.model, self.full(params), x, y, self.cfg.batch_size, self.loss_fn)

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
        ra, rb = running_of(a), running_of(b)

        def point(w: float) -> Tensors:
            return self._carry(interpolate(a, b, w), None if ra is None or rb is None else
                               interpolated(ra, rb, w))  # fmt: skip

        if self._fits(a):
            points = [self.full(point(w)) for w in self.ws]
            stacked = {k: torch.stack([p[k] for p in points]) for k in points[0]}
            return evaluate_stacked(self.model, stacked, x, y, self.cfg.batch_size)
        inner = [self.evaluate(point(w), x, y) for w in self.ws[1:-1]]
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
        if self.has_stats:  # vmapped BatchNorm1d measured position-dependent: point by point
            return False
        n = sum(v.numel() * v.element_size() for v in params.values())
        return want and self.loss_fn is None and n * len(self.ws) < 1 << 30

    @torch.no_grad()
    def features(self, params: Tensors) -> torch.Tensor | None:
        """The representation CKA compares, on the CKA inputs (None if the model has none)."""
        params = self.full(params)
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
        plain = out
        if self.cfg.weight_matching and self.aligns:
            res = weight_matching(self.spec, a, b, self.cfg.wm_max_iter, self.seed)
            out.update(self._aligned(a, b, res.perms, ea, "wm", plain))
            out["wm_iterations"] = res.iterations
        if self.cfg.activation_matching and self.aligns and "activation_matching" not in self.skipped:
            try:
                perms = activation_matching(self.model, self.spec, self.full(a), self.full(b),
                                             resized(self.x_align, resize_of(self.model)))
            except NoActivations as err:
                self.skipped["activation_matching"] = str(err)
            else:
                out.update(self._aligned(a, b, perms, ea, "am", plain))
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
        return logits_of(self.model, self.full(p), self.x_test, self.cfg.batch_size)

    def _aligned(
        self,
        a: Tensors,
        b: Tensors,
        perms: dict[str, torch.Tensor],
        ea: Endpoint,
        tag: str,
        plain: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The barriers and L2 between ``a`` and ``b`` with ``b``'s units permuted by
        ``perms``. ``plain``: the unaligned measures, reused when every
        permutation is the identity (the permuted network is ``b`` itself, bit for bit; what
        weight matching finds for fine-tuned transformers, Appendix C.5), which saves the
        path's evaluations."""
        pooled, per = fixed_point_fraction(perms)
        if plain is not None and is_identity(perms):
            measured = plain
            return {
                f"barrier_train_loss_{tag}": measured["barrier_train_loss"],
                f"barrier_test_error_{tag}": measured["barrier_test_error"],
                f"fixed_point_fraction_{tag}": pooled,
                f"fixed_points_{tag}": json.dumps(per, sort_keys=True),
                f"l2_{tag}": measured["l2"],
            }
        bp = self.permuted(perms, b)
        bars = self.barriers(a, bp, ea, self.endpoint(bp))
        return {
            f"barrier_train_loss_{tag}": bars["barrier_train_loss"],
            f"barrier_test_error_{tag}": bars["barrier_test_error"],
            f"fixed_point_fraction_{tag}": pooled,
            f"fixed_points_{tag}": json.dumps(per, sort_keys=True),
            f"l2_{tag}": l2_distance(a, bp),
        }

    def permuted(self, perms: dict[str, torch.Tensor], params: Tensors) -> Tensors:
        """``params`` with its units permuted (and its own statistics with them)."""
        own = running_of(params)
        return self._carry(apply_permutation(self.spec, perms, params),
                           None if own is None else apply_permutation(self.spec, perms, own))  # fmt: skip

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
            permuted = self.permuted(perms, params)
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
