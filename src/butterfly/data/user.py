"""A user's own data: tensors, arrays or ``torch.utils.data.Dataset`` objects from Python, or a
loader named by import path in a config (``data.name: package.module:load``).

Whatever the form, it becomes a :class:`~butterfly.data.dataset.Dataset` of fixed-size
examples held in memory, so batches stay a pure function of (seed, step). Integer targets are
class labels (``n_classes`` = the largest label + 1 unless given); floating-point targets are a
regression (``n_classes = 0``: give a loss function). Data given from Python is written once
into the run folder (``data.safetensors``) with a content fingerprint in the run's config, so
workers, resume, ``butterfly status`` and ``butterfly report`` find the same data, and a changed
data set on an existing run folder is refused like a changed config.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from butterfly.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from butterfly.data.dataset import DataError, Dataset

SPLITS = ("x_train", "y_train", "x_test", "y_test")
STORED_FILE = "data.safetensors"
_memory: dict[str, Dataset] = {}  # data handed in from Python, by fingerprint (this process)


def _tensor(v: Any, what: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    if isinstance(v, Sequence) and not isinstance(v, str):
        try:
            return torch.as_tensor(np.asarray(v))
        except (TypeError, ValueError):
            pass
    raise DataError(f"{what} must be a tensor or an array; got {type(v).__name__}")


def from_tensors(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    n_classes: int | None = None,
    name: str = "tensors",
) -> Dataset:
    """A data set from tensors (or NumPy arrays): inputs of any fixed shape, one per example,
    and integer class labels (or float targets for a regression with your own loss).

    >>> import torch, butterfly
    >>> d = butterfly.data.from_tensors(torch.randn(100, 8), torch.randint(0, 3, (100,)),
    ...                                 torch.randn(20, 8), torch.randint(0, 3, (20,)))
    >>> d.input_shape, d.n_classes
    ((8,), 3)
    """
    xs = [_tensor(x_train, "x_train"), _tensor(x_test, "x_test")]
    ys = [_tensor(y_train, "y_train"), _tensor(y_test, "y_test")]
    for split, x, y in zip(("train", "test"), xs, ys, strict=True):
        if x.dim() < 2:
            raise DataError(
                f"x_{split} has shape {tuple(x.shape)}: it needs one row per example, "
                "(examples, features...)"
            )
        if len(x) != len(y):
            raise DataError(
                f"x_{split} has {len(x)} examples but y_{split} has {len(y)}: they must match"
            )
        if len(x) < 1:
            raise DataError(f"the {split} split is empty")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DataError(
            f"train inputs have shape {tuple(xs[0].shape[1:])} and test inputs "
            f"{tuple(xs[1].shape[1:])}: every example must have the same shape"
        )
    classify = not ys[0].is_floating_point() and not ys[0].is_complex()
    if classify:
        ys = [y.long() for y in ys]
        low = min(int(y.min()) for y in ys)
        high = max(int(y.max()) for y in ys)
        k = high + 1 if n_classes is None else int(n_classes)
        if low < 0 or high >= k:
            raise DataError(
                f"labels must lie in 0..{k - 1} for {k} classes; got labels from {low} to {high}"
            )
    else:
        k = 0
        ys = [y.float() for y in ys]
    x_tr, x_te = (x.float() if x.is_floating_point() else x for x in xs)
    return Dataset(name, x_tr.contiguous(), ys[0].contiguous(), x_te.contiguous(),
                   ys[1].contiguous(), k)  # fmt: skip


def _stack_examples(ds: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a map-style ``torch.utils.data.Dataset`` of (input, target) pairs."""
    try:
        n = len(ds)
    except TypeError:
        raise DataError(f"{what} has no length: give a map-style torch Dataset") from None
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if not (isinstance(item, Sequence) and len(item) == 2):
            raise DataError(f"{what}[{i}] is not an (input, target) pair")
        xs.append(_tensor(item[0], f"{what}[{i}] input"))
        ys.append(torch.as_tensor(item[1]))
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise DataError(
            f"{what} holds examples of {len(shapes)} different shapes (e.g. {sorted(shapes)[:2]}): "
            "butterfly needs fixed-size examples"
        )
    return torch.stack(xs), torch.stack(ys)


def from_torch(train: Any, test: Any, n_classes: int | None = None, name: str = "dataset") -> Dataset:
    """A data set from two map-style ``torch.utils.data.Dataset`` objects of (input, target)
    pairs with fixed-size inputs (materialised once in memory)."""
    x_tr, y_tr = _stack_examples(train, "the training set")
    x_te, y_te = _stack_examples(test, "the test set")
    return from_tensors(x_tr, y_tr, x_te, y_te, n_classes, name)


def as_dataset(obj: Any, name: str = "user") -> Dataset:
    """Whatever a user's loader returned, as a Dataset: a Dataset; a mapping with x_train,
    y_train, x_test, y_test; a 4-sequence of those; or a (train, test) pair of torch Datasets."""
    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, Mapping):
        missing = [k for k in SPLITS if k not in obj]
        if missing:
            raise DataError(f"the data mapping lacks {missing}: give x_train, y_train, x_test, y_test")
        return from_tensors(*(obj[k] for k in SPLITS), n_classes=obj.get("n_classes"), name=name)
    if isinstance(obj, Sequence) and len(obj) == 4:
        return from_tensors(*obj, name=name)
    if isinstance(obj, Sequence) and len(obj) == 2:
        return from_torch(obj[0], obj[1], name=name)
    raise DataError(
        f"cannot use a {type(obj).__name__} as a data set: return a butterfly Dataset, "
        "(x_train, y_train, x_test, y_test), a mapping of those, or (train, test) torch Datasets"
    )


def fingerprint(data: Dataset) -> str:
    """A content hash of the tensors (shapes, dtypes, values) and the number of classes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(data.n_classes).encode())
    for k in SPLITS:
        t = getattr(data, k).contiguous()
        h.update(f"{k}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return "blake2b:" + h.hexdigest()


def remember(data: Dataset) -> str:
    """Keep ``data`` in this process under its fingerprint (returned), so this process needs
    no file to use it; workers read the copy written into the run folder."""
    fp = fingerprint(data)
    _memory[fp] = data
    return fp


def recall(fp: str | None) -> Dataset | None:
    return _memory.get(fp) if fp else None


def save_stored(data: Dataset, path: Path) -> str:
    """Write ``data`` to ``path`` (safetensors, atomically) once; returns its fingerprint."""
    fp = fingerprint(data)
    if path.is_file():
        try:
            if fingerprint(load_stored(path)) == fp:
                return fp
        except DataError:
            pass
    tensors = {k: getattr(data, k) for k in SPLITS}
    save_checkpoint(path, tensors, None, {"name": data.name, "n_classes": data.n_classes,
                                          "fingerprint": fp})  # fmt: skip
    return fp


def load_stored(path: Path, expected: str | None = None) -> Dataset:
    """The data set kept in a run folder, checked against its ``expected`` fingerprint."""
    if not path.is_file():
        raise DataError(f"the run's data file {path} is missing: pass the data again from Python")
    try:
        tensors, _, meta = load_checkpoint(path)
    except CheckpointError as err:
        raise DataError(str(err)) from None
    data = Dataset(str(meta.get("name", "stored")), *(tensors[k] for k in SPLITS),
                   int(meta.get("n_classes", 0)))  # fmt: skip
    if expected is not None and fingerprint(data) != expected:
        raise DataError(
            f"the run's data file {path} does not match the fingerprint in its config "
            f"({expected}): it was changed or corrupted"
        )
    return data
