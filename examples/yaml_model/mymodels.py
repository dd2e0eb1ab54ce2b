"""A user's model and data, found by import path from sweep.yaml (model.name, data.name).

Worker processes import this module by name, so it must be importable where they run: here,
`PYTHONPATH=examples/yaml_model butterfly run examples/yaml_model/sweep.yaml`.
"""

from __future__ import annotations

import torch
from torch import nn


class WideShallow(nn.Module):
    """One wide hidden layer with GELU: the paper's most stable architecture family."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, width: int = 128):
        super().__init__()
        self.hidden = nn.Linear(input_shape[-1], width)
        self.out = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.gelu(self.hidden(x.flatten(1))))


def clusters(n_train: int = 2000, n_test: int = 500, dim: int = 16, classes: int = 5,
             seed: int = 0) -> dict[str, torch.Tensor]:  # fmt: skip
    """A loader: Gaussian class clusters, returned as a mapping of the four tensors."""
    g = torch.Generator().manual_seed(seed)
    means = 1.2 * torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = means[y] + torch.randn(n_train + n_test, dim, generator=g)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:],
            "y_test": y[n_train:]}  # fmt: skip
