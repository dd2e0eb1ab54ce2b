"""The layer types butterfly understands, shared by the models (parameter kinds and init
variances) and the permutation specs derived from a traced graph.

* weight layers: a weight whose axis 0 is the output units and axis 1 the input units;
* normalisation layers: a per-channel affine (scale and shift), no running statistics needed
  for LayerNorm/GroupNorm (BatchNorm's running statistics are buffers, not parameters);
* embeddings: perturbed as weights (transformers).
"""

from __future__ import annotations

from torch import nn

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)
# Layers whose weights are perturbed as weights (embeddings too, for transformers).
PERTURBED_TYPES = (*WEIGHT_TYPES, nn.Embedding)
