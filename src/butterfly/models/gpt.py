"""A small decoder-only transformer (GPT-2 style) for the causal-language-model experiments.

Token and learned position embeddings, ``depth`` pre-LayerNorm blocks of causal multi-head
self-attention and a GELU MLP (the ViT's blocks with a causal mask), a final LayerNorm and an output projection to the vocabulary.
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

import torch
from torch import nn

from butterfly.models.vit import Block
from butterfly.rng import generator

INIT_STD = 0.02


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden states ``(..., L, D)`` averaged over the positions where ``mask`` ``(..., L)`` is
    1: a sequence's representation for CKA, padding left out."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(-2) / m.sum(-2).clamp_min(1.0)


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
        self.blocks = nn.Sequential(
            *(Block(width, heads, 4, dropout, causal=length) for _ in range(depth))
        )
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
        return masked_mean(self.hidden(x), x[..., 1, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))
