"""A small CNN: ``depth`` conv-ReLU layers (stride 2 after the first), global pooling, a linear head.

Works on 1-D signals (input ``(C, L)``, e.g. MNIST-1D) and 2-D images (``(C, H, W)``). Its
permutation spec has one permutation per conv layer.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from butterfly.align.spec import Axis, PermutationSpec


def conv_cls(input_shape: tuple[int, ...]) -> type[nn.Conv1d] | type[nn.Conv2d]:
    if len(input_shape) == 2:
        return nn.Conv1d
    if len(input_shape) == 3:
        return nn.Conv2d
    raise ValueError(f"conv models need (C, L) or (C, H, W) inputs, got shape {input_shape}")


class CNN(nn.Module):
    def __init__(
        self, input_shape: tuple[int, ...], n_classes: int, width: int = 32, depth: int = 3
    ):
        super().__init__()
        conv = conv_cls(input_shape)
        chans = [input_shape[0]] + [width] * depth
        self.convs = nn.ModuleList(
            conv(a, b, kernel_size=3, stride=1 if i == 0 else 2, padding=1)
            for i, (a, b) in enumerate(pairwise(chans))
        )
        self.out = nn.Linear(chans[-1], n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for c in self.convs:
            h = torch.relu(c(h))
        return h.flatten(2).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))

    def permutation_spec(self) -> PermutationSpec:
        """Conv layer i's channels: its weight's axis 0 and bias, the next weight's axis 1."""
        n = len(self.convs)
        perms: dict[str, list[Axis]] = {}
        for i in range(n):
            nxt = f"convs.{i + 1}.weight" if i + 1 < n else "out.weight"
            perms[f"P_{i}"] = [(f"convs.{i}.weight", 0), (f"convs.{i}.bias", 0), (nxt, 1)]
        return PermutationSpec({k: tuple(v) for k, v in perms.items()})
