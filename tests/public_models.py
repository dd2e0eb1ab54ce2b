"""Models written the way public repositories write them, not by butterfly: the habits a
user's code has (weight tying, its own LayerNorm class, ``F.scaled_dot_product_attention``,
``F.dropout(x, p, self.training)``, frozen parameters, ``out.view(out.size(0), -1)``).

Used by ``test_public_models.py`` by import path (``public_models:MiniGPT``) and directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ---- a minimal GPT, in the style of a popular single-file GPT repository --------------------


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (the repository's own class, not torch's)."""

    def __init__(self, ndim: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class MiniGPT(nn.Module):
    """Token and position embeddings, blocks, a final LayerNorm and an output layer tied to
    the token embedding. Reads butterfly's causal-LM examples ``(N, 2, L)`` (ids, mask) and
    returns next-token logits ``(N, L, vocab)``."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, n_embd: int = 32,
                 n_layer: int = 2, n_head: int = 4, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        vocab, block = n_classes, input_shape[-1]
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, n_embd),
            wpe=nn.Embedding(block, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([Block(n_embd, n_head, dropout) for _ in range(n_layer)]),
            ln_f=LayerNorm(n_embd),
        ))  # fmt: skip
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0]
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        h = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            h = block(h)
        return self.lm_head(self.transformer.ln_f(h))


# ---- a BERT-style encoder, attention written out as older Hugging Face code wrote it --------


class SelfAttention(nn.Module):
    """Separate query/key/value layers, ``transpose_for_scores``, ``torch.matmul`` scores
    scaled by 1/sqrt(d) with an additive padding mask, softmax, dropout on the probabilities,
    and the context merged back by a view of ``size()[:-2] + (all_head_size,)``."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.all_head_size = heads * self.attention_head_size
        self.query = nn.Linear(hidden, self.all_head_size)
        self.key = nn.Linear(hidden, self.all_head_size)
        self.value = nn.Linear(hidden, self.all_head_size)
        self.dropout = nn.Dropout(dropout)

    def transpose_for_scores(self, x: torch.Tensor) -> torch.Tensor:
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)  # noqa: RUF005
        x = x.view(new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_scores = attention_scores + attention_mask
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        attention_probs = self.dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)  # noqa: RUF005
        return context_layer.view(new_context_layer_shape)


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int):
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(h + self.attention_output(self.attention(h, mask)))
        return self.output_norm(h + self.output(F.gelu(self.intermediate(h))))


class TinyBert(nn.Module):
    """Post-LN encoder over butterfly's text examples ``(N, 2, L)`` (ids, token types; padding
    id 0 masked out), a tanh pooler on the first token and a classifier."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, vocab: int = 64,
                 hidden: int = 16, heads: int = 4, layers: int = 2):  # fmt: skip
        super().__init__()
        length = input_shape[-1]
        self.word = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(length, hidden)
        self.token_type = nn.Embedding(2, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList([EncoderLayer(hidden, heads, 2 * hidden) for _ in range(layers)])
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, types = x[:, 0], x[:, 1]
        pos = torch.arange(ids.size(1), device=ids.device)
        h = self.norm(self.word(ids) + self.position(pos) + self.token_type(types))
        mask = (1.0 - (ids != 0).float())[:, None, None, :] * -10000.0
        for layer in self.layers:
            h = layer(h, mask)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))


# ---- a network with frozen filters and functional dropout ----------------------------------


class FrozenWhiteningNet(nn.Module):
    """A fast-trainer habit: a first layer of frozen filters (set from the data, never trained),
    then trainable layers with ``F.dropout(x, p, self.training)`` (no ``nn.Dropout`` module)."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, width: int = 32,
                 p: float = 0.0, data: tuple[torch.Tensor, torch.Tensor] | None = None):  # fmt: skip
        super().__init__()
        d = math.prod(input_shape)
        self.whiten = nn.Linear(d, d, bias=False)
        self.fc = nn.Linear(d, width)
        self.out = nn.Linear(width, n_classes)
        self.p = p
        with torch.no_grad():
            if data is not None:  # data-dependent init: whiten by the training set's covariance
                x = data[0].reshape(len(data[0]), -1).float()
                cov = torch.cov(x.T)
                cov = cov + 1e-2 * cov.diagonal().mean() * torch.eye(d)  # regularised
                evals, evecs = torch.linalg.eigh(cov)
                self.whiten.weight.copy_((evecs / evals.sqrt()).T)
        self.whiten.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(self.whiten(x.view(x.size(0), -1))))
        h = F.dropout(h, self.p, self.training)
        return self.out(h)


# ---- a CIFAR ResNet-18 as a popular repository publishes it ---------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock], num_blocks: list[int], num_classes: int = 10,
                 width: int = 64):  # fmt: skip
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], 2)
        self.linear = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block: type[BasicBlock], planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, out.size(3))
        out = out.view(out.size(0), -1)
        return self.linear(out)


def ResNet18(num_classes: int = 10, width: int = 64) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


# ---- a bag-of-embeddings text classifier ---------------------------------------------------


class BagOfTokens(nn.Module):
    """Token ids ``(N, 2, L)`` (ids, token types) -> class scores: the mean of the non-padding
    tokens' embeddings, then a linear layer (fastText's shape)."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, vocab: int = 258,
                 dim: int = 16, pad: int = 256):  # fmt: skip
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, n_classes)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, 0]
        keep = (ids != self.pad).unsqueeze(-1).float()
        h = (self.emb(ids) * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.fc(h)
