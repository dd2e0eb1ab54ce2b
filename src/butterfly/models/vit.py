"""A small Vision Transformer (Dosovitskiy et al., 2021) for CIFAR-sized images or 1-D signals.

Patch embedding (a strided convolution), a learned class token and positional embedding,
``depth`` pre-LayerNorm blocks of multi-head self-attention and a GELU MLP, a final LayerNorm and
a linear head on the class token. Attention is written out (no fused kernel) so that it runs
under ``torch.func.vmap`` and is deterministic on every device.

Dropout (``dropout > 0``) draws from torch's global generator; the trainer seeds it per step
so both copies of a pair see identical masks (DESIGN contract 1).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from butterfly.models.cnn import conv_cls


class Attention(nn.Module):
    """Multi-head self-attention, written out; ``causal = L``: each of up to L positions
    attends only to itself and earlier ones (a decoder's mask)."""

    def __init__(self, dim: int, heads: int, dropout: float, causal: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.causal = causal
        if causal is not None:
            mask = torch.ones(causal, causal, dtype=torch.bool).tril()
            self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(B, N, 3, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D // h))
        if self.causal is not None:
            att = att.masked_fill(~self.mask[:N, :N], float("-inf"))
        att = self.drop(att.softmax(-1))
        out = (att @ v).transpose(1, 2).reshape(B, N, D)
        return self.drop(self.proj(out))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: attention and a GELU MLP, each residual."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: int, dropout: float, causal: int | None = None
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))


class ViT(nn.Module):
    """``ViT(shape, classes, width=192, depth=6, patch=4, heads=3)`` is a ViT-Tiny-like model."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        width: int = 192,
        depth: int = 6,
        patch: int = 4,
        heads: int = 3,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        conv = conv_cls(input_shape)
        spatial = input_shape[1:]
        if any(s % patch for s in spatial):
            raise ValueError(f"ViT patch size {patch} does not divide the input size {spatial}")
        n_patches = math.prod(s // patch for s in spatial)
        self.embed = conv(input_shape[0], width, patch, patch, 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, n_classes)

    # Parameters that are not Linear/Conv/norm weights, with their init variance (0.02^2, as
    # in the reference ViT); used by `param_info` and `kaiming_init_`.
    extra_params: ClassVar[dict[str, float]] = {"cls_token": 0.02**2, "pos_embed": 0.02**2}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token after the final LayerNorm."""
        h = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(h.shape[0], -1, -1)
        h = self.drop(torch.cat([cls, h], dim=1) + self.pos_embed)
        h = self.blocks(h)
        return self.norm(h[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))
