"""Issue 6 (part): real-format loaders on small files the tests write, and augmentations."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from butterfly.cli import main
from butterfly.config import AugmentConfig, DataConfig
from butterfly.data import DataError, from_tensors, load_dataset
from butterfly.data.augment import augment
from butterfly.data.files import read_idx
from butterfly.sweep import run_sweep
from conftest import tiny_config


def _cifar_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 20) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(1, 6):
        d = {b"batch_label": b"training batch", b"labels": rng.integers(0, 10, per_batch).tolist(),
             b"data": _cifar_rows(per_batch, rng), b"filenames": [b"x.png"] * per_batch}  # fmt: skip
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(d, protocol=2))
    test = {
        b"labels": rng.integers(0, 10, per_batch).tolist(),
        b"data": _cifar_rows(per_batch, rng),
    }
    (root / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    return root


def write_cifar100(root: Path) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for name, n in (("train", 50), ("test", 10)):
        d = {b"fine_labels": rng.integers(0, 100, n).tolist(),
             b"coarse_labels": rng.integers(0, 20, n).tolist(), b"data": _cifar_rows(n, rng)}  # fmt: skip
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
    return root


def _idx(data: np.ndarray) -> bytes:
    return (
        struct.pack(">HBB", 0, 0x08, data.ndim)
        + struct.pack(f">{data.ndim}I", *data.shape)
        + data.tobytes()
    )


def write_mnist(root: Path, gz: bool = False) -> Path:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 60).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 12).astype(np.uint8),
    }
    for name, arr in files.items():
        if gz:
            with gzip.open(root / f"{name}.gz", "wb") as fh:
                fh.write(_idx(arr))
        else:
            (root / name).write_bytes(_idx(arr))
    return root


def test_cifar10_and_cifar100(tmp_path: Path) -> None:
    d = load_dataset(DataConfig(name="cifar10", path=str(write_cifar10(tmp_path / "c10"))))
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert d.n_classes == 10 and d.y_train.dtype == torch.int64
    assert d.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # standardised per channel
    # pixel layout: row i holds the R plane, then G, then B, of a 32x32 image
    raw = pickle.loads((tmp_path / "c10" / "data_batch_1").read_bytes())[b"data"][0]
    x0 = d.x_train[0]
    assert np.corrcoef(raw[1024:2048].astype(float), x0[1].flatten().numpy())[0, 1] > 0.999
    d100 = load_dataset(DataConfig(name="cifar100", path=str(write_cifar100(tmp_path / "c100"))))
    assert d100.n_classes == 100 and d100.x_train.shape == (50, 3, 32, 32)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path: Path, gz: bool) -> None:
    root = write_mnist(tmp_path / "mnist", gz)
    d = load_dataset(DataConfig(name="mnist", path=str(root)))
    assert d.x_train.shape == (60, 1, 28, 28) and d.x_test.shape == (12, 1, 28, 28)
    raw = read_idx(root / "train-labels-idx1-ubyte")
    assert d.y_train.tolist() == raw.tolist()


def test_missing_and_corrupt_files_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(DataError, match=r"does not exist: download cifar-10-python\.tar\.gz"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"data\.path is required for MNIST"):
        load_dataset(DataConfig(name="mnist"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03junk")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_idx(bad / "train-images-idx3-ubyte")
    code = main(["run", "--out", str(tmp_path / "r"), "--set", "data.name=cifar10",
                 "--set", f"data.path={tmp_path / 'missing'}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "cifar10 folder" in err and "does not exist" in err
    assert not (tmp_path / "r").exists()


def test_tensor_dataset() -> None:
    d = from_tensors(
        torch.randn(30, 5), torch.randint(0, 3, (30,)), torch.randn(8, 5), torch.randint(0, 3, (8,))
    )
    assert d.x_train.shape == (30, 5) and d.n_classes == 3  # shapes are kept as given


def test_augmentations_are_step_indexed_and_do_what_they_say() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    cfg = AugmentConfig(flip=True, crop_padding=2, rotation=10, translate=1, cutout=3)
    a, b = augment(x, cfg, 0, 5), augment(x, cfg, 0, 5)
    assert torch.equal(a, b)  # a pure function of (seed, step)
    assert not torch.equal(a, augment(x, cfg, 0, 6))
    assert not torch.equal(a, augment(x, cfg, 1, 5))
    assert a.shape == x.shape
    flips = [augment(x, AugmentConfig(flip=True), 0, s) for s in range(20)]
    assert all(torch.equal(f[0], x[0]) or torch.equal(f[0], x[0].flip(-1)) for f in flips)
    assert any(torch.equal(f[0], x[0].flip(-1)) for f in flips)
    cut = augment(x, AugmentConfig(cutout=3), 0, 1)
    zeros = (cut[:, 0] == 0).flatten(1).sum(1)
    assert ((zeros > 0) & (zeros <= 9)).all()
    crop = augment(x, AugmentConfig(crop_padding=2), 0, 3)
    assert crop.shape == x.shape and set(torch.unique(crop).tolist()) <= set(
        torch.unique(x).tolist()
    ) | {0.0}
    assert torch.equal(augment(x, AugmentConfig(), 0, 0), x)


def test_sweep_on_cifar_format_with_augmentation(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c10", per_batch=16)
    cfg = tiny_config(
        data={"name": "cifar10", "path": str(root), "augment": {"flip": True, "crop_padding": 4}},
        model={"name": "cnn", "width": 4, "depth": 2},
        recipe={"steps": 12, "batch_size": 16},
        perturb={"times": [0.0, 0.5], "sigmas": [0.01], "kinds": ["gaussian"]},
        eval={"activation_matching": False, "trajectory_points": 0, "proxy_fractions": []},
    )
    out = run_sweep(cfg, tmp_path / "run", quiet=True)
    assert out.control_ok and len(out.results) == 4
