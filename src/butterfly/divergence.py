"""Every divergence measure between two networks of the same architecture (paper section 3.4).

Used for each child of a sweep and by ``butterfly compare``: L2 distance; train-loss, train-error,
test-loss and test-error barriers (Eq. 4); the same barriers and L2 after weight matching and
after activation matching, with the fraction of units left in place; angular CKA of the last
block's outputs (Eq. 5); and the test accuracy of the logit-averaged ensemble.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from butterfly.align import (
    PermutationSpec,
    activation_matching,
    apply_permutation,
    fixed_point_fraction,
    random_perms,
    spec_for,
    weight_matching,
)
from butterfly.config import EvalConfig
from butterfly.data import Dataset
from butterfly.metrics import alphas, barrier, evaluate, interpolate, l2_distance
from butterfly.metrics.cka import angular_cka
from butterfly.metrics.ensemble import ensemble_accuracy
from butterfly.metrics.evaluate import Evaluation, evaluate_stacked
from butterfly.rng import generator

Tensors = dict[str, torch.Tensor]
Endpoint = tuple[float, float, float, float]  # train loss, train error, test loss, test error


class _Features(nn.Module):
    """Calls ``model.features`` so ``functional_call`` can run it with other parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.features(x)  # type: ignore[operator]


@dataclass
class Comparer:
    """Compares networks of ``model``'s architecture on one data set with one eval config."""

    model: nn.Module
    data: Dataset
    cfg: EvalConfig
    seed: int = 0
    _spec: PermutationSpec | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        n = self.cfg.max_train_examples or len(self.data.y_train)
        self.x_train, self.y_train = self.data.x_train[:n], self.data.y_train[:n]
        m = self.cfg.max_test_examples or len(self.data.y_test)
        self.x_test, self.y_test = self.data.x_test[:m], self.data.y_test[:m]
        self.x_align = self.data.x_train[: self.cfg.align_examples]
        self.x_cka = self.data.x_test[: self.cfg.cka_examples]
        self.ws = alphas(self.cfg.alphas)
        self._features = _Features(self.model)

    @property
    def spec(self) -> PermutationSpec:
        if self._spec is None:
            self._spec = spec_for(self.model)
        return self._spec

    @property
    def aligns(self) -> bool:
        return self.cfg.weight_matching or self.cfg.activation_matching

    def endpoint(self, params: Tensors) -> Endpoint:
        bs = self.cfg.batch_size
        tr = evaluate(self.model, params, self.x_train, self.y_train, bs)
        te = evaluate(self.model, params, self.x_test, self.y_test, bs)
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
        bs = self.cfg.batch_size
        if self._fits(a):
            points = [interpolate(a, b, w) for w in self.ws]
            stacked = {k: torch.stack([p[k] for p in points]) for k in a}
            return evaluate_stacked(self.model, stacked, x, y, bs)
        inner = [evaluate(self.model, interpolate(a, b, w), x, y, bs) for w in self.ws[1:-1]]
        if ends is None:
            ends = (evaluate(self.model, a, x, y, bs), evaluate(self.model, b, x, y, bs))
        return [ends[0], *inner, ends[1]]

    def barriers(self, a: Tensors, b: Tensors, ea: Endpoint, eb: Endpoint) -> dict[str, float]:
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
        return {f"barrier_{n}": barrier(v, self.ws) for n, v in curves.items()}

    def train_loss_barrier(self, a: Tensors, b: Tensors) -> float:
        """Eq. 4 on the training loss only (cheaper; used along trajectories)."""
        return barrier([e.loss for e in self._path(a, b, self.x_train, self.y_train)], self.ws)

    def _fits(self, params: Tensors) -> bool:
        """Whether to evaluate the path as one batch: asked for (or, by default, on CUDA, where
        it pays; on CPU it measured slower), and the stacked path stays under ~1 GB."""
        want = self.cfg.batched_path
        if want is None:
            want = next(iter(params.values())).is_cuda
        n = sum(v.numel() * v.element_size() for v in params.values())
        return want and n * len(self.ws) < 1 << 30

    @torch.no_grad()
    def features(self, params: Tensors) -> torch.Tensor:
        prefixed = {f"m.{k}": v for k, v in params.items()}
        return functional_call(self._features, prefixed, (self.x_cka,))

    def compare(
        self,
        a: Tensors,
        b: Tensors,
        ea: Endpoint | None = None,
        feats_a: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """All measures between ``a`` (the original) and ``b``; ``ea``/``feats_a`` may be cached."""
        ea = ea or self.endpoint(a)
        eb = self.endpoint(b)
        out: dict[str, Any] = {
            "l2": l2_distance(a, b),
            **self.barriers(a, b, ea, eb),
            "train_loss_a": ea[0],
            "train_loss_b": eb[0],
            "test_loss_a": ea[2],
            "test_loss_b": eb[2],
            "test_acc_a": 1.0 - ea[3],
            "test_acc_b": 1.0 - eb[3],
        }
        if self.cfg.weight_matching:
            res = weight_matching(self.spec, a, b, self.cfg.wm_max_iter, self.seed)
            out.update(self._aligned(a, b, res.perms, ea, "wm"))
            out["wm_iterations"] = res.iterations
        if self.cfg.activation_matching:
            perms = activation_matching(self.model, self.spec, a, b, self.x_align)
            out.update(self._aligned(a, b, perms, ea, "am"))
        if self.cfg.cka:
            fa = self.features(a) if feats_a is None else feats_a
            out["cka"] = angular_cka(fa, self.features(b))
        if self.cfg.ensemble:
            out["ensemble_test_acc"] = ensemble_accuracy(
                self.model, [a, b], self.x_test, self.y_test, self.cfg.batch_size
            )
        return out

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
