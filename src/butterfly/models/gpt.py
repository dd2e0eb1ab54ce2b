"""A small decoder-only transformer (GPT-2 style) for the causal-language-model experiments.

Token and learned position embeddings, ``depth`` pre-LayerNorm blocks of causal multi-head
self-attention and a GELU MLP, a final LayerNorm and an output projection to the vocabulary.
Inputs are ``(N, 2, L)`` int64 tensors (token ids, attention mask) as the question/answer data
sets give them (:mod:`butterfly.data.causal`); the output is ``(N, L, vocab)`` next-token
logits. Padding sits at the right end, so the causal mask alone keeps every real token from
attending to it. Attention is written out (no fused kernel), so the model trains under
``torch.func.vmap`` and is deterministic on every device.

Weights are drawn N(0, 0.02^2) from a generator keyed by the seed (GPT-2's scheme; biases 0,
LayerNorm scales 1), and Eq. 6 scales perturbations by that same variance
(``weight_init_var``). Dropout draws from torch's generator, seeded per step by the trainer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from butterfly.rng import generator

INIT_STD = 0.02


class CausalAttention(nn.Module):
    def __init__(self, dim: int, heads: int, length: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.register_buffer(
            "causal", torch.ones(length, length, dtype=torch.bool).tril(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(B, N, 3, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D // h))
        att = att.masked_fill(~self.causal[:N, :N], float("-inf"))
        att = self.drop(att.softmax(-1))
        out = (att @ v).transpose(1, 2).reshape(B, N, D)
        return self.drop(self.proj(out))


class GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, length: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalAttention(dim, heads, length, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(x)))))


class GPT(nn.Module):
    """``GPT((2, L), vocab, width, depth, heads)``: next-token logits ``(N, L, vocab)``."""

    weight_init_var = INIT_STD**2

    def __init__(
        self,
        input_shape: tuple[int, ...],
        vocab: int,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(input_shape) != 2 or input_shape[0] != 2:
            raise ValueError(
                f"gpt reads (2, L) token ids and attention masks; the data's examples have shape "
                f"{tuple(input_shape)} (use data.name = gsm8k or arithmetic)"
            )
        if width % heads:
            raise ValueError(f"gpt width {width} is not divisible by {heads} heads")
        length = input_shape[1]
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(length, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(GPTBlock(width, heads, length, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab)

    def init_fresh_(self, seed: int) -> list[str]:
        """Every weight N(0, 0.02^2), biases 0, LayerNorm scales 1, from a generator keyed by
        ``seed``."""
        g = generator("init", seed)
        names = []
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("norm") or ".norm" in name:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * INIT_STD)
                names.append(name)
        return names

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[..., 0, :]
        pos = torch.arange(ids.shape[-1], device=ids.device)
        h = self.drop(self.tokens(ids) + self.positions(pos))
        return self.norm(self.blocks(h))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final hidden states averaged over each sequence's real (unpadded) tokens."""
        h = self.hidden(x)
        mask = x[..., 1, :].unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(-2) / mask.sum(-2).clamp_min(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))
