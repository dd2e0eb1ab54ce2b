"""Running statistics (BatchNorm's) of a network that was never trained as such: an
interpolated or permuted network, or a checkpoint without them.

The linear-mode-connectivity literature re-estimates them before evaluating an interpolated
network (its weights are a mix, and so its activations' statistics are neither endpoint's):
every statistics layer runs in training mode with a cumulative average (``momentum = None``)
from reset statistics over fixed training inputs, the rest of the model in eval mode (no
dropout). The inputs and the order are fixed, so identical weights get bit-identical
statistics (the σ = 0 control stays exactly 0).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from butterfly.layers import statistic_layers
from butterfly.metrics.barrier import interpolate

Tensors = dict[str, torch.Tensor]


def reset_statistics(model: nn.Module) -> Tensors:
    """Running statistics as a fresh layer has them (mean 0, variance 1, 0 batches)."""
    out: Tensors = {}
    for name, m in statistic_layers(model).items():
        pre = f"{name}." if name else ""
        assert m.running_mean is not None and m.running_var is not None
        out[pre + "running_mean"] = torch.zeros_like(m.running_mean)
        out[pre + "running_var"] = torch.ones_like(m.running_var)
        if m.num_batches_tracked is not None:
            out[pre + "num_batches_tracked"] = torch.zeros_like(m.num_batches_tracked)
    return out


@torch.no_grad()
def reestimated(model: nn.Module, params: Tensors, x: torch.Tensor, batch_size: int) -> Tensors:
    """The running statistics of ``model`` with ``params``, re-estimated on the inputs ``x``
    in chunks of ``batch_size`` (the mean of the chunks' batch statistics); empty for a model
    without statistics layers."""
    layers = statistic_layers(model)
    if not layers:
        return {}
    stats = reset_statistics(model)
    saved = {name: (m.training, m.momentum) for name, m in layers.items()}
    try:
        for m in layers.values():
            m.train()
            m.momentum = None  # a cumulative average over the chunks
        starts = list(range(0, len(x), batch_size))
        if len(starts) > 1 and len(x) - starts[-1] == 1:
            starts.pop()  # no chunk of one example (BatchNorm needs two): the last is longer
        for i, j in zip(starts, [*starts[1:], len(x)], strict=True):
            functional_call(model, {**params, **stats}, (x[i:j],))
    finally:
        for name, m in layers.items():
            m.training, m.momentum = saved[name]
    return stats


class WithRunning(dict[str, torch.Tensor]):
    """A network's parameters (the dict) that carry its own running statistics
    (``running``), for measurements that use them (``eval.running_stats: interpolate``)."""

    def __init__(self, params: Tensors, running: Tensors):
        super().__init__(params)
        self.running = running


def running_of(params: Tensors) -> Tensors | None:
    """The running statistics ``params`` carry (:class:`WithRunning`), or None."""
    return getattr(params, "running", None)


def interpolated(a: Tensors, b: Tensors, w: float) -> Tensors:
    """Floating statistics interpolated as the weights are (exactly a's at w = 0 and b's at
    w = 1, and a's all along when they are equal); the batch counts are a's."""
    floating = {k: v for k, v in a.items() if v.is_floating_point()}
    out = interpolate(floating, {k: b[k] for k in floating}, w)
    return {k: out.get(k, v) for k, v in a.items()}


def carrying(params: Tensors, running: Tensors | None, i: int) -> Tensors:
    """Member ``i`` of stacked ``params`` (views), carrying its running statistics if
    ``running`` (stacked like them) is given."""
    own = {k: v[i] for k, v in params.items()}
    return own if running is None else WithRunning(own, {k: v[i] for k, v in running.items()})


def on_device(params: Tensors, running: Tensors | None, device: str | torch.device) -> Tensors:
    """``params`` (carrying ``running`` if given) moved to ``device``."""
    moved = {k: v.to(device) for k, v in params.items()}
    return moved if running is None else WithRunning(moved, {k: v.to(device) for k, v in running.items()})
