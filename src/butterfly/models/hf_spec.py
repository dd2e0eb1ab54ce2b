"""Permutation specs of Hugging Face transformers (BERT, GPT-2, ViT), from their parameter
names and config.

``torch.fx`` cannot trace these models (their forward branches on config values and builds
masks from shapes), so their specs are written from the architectures' structure instead:

* ``R``: the residual stream, every tensor that reads or writes it (embeddings, the class token
  and position embeddings, every LayerNorm, the query/key/value inputs, the attention output
  and MLP output projections, the final norm and the classifier or LM head);
* ``M{l}``: the MLP units of layer l;
* ``QK{l}`` and ``VO{l}``: the query/key units and the value/output units of layer l's
  attention, one head group ``H{l}``: heads permuted as blocks (the same head order for
  both), and units within a head (queries with keys, values with the output projection);
* ``PO``: the pooler's units (BERT), read by the classifier.

Names vary between ``transformers`` versions (ViT's ``attention.attention.query`` became
``attention.q_proj``): both spellings are listed. A tensor no rule names stays in place; if it
touches a permuted space the spec is wrong, and the comparer's output check (a random
permutation of every space must leave the outputs unchanged) drops alignment with a note.
"""

from __future__ import annotations

import re
from collections import defaultdict

from torch import nn

from butterfly.align.spec import Axis, NoPermutationSpec, PermutationSpec

# (perm template, axis, offset in units of the hidden size)
Act = tuple[str, int, int]
_L = r"(?:encoder\.layer|layers|h)\.(?P<l>\d+)\."


def _r(pattern: str, *acts: tuple[str, int] | Act) -> tuple[re.Pattern[str], list[Act]]:
    full = [(a[0], a[1], a[2] if len(a) > 2 else 0) for a in acts]  # type: ignore[misc]
    return re.compile(r"(?:^|\.)" + pattern + "$"), full


