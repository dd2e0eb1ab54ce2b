"""Checkpoints as safetensors, written atomically (temporary file, then rename).

A checkpoint holds parameters (``param.NAME``) and, for parent states, optimizer state
(``state.SLOT.NAME``); its metadata carries the model spec needed to rebuild the network, the
step and anything else given. This is the one place that knows the key format: models load
backbones, the sweep saves parents and members, ``butterfly compare`` reads any two.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from butterfly.atomic import atomic_path

Tensors = dict[str, torch.Tensor]
PARAM = "param."
STATE = "state."
CHECKSUM = "checksum"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or unreadable."""


def checksum(tensors: Tensors) -> str:
    """A content hash of named tensors (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "blake2b:" + h.hexdigest()


def save_checkpoint(
    path: Path,
    params: Tensors,
    state: dict[str, Tensors] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    tensors = {f"{PARAM}{k}": v.detach().contiguous().cpu() for k, v in params.items()}
    for slot, d in (state or {}).items():
        tensors.update({f"{STATE}{slot}.{k}": v.detach().contiguous().cpu() for k, v in d.items()})
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()}
    metadata[CHECKSUM] = checksum(tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: Path) -> tuple[Tensors, dict[str, Tensors], dict[str, Any]]:
    """(params, optimizer state, metadata) of a checkpoint; a checkpoint whose tensors no
    longer match the checksum written with them (silent corruption: flipped bits) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            raw_meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        if is_torch_pickle(path):
            raise CheckpointError(
                f"checkpoint {path} is a PyTorch pickle (torch.save), which can run code as it "
                "loads, so it was not read: only safetensors checkpoints are read; convert it "
                "with, in a Python session you trust, sd = torch.load("
                f"'{path}', weights_only=False); safetensors.torch.save_file({{k: "
                "v.clone().contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}, "
                f"'{path.with_suffix('.safetensors')}') with sd the model's state_dict, and give "
                "that file"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({err})") from None
    expected = raw_meta.get(CHECKSUM)
    if expected is not None and checksum(tensors) != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its tensors do not match the checksum written "
            "with them"
        )
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    params = {k[len(PARAM) :]: v for k, v in tensors.items() if k.startswith(PARAM)}
    state: dict[str, Tensors] = {}
    for k, v in tensors.items():
        if k.startswith(STATE):
            slot, name = k[len(STATE) :].split(".", 1)
            state.setdefault(slot, {})[name] = v
    return params, state, meta


def is_torch_pickle(path: Path) -> bool:
    """Whether a file is what ``torch.save`` writes: a zip archive holding ``data.pkl``, or
    (before PyTorch 1.6, and ``pickle.dump``) a pickle: protocol 2 to 5 and the opcode that
    follows in such files (torch's magic number, a frame, an empty dict). A safetensors file
    whose first bytes read so would announce a header of megabytes, so it is not mistaken."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(3)
        if head[:2] == b"PK" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith("data.pkl") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return len(head) == 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] in b"\x8a\x95}"


def damaged(path: Path) -> str | None:
    """Why a checkpoint cannot be used (missing, unreadable, corrupted), or None if it can."""
    try:
        load_checkpoint(path)
    except CheckpointError as err:
        return str(err)
    return None


def set_aside(path: Path) -> Path:
    """Move a damaged checkpoint out of the way (``NAME.corrupt``), so it is made again."""
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside
