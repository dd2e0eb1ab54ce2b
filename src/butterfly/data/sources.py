"""Built-in data sets, held in memory as tensors.

* ``mnist1d``: MNIST-1D generated procedurally with the ``mnist1d`` package's ``make_dataset``
  (4000 train / 1000 test signals of length 40), cached once as ``.npz`` in the user cache
  folder. Its ``get_dataset`` downloads, so it is never called.
* ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn).
* ``synthetic``: Gaussian class clusters for tests; instant.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from butterfly.config import DataConfig
from butterfly.rng import generator


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


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _mnist1d_arrays(seed: int) -> dict[str, np.ndarray]:
    """Generate MNIST-1D with the package's generator, leaving global RNG state untouched."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = 42 + seed  # seed 0 reproduces the published MNIST-1D split
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)  # reseeds `random` and `numpy.random` globally
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": d["x"], "y": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}


def load_mnist1d(seed: int = 0) -> Dataset:
    path = cache_dir() / f"mnist1d-v1-seed{seed}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # a corrupted cache file is rebuilt, not trusted
            arrays = _mnist1d_arrays(seed)
            _atomic_savez(path, **arrays)
    else:
        arrays = _mnist1d_arrays(seed)
        try:
            _atomic_savez(path, **arrays)
        except OSError as err:
            raise DataError(
                f"cannot write the MNIST-1D cache at {path} ({err.strerror}); "
                "set BUTTERFLY_CACHE to a writable folder"
            ) from None

    def xs(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1)

    def ys(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return Dataset(
        "mnist1d", xs(arrays["x"]), ys(arrays["y"]), xs(arrays["x_test"]), ys(arrays["y_test"]), 10
    )


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn digits, 80/20 split fixed by ``seed``, standardised with train statistics."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=generator("digits-split", seed))
    n_train = int(0.8 * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return Dataset("digits", x[tr].contiguous(), y[tr], x[te].contiguous(), y[te], 10)


def make_synthetic(cfg: DataConfig) -> Dataset:
    """Gaussian clusters: class means ~ N(0, I), unit-variance noise around them."""
    g = generator("synthetic", cfg.seed)
    means = 1.5 * torch.randn(cfg.n_classes, cfg.n_features, generator=g)
    n = cfg.n_train + cfg.n_test
    y = torch.randint(0, cfg.n_classes, (n,), generator=g)
    x = means[y] + torch.randn(n, cfg.n_features, generator=g)
    x = x.unsqueeze(1)  # (N, 1, F): a 1-channel signal, like MNIST-1D
    return Dataset(
        "synthetic",
        x[: cfg.n_train].contiguous(),
        y[: cfg.n_train],
        x[cfg.n_train :].contiguous(),
        y[cfg.n_train :],
        cfg.n_classes,
    )


def load_dataset(cfg: DataConfig, tokenizer: str | None = None) -> Dataset:
    """Build the data set a config names (``tokenizer``: for text data sets), then keep only
    ``cfg.classes`` (relabelled 0..k-1 in the order given) and the first ``cfg.max_train``
    training examples."""
    data = _load(cfg, tokenizer)
    if cfg.classes is not None:
        data = select_classes(data, cfg.classes)
    if cfg.max_train is not None and cfg.max_train < len(data.y_train):
        n = cfg.max_train
        data = Dataset(data.name, data.x_train[:n], data.y_train[:n], data.x_test, data.y_test,
                       data.n_classes)  # fmt: skip
    return data


def select_classes(data: Dataset, classes: list[int]) -> Dataset:
    """The examples of ``classes`` only, relabelled ``classes[i] -> i`` (e.g. a task split)."""
    bad = [c for c in classes if c >= data.n_classes]
    if bad:
        raise DataError(
            f"data.classes {bad} do not exist: '{data.name}' has classes 0..{data.n_classes - 1}"
        )
    lut = torch.full((data.n_classes,), -1, dtype=torch.int64)
    lut[torch.tensor(classes)] = torch.arange(len(classes))

    def pick(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = lut[y]
        keep = new >= 0
        return x[keep].contiguous(), new[keep]

    xtr, ytr = pick(data.x_train, data.y_train)
    xte, yte = pick(data.x_test, data.y_test)
    return Dataset(f"{data.name}[{','.join(map(str, classes))}]", xtr, ytr, xte, yte, len(classes))


def _load(cfg: DataConfig, tokenizer: str | None) -> Dataset:
    if cfg.name == "mnist1d":
        return load_mnist1d(cfg.seed)
    if cfg.name == "digits":
        return load_digits(cfg.seed)
    if cfg.name == "synthetic":
        return make_synthetic(cfg)
    if cfg.name in ("glue", "sentiment"):
        from butterfly.data.text import load_text

        return load_text(cfg.name, cfg.path, cfg.seed, tokenizer, cfg.max_length)
    from butterfly.data import files

    if cfg.name in ("cifar10", "cifar100"):
        return files.load_cifar(cfg.path, 10 if cfg.name == "cifar10" else 100)
    if cfg.name == "mnist":
        return files.load_mnist(cfg.path)
    raise DataError(f"unknown data set '{cfg.name}'")  # unreachable after validation