_BERT = [
    _r(r"embeddings\.(?:word|position|token_type)_embeddings\.weight", ("R", 1)),
    _r(r"embeddings\.LayerNorm\.(?:weight|bias)", ("R", 0)),
    _r(_L + r"attention\.self\.(?:query|key)\.weight", ("R", 1), ("QK{l}", 0)),
    _r(_L + r"attention\.self\.(?:query|key)\.bias", ("QK{l}", 0)),
    _r(_L + r"attention\.self\.value\.weight", ("R", 1), ("VO{l}", 0)),
    _r(_L + r"attention\.self\.value\.bias", ("VO{l}", 0)),
    _r(_L + r"attention\.output\.dense\.weight", ("VO{l}", 1), ("R", 0)),
    _r(_L + r"attention\.output\.dense\.bias", ("R", 0)),
    _r(_L + r"(?:attention\.output|output)\.LayerNorm\.(?:weight|bias)", ("R", 0)),
    _r(_L + r"intermediate\.dense\.weight", ("R", 1), ("M{l}", 0)),
    _r(_L + r"intermediate\.dense\.bias", ("M{l}", 0)),
    _r(_L + r"output\.dense\.weight", ("M{l}", 1), ("R", 0)),
    _r(_L + r"output\.dense\.bias", ("R", 0)),
    _r(r"pooler\.dense\.weight", ("R", 1), ("PO", 0)),
    _r(r"pooler\.dense\.bias", ("PO", 0)),
    _r(r"classifier\.weight", ("PO", 1)),
]
_GPT2 = [
    _r(r"(?:wte|wpe)\.weight", ("R", 1)),
    _r(_L + r"ln_[12]\.(?:weight|bias)", ("R", 0)),
    # Conv1D stores (in, out): the packed q|k|v outputs are axis 1, at offsets 0, E, 2E
    _r(_L + r"attn\.c_attn\.weight", ("R", 0), ("QK{l}", 1, 0), ("QK{l}", 1, 1), ("VO{l}", 1, 2)),
    _r(_L + r"attn\.c_attn\.bias", ("QK{l}", 0, 0), ("QK{l}", 0, 1), ("VO{l}", 0, 2)),
    _r(_L + r"attn\.c_proj\.weight", ("VO{l}", 0), ("R", 1)),
    _r(_L + r"attn\.c_proj\.bias", ("R", 0)),
    _r(_L + r"mlp\.c_fc\.weight", ("R", 0), ("M{l}", 1)),
    _r(_L + r"mlp\.c_fc\.bias", ("M{l}", 0)),
    _r(_L + r"mlp\.c_proj\.weight", ("M{l}", 0), ("R", 1)),
    _r(_L + r"mlp\.c_proj\.bias", ("R", 0)),
    _r(r"ln_f\.(?:weight|bias)", ("R", 0)),
    _r(r"(?:score|lm_head)\.weight", ("R", 1)),
]
_VIT = [
    _r(r"embeddings\.(?:cls_token|mask_token|position_embeddings)", ("R", 2)),
    _r(r"patch_embeddings\.projection\.(?:weight|bias)", ("R", 0)),
    _r(_L + r"layernorm_(?:before|after)\.(?:weight|bias)", ("R", 0)),
    _r(_L + r"attention\.(?:attention\.(?:query|key)|[qk]_proj)\.weight", ("R", 1), ("QK{l}", 0)),
    _r(_L + r"attention\.(?:attention\.(?:query|key)|[qk]_proj)\.bias", ("QK{l}", 0)),
    _r(_L + r"attention\.(?:attention\.value|v_proj)\.weight", ("R", 1), ("VO{l}", 0)),
    _r(_L + r"attention\.(?:attention\.value|v_proj)\.bias", ("VO{l}", 0)),
    _r(_L + r"attention\.(?:output\.dense|o_proj)\.weight", ("VO{l}", 1), ("R", 0)),
    _r(_L + r"attention\.(?:output\.dense|o_proj)\.bias", ("R", 0)),
    _r(_L + r"(?:intermediate\.dense|mlp\.fc1)\.weight", ("R", 1), ("M{l}", 0)),
    _r(_L + r"(?:intermediate\.dense|mlp\.fc1)\.bias", ("M{l}", 0)),
    _r(_L + r"(?:output\.dense|mlp\.fc2)\.weight", ("M{l}", 1), ("R", 0)),
    _r(_L + r"(?:output\.dense|mlp\.fc2)\.bias", ("R", 0)),
    _r(r"layernorm\.(?:weight|bias)", ("R", 0)),
    _r(r"pooler\.dense\.weight", ("R", 1), ("PO", 0)),
    _r(r"pooler\.dense\.bias", ("PO", 0)),
    _r(r"classifier\.weight", ("R", 1)),
]
RULES = {"bert": _BERT, "gpt2": _GPT2, "vit": _VIT}


def hf_spec(net: nn.Module, prefix: str = "") -> PermutationSpec:
    """The permutation spec of the Hugging Face model ``net`` (parameters named ``prefix`` +
    their name in ``net``)."""
    cfg = net.config
    kind = getattr(cfg, "model_type", "?")
    if kind not in RULES:
        raise NoPermutationSpec(
            f"butterfly has permutation specs for Hugging Face {', '.join(sorted(RULES))} "
            f"models, not for '{kind}'"
        )
    E, H = int(cfg.hidden_size), int(cfg.num_attention_heads)
    perms: dict[str, list[Axis]] = defaultdict(list)
    for name, _ in net.named_parameters():
        for pattern, acts in RULES[kind]:
            m = pattern.search(name)
            if m is None:
                continue
            layer = m.groupdict().get("l")
            for template, axis, k in acts:
                perms[template.format(l=layer)].append((prefix + name, axis, k * E))
            break
    if "PO" in perms and not any(a[1] == 1 for a in perms["PO"]):
        del perms["PO"]  # a pooler nothing reads: its units are the model's output
    size = {p: E for p in perms if p == "R" or p.startswith(("QK", "VO"))}
    heads = {p: (f"H{p[2:]}", E // H) for p in perms if p.startswith(("QK", "VO"))}
    return PermutationSpec({p: tuple(v) for p, v in perms.items()}, size, heads)
