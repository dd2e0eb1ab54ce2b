"""Your own CNN on your own tensors: the butterfly effect of a small convolutional network on
scikit-learn's 8x8 digits (shipped with scikit-learn, nothing is downloaded).

    python examples/own_cnn.py [OUT_DIR]

Runs in about a minute on 2 cores and prints the mean train-loss barrier per perturbation time.
"""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

import butterfly


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with GroupNorm, global average pooling, a linear head."""

    def __init__(self, n_classes: int = 10, channels: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(1, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, stride=2)
        self.norm2 = nn.GroupNorm(1, channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        h = torch.relu(self.norm2(self.conv2(h)))
        return self.head(torch.flatten(self.pool(h), 1))


def digits() -> tuple[torch.Tensor, ...]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


if __name__ == "__main__":  # worker processes import this file: keep the run under the guard
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/own-cnn"
    exp = butterfly.Experiment(
        model=SmallCNN,
        data=butterfly.data.from_tensors(*digits()),
        recipe={"optimizer": "sgd", "lr": 0.1, "steps": 600, "batch_size": 64},
        perturb={"times": [0.0, 0.05, 0.5], "sigmas": [1e-3, 1e-2], "kinds": ["batch"]},
        eval={"cka_examples": 300, "align_examples": 300, "trajectory_points": 8},
        seeds=[0, 1],
        name="own-cnn",
    )
    run = exp.run(out=out)
    kids = run.results[run.results.control == 0]
    print(kids.groupby("t_frac").barrier_train_loss.mean().to_string())
    print(run)
