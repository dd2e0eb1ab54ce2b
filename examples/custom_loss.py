"""Your own loss function: the butterfly effect in a regression network trained with a
Huber loss on a synthetic nonlinear regression task.

    python examples/custom_loss.py [OUT_DIR]

The loss receives the model (called like a module) and the batch (inputs, targets) and returns
the batch's mean loss. Barriers are measured with the same loss; error rates, accuracy and the
ensemble need class labels, so they stay empty here. Runs in under a minute on 2 cores.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import butterfly


def huber(model, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.huber_loss(model(x).squeeze(-1), y, delta=0.5)


def regressor(seed: int) -> nn.Module:
    """A factory: butterfly calls it once per seed (torch's generator seeded by the seed)."""
    return nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def task(n: int = 2500) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * torch.randn(n, generator=g)
    return x[:2000], y[:2000], x[2000:], y[2000:]


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/custom-loss"
    exp = butterfly.Experiment(
        model=regressor,
        data=task(),
        loss_fn=huber,
        recipe={"optimizer": "sgd", "lr": 0.05, "steps": 800, "batch_size": 64},
        perturb={"times": [0.0, 0.5], "sigmas": [1e-3, 1e-2]},
        eval={"cka_examples": 300, "align_examples": 300, "trajectory_points": 8},
        seeds=[0, 1],
        name="custom-loss",
    )
    run = exp.run(out=out)
    kids = run.results[run.results.control == 0]
    print(kids.groupby(["kind", "t_frac"]).barrier_train_loss.mean().to_string())
    print(run)
