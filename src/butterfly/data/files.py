"""Loaders for real data sets from local files in their published formats (nothing downloads).

* CIFAR-10 / CIFAR-100: the "python version" folders (``cifar-10-batches-py`` with
  ``data_batch_1..5`` and ``test_batch``; ``cifar-100-python`` with ``train`` and ``test``),
  pickled dicts of ``uint8`` rows of 3072 values (R, G, B planes of 32x32). They are read with
  a restricted unpickler that builds plain data and NumPy arrays only: a crafted file cannot
  run code.
* MNIST: the IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (optionally ``.gz``).

Images are scaled to [0, 1] and standardised per channel with training-set statistics.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from butterfly.data.dataset import DataError, Dataset


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [0, *range(2, x_train.dim())]
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return ((x_train - mean) / std).contiguous(), ((x_test - mean) / std).contiguous()


def _folder(path: str | Path | None, name: str, hint: str) -> Path:
    if path is None:
        raise DataError(f"data.path is required for {name}: {hint}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"{name} folder {p} does not exist: {hint}")
    return p


# What the published CIFAR pickles (and the same dicts pickled by NumPy 1 or 2) refer to: the
# array reconstructor, the array and dtype types, and codecs.encode for Python 2 byte strings.
# A pickle that names anything else would run code of its choosing while it loads.
CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class CifarUnpickler(pickle.Unpickler):
    """Unpickles plain data and NumPy arrays only; any other global is refused unrun."""

    def __init__(self, fh: BinaryIO, path: Path):
        super().__init__(fh, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self.path} is not a plain CIFAR pickle: it asks to load {module}.{name}, which a "
            "data file never needs, so it was not read (download the data set again)"
        )


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} is missing: is this the python version of the data set?")
    try:
        with open(path, "rb") as fh:
            d = CifarUnpickler(fh, path).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is not a readable CIFAR pickle ({err})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, not the dict of a CIFAR batch")
    return d


def _cifar_arrays(d: dict, label_key: bytes, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if b"data" not in d or label_key not in d:
        keys = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in d)
        raise DataError(
            f"{path} lacks the CIFAR keys 'data' and '{label_key.decode()}' (it has {keys})"
        )
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (ValueError, TypeError) as err:
        raise DataError(f"{path}: 'data' is not rows of 3072 bytes with one label each ({err})") from None
    if len(data) != len(labels):
        raise DataError(f"{path} holds {len(data)} images but {len(labels)} labels")
    return torch.from_numpy(data.astype(np.float32) / 255.0), torch.from_numpy(labels)


def load_cifar(path: str | Path | None, classes: int = 10) -> Dataset:
    """CIFAR-10 (``classes = 10``) or CIFAR-100 (``classes = 100``, fine labels)."""
    name = f"cifar{classes}"
    hint = (
        f"download cifar-{classes}-python.tar.gz once, extract it and set data.path to the "
        f"folder holding {'data_batch_1' if classes == 10 else 'train'}"
    )
    root = _folder(path, name, hint)
    if classes == 10:
        names = [root / f"data_batch_{i}" for i in range(1, 6)]
        parts = [_cifar_arrays(_unpickle(p), b"labels", p) for p in names]
        x_tr = torch.cat([p[0] for p in parts])
        y_tr = torch.cat([p[1] for p in parts])
        x_te, y_te = _cifar_arrays(_unpickle(root / "test_batch"), b"labels", root / "test_batch")
    else:
        x_tr, y_tr = _cifar_arrays(_unpickle(root / "train"), b"fine_labels", root / "train")
        x_te, y_te = _cifar_arrays(_unpickle(root / "test"), b"fine_labels", root / "test")
    x_tr, x_te = _standardise(x_tr, x_te)
    return Dataset(name, x_tr, y_tr, x_te, y_te, classes)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian magic, dimension sizes, then the data."""
    candidates = [path, path.with_name(path.name + ".gz")]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise DataError(f"{path} (or {path.name}.gz) is missing from the MNIST folder")
    opener = gzip.open if found.suffix == ".gz" else open
    try:
        with opener(found, "rb") as fh:
            raw = fh.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{found} is not a whole gzip file ({err}): download it again") from None
    if len(raw) < 4:
        raise DataError(f"{found} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{found} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{found} ends inside its IDX header ({ndim} dimension sizes announced)")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{found} holds {data.size} values, its header says {shape}")
    return data.reshape(shape)


def load_mnist(path: str | Path | None) -> Dataset:
    root = _folder(
        path, "MNIST",
        "download the four IDX files (train/t10k images and labels) once and set data.path",
    )  # fmt: skip

    def images(name: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(root / name).astype(np.float32) / 255.0).unsqueeze(1)

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(root / name).astype(np.int64))

    x_tr, x_te = _standardise(images("train-images-idx3-ubyte"), images("t10k-images-idx3-ubyte"))
    y_tr, y_te = labels("train-labels-idx1-ubyte"), labels("t10k-labels-idx1-ubyte")
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(f"MNIST files in {root} disagree on the number of examples")
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, 10)
