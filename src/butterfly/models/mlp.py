"""Multi-layer perceptron: ``depth`` hidden ReLU layers of ``width`` units, then a linear head,
with its permutation spec (one permutation per hidden layer)."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from butterfly.align.spec import Axis, PermutationSpec


class MLP(nn.Module):
    def __init__(
        self, input_shape: tuple[int, ...], n_classes: int, width: int = 64, depth: int = 2
    ):
        super().__init__()
        d_in = math.prod(input_shape)
        dims = [d_in] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))
        self.out = nn.Linear(dims[-1], n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's output (the representation compared by CKA)."""
        h = x.flatten(1)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))

    def permutation_spec(self) -> PermutationSpec:
        """Hidden layer i's units: rows of its weight and bias, columns of the next weight."""
        n = len(self.hidden)
        perms: dict[str, list[Axis]] = {}
        for i in range(n):
            nxt = f"hidden.{i + 1}.weight" if i + 1 < n else "out.weight"
            perms[f"P_{i}"] = [(f"hidden.{i}.weight", 0), (f"hidden.{i}.bias", 0), (nxt, 1)]
        return PermutationSpec({k: tuple(v) for k, v in perms.items()})
