"""The in-memory data set every stage works on, and where generated data is cached."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from butterfly.atomic import atomic_path


class DataError(RuntimeError):
    """A data set that cannot be read or built; the message says what to fix."""


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors. ``input_shape`` is channel-first, without the batch axis."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: str | torch.device) -> Dataset:
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.n_classes,
        )


def cache_dir() -> Path:
    """Where generated data is cached: ``$BUTTERFLY_CACHE`` or the platform's user cache."""
    env = os.environ.get("BUTTERFLY_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("butterfly"))


def generated_cache(
    name: str, seed: int, write: Callable[[Path, int], Path], complete: str
) -> Path:
    """The cache folder of a generated data set, written once by ``write(folder, seed)``
    (which writes ``complete`` last: its presence means the folder is whole)."""
    folder = cache_dir() / f"{name}-v1-seed{seed}"
    if not (folder / complete).is_file():
        try:
            write(folder, seed)
        except OSError as err:
            raise DataError(
                f"cannot write the {name} task at {folder} ({err.strerror}); "
                "set BUTTERFLY_CACHE to a writable folder"
            ) from None
    return folder


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to a temporary file, then rename: readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
