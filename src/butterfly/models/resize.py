"""Resizing images to the size a network expects (``model.resize``), e.g. CIFAR's 32 x 32 to
the 224 x 224 of a pre-trained ViT.

The resize runs on the fly, on the batch's device, in front of the network: data sets stay at
their stored size in memory (CIFAR-100 at 224 x 224 would take 30 GB) and augmentation (which
is step-indexed) happens before it, at the stored size. Bilinear interpolation without
antialiasing is a fixed function of its input: the same batch gives the same pixels in every
run and both copies of a pair; no gradient flows through it (the data needs none), so it adds
no non-deterministic backward kernel on CUDA.

It is attached to the model (:func:`attach_resize`) as a forward pre-hook and a ``resize_to``
attribute, so parameter names, checkpoints and permutation specs are those of the model
itself; the representation used by CKA (``features``) is resized the same way by its caller
(:func:`resized`). Applying it to an input already at the target size is a no-op.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def resized(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``x`` (``(N, C, H, W)``, or ``(C, H, W)`` under vmap) bilinearly resized to ``size``."""
    if size is None or not x.is_floating_point() or x.dim() < 3:
        return x
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    flat = x.reshape(-1, *x.shape[-3:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*x.shape[:-2], *size)


def _hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    size = getattr(module, "resize_to", None)
    if size is None or not args or not isinstance(args[0], torch.Tensor):
        return None
    return (resized(args[0], size), *args[1:])


def attach_resize(model: nn.Module, size: int | list[int] | tuple[int, int]) -> nn.Module:
    """Make ``model`` resize its image input to ``size`` (one int: square) before its forward."""
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    model.resize_to = hw  # type: ignore[assignment]
    model.register_forward_pre_hook(_hook)
    return model


def resize_of(model: nn.Module) -> tuple[int, int] | None:
    """The size ``model`` resizes its input to, if any."""
    return getattr(model, "resize_to", None)
