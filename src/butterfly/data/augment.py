"""Augmentations on image tensors in bulk, step-indexed (DESIGN contract 1).

The randomness for batch ``s`` comes from ``generator("augment", seed, s)`` only, so every
member of a population, and any run resumed at step s, sees the same augmented batch. Standard
CIFAR augmentations and those of the paper's appendix A.2: random crop with padding, horizontal
flip, rotation, translation and cutout, all on ``(B, C, H, W)`` tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from butterfly.config import AugmentConfig
from butterfly.rng import generator


def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-example crop of the zero-padded image at offset (dy, dx) in [0, 2 pad]."""
    B, _, H, W = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = dy.to(dev).view(B, 1) + torch.arange(H, device=dev).view(1, H)  # (B, H)
    cols = dx.to(dev).view(B, 1) + torch.arange(W, device=dev).view(1, W)  # (B, W)
    b = torch.arange(B, device=dev).view(B, 1, 1)
    out = xp.permute(0, 2, 3, 1)[b, rows.view(B, H, 1), cols.view(B, 1, W)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, cfg: AugmentConfig, seed: int, step: int) -> torch.Tensor:
    """The augmented batch of ``step``: a pure function of (inputs, config, seed, step).

    The random draws come from a CPU generator (the same on every device); the transforms run
    where ``x`` is, so a batch resident on the GPU is augmented there."""
    if x.dim() != 4 or not cfg.active:
        return x
    g = generator("augment", seed, step)
    B, _, H, W = x.shape
    out = x
    if cfg.crop_padding:
        p = cfg.crop_padding
        out = _shift(out, torch.randint(0, 2 * p + 1, (B,), generator=g),
                     torch.randint(0, 2 * p + 1, (B,), generator=g), p)  # fmt: skip
    if cfg.flip:
        flip = (torch.rand(B, generator=g) < 0.5).to(out.device)
        out = torch.where(flip.view(B, 1, 1, 1), out.flip(-1), out)
    if cfg.rotation:
        angle = (torch.rand(B, generator=g) * 2 - 1) * math.radians(cfg.rotation)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([cos, -sin, torch.zeros(B)], 1),
                torch.stack([sin, cos, torch.zeros(B)], 1),
            ],
            1,
        ).to(device=out.device, dtype=out.dtype)
        grid = F.affine_grid(theta, list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.translate:
        t = cfg.translate
        out = _shift(out, torch.randint(0, 2 * t + 1, (B,), generator=g),
                     torch.randint(0, 2 * t + 1, (B,), generator=g), t)  # fmt: skip
    if cfg.cutout:
        k = cfg.cutout
        dev = out.device
        cy = torch.randint(0, H, (B,), generator=g).to(dev).view(B, 1, 1)
        cx = torch.randint(0, W, (B,), generator=g).to(dev).view(B, 1, 1)
        ys = torch.arange(H, device=dev).view(1, H, 1)
        xs = torch.arange(W, device=dev).view(1, 1, W)
        hole = ((ys - cy).abs() <= k // 2) & ((xs - cx).abs() <= k // 2)
        if k % 2 == 0:  # an even size: a k x k square ending at the centre's lower right
            hole = (
                (ys >= cy - k // 2) & (ys < cy + k // 2) & (xs >= cx - k // 2) & (xs < cx + k // 2)
            )
        out = out.masked_fill(hole.unsqueeze(1), 0.0)
    return out
