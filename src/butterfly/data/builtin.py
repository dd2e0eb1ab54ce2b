"""Built-in data sets, generated or shipped offline, held in memory as tensors.

* ``mnist1d``: MNIST-1D generated procedurally with the ``mnist1d`` package's ``make_dataset``
  (4000 train / 1000 test signals of length 40), cached once as ``.npz`` in the user cache
  folder. Its ``get_dataset`` downloads, so it is never called.
* ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn).
* ``synthetic``: Gaussian class clusters for tests; instant.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from butterfly.config import DataConfig
from butterfly.data.dataset import DataError, Dataset, atomic_savez, cache_dir
from butterfly.rng import generator


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
            atomic_savez(path, **arrays)
    else:
        arrays = _mnist1d_arrays(seed)
        try:
            atomic_savez(path, **arrays)
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
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise DataError(
            "data.name = digits needs scikit-learn, which ships the data set: "
            "pip install 'butterfly[digits]'"
        ) from None

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
