"""The step-indexed batch stream (DESIGN contract 1).

Batch ``s`` is a pure function of ``(seed, s)``: the examples of epoch ``e = s // steps_per_epoch``
are a permutation drawn from ``generator("batch-order", seed, e)``, and batch ``s`` is the
``s % steps_per_epoch``-th slice of it (sampling without replacement within an epoch; an
incomplete last batch is dropped). No state is carried from step to step, so a run restarted
from a checkpoint at step t sees exactly the batches its parent would have seen.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from butterfly.rng import generator


class BatchStream:
    """Indices of the examples that form each training batch."""

    def __init__(self, n_examples: int, batch_size: int, seed: int, name: str = "batch-order"):
        if batch_size > n_examples:
            raise ValueError(
                f"recipe.batch_size = {batch_size} exceeds the {n_examples} training examples"
            )
        self.n = n_examples
        self.batch_size = batch_size
        self.seed = seed
        self.name = name
        self.steps_per_epoch = n_examples // batch_size

    @lru_cache(maxsize=2)  # noqa: B019 - pure function of its arguments; the cache is an optimisation
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=generator(self.name, self.seed, epoch))

    def indices(self, step: int) -> torch.Tensor:
        """The example indices of batch ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        return order[i * self.batch_size : (i + 1) * self.batch_size]


def independent_batch(n_examples: int, batch_size: int, *key: object) -> torch.Tensor:
    """An independently drawn batch (for batch perturbations), a pure function of ``key``."""
    size = min(batch_size, n_examples)
    return torch.randperm(n_examples, generator=generator("independent-batch", *key))[:size]
