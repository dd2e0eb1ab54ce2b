"""Activation matching (Ainsworth et al., 2023): match hidden units by the correlation of their
activations on the same inputs, one linear assignment per permutation.

The activations of permutation P are the nonlinearity outputs (ReLU, GELU, tanh, sigmoid) whose
channels P reorders (found from the
model's ``torch.fx`` graph); conv feature maps contribute one row per example and position.
Correlations are computed in float64 over ``len(x)`` examples (1000 by default in sweeps).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.fx
from torch import nn

from butterfly.align.permute import Perms
from butterfly.align.spec import PermutationSpec, analyse
from butterfly.align.weight_matching import heads_assignment

Tensors = dict[str, torch.Tensor]


class NoActivations(ValueError):
    """A permutation reorders no activation that could be matched."""


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, keep: set[str]):
        super().__init__(gm)
        self.keep = keep
        self.outputs: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> object:
        out = super().run_node(n)
        if n.name in self.keep:
            self.outputs[n.name] = out
        return out


def _as_rows(t: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """The units on ``axis`` as columns, every other axis as rows: (N, C, *positions) or
    (N, *positions, C) -> (N * positions, C)."""
    if t.dim() == 2 and axis == 1:
        return t
    return t.movedim(axis, -1).reshape(-1, t.shape[axis])


@torch.no_grad()
def hidden_activations(
    model: nn.Module, params: Tensors, x: torch.Tensor, spec: PermutationSpec, batch_size: int = 500
) -> dict[str, torch.Tensor]:
    """For each permutation, the (rows, units) matrix of the activations it reorders."""
    analysis = analyse(model, x[:2])
    nodes = {p: analysis.activation_nodes(axes) for p, axes in spec.perm_to_axes.items()
             if p not in spec.attention_perms()}  # fmt: skip
    missing = [p for p, ns in nodes.items() if not ns]
    if missing:
        raise NoActivations(
            f"activation matching needs a nonlinearity (ReLU, GELU, tanh, sigmoid) after each "
            f"permuted layer; none found for {missing}"
        )
    gm = copy.deepcopy(analysis.graph_module)
    # the given tensors (a tied parameter under its one name sets every name it has)
    gm.load_state_dict({k: v.detach() for k, v in params.items()}, strict=False)
    keep = {n for ns in nodes.values() for n in ns}
    chunks: dict[str, list[torch.Tensor]] = {p: [] for p in nodes}
    for i in range(0, len(x), batch_size):
        rec = _Recorder(gm, keep)
        rec.run(x[i : i + batch_size])
        for p, ns in nodes.items():
            chunks[p].append(torch.cat([_as_rows(rec.outputs[n], analysis.node_axis.get(n, 1))
                                        for n in ns]))  # fmt: skip
    return {p: torch.cat(c).to(torch.float64) for p, c in chunks.items()}


def correlation(za: torch.Tensor, zb: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pearson correlation between every unit of ``za`` and every unit of ``zb``."""
    za = za - za.mean(0)
    zb = zb - zb.mean(0)
    za = za / (za.square().mean(0).sqrt() + eps)
    zb = zb / (zb.square().mean(0).sqrt() + eps)
    return za.T @ zb / len(za)


def activation_matching(
    model: nn.Module, spec: PermutationSpec, a: Tensors, b: Tensors, x: torch.Tensor
) -> Perms:
    """Permutations of ``b``'s units maximising activation correlation with ``a`` on ``x``.
    Attention heads (a spec's head groups) have no nonlinearity of their own: they stay in
    place (weight matching moves them)."""
    acts_a = hidden_activations(model, a, x, spec)
    acts_b = hidden_activations(model, b, x, spec)
    heads = spec.attention_perms()
    perms: Perms = {p: torch.arange(n) for p, n in spec.sizes(a).items() if p in heads}
    for p in acts_a:
        c = np.nan_to_num(correlation(acts_a[p], acts_b[p]).cpu().numpy())
        # units that never fire correlate with nothing; break such exact ties by leaving the
        # unit in place (a bonus far below any real correlation difference)
        c[np.diag_indices_from(c)] += 1e-9
        if p in spec.heads:  # a GroupNorm's channels: groups as blocks, channels within
            perms[p] = torch.from_numpy(heads_assignment([c], spec.heads[p][1])[0]).long()
            continue
        from scipy.optimize import linear_sum_assignment  # here: 0.6 s a worker need not pay

        rows, cols = linear_sum_assignment(c, maximize=True)
        assert (rows == np.arange(len(rows))).all()
        perms[p] = torch.from_numpy(cols).long()
    return {p: perms[p] for p in spec.perm_to_axes}
