from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from butterfly.config import DataConfig
from butterfly.data import BatchStream, builtin, independent_batch, load_dataset


def test_batch_is_a_pure_function_of_seed_and_step() -> None:
    a = BatchStream(1000, 64, seed=3)
    walked = [a.indices(s) for s in range(40)]  # reached by walking every step
    b = BatchStream(1000, 64, seed=3)  # a fresh stream jumping straight to each step
    for s in (39, 0, 17, 15, 16):
        assert torch.equal(b.indices(s), walked[s])
    assert not torch.equal(BatchStream(1000, 64, seed=4).indices(5), walked[5])


def test_each_epoch_is_a_permutation_without_replacement() -> None:
    st = BatchStream(100, 10, seed=0)
    assert st.steps_per_epoch == 10
    epoch0 = torch.cat([st.indices(s) for s in range(10)])
    epoch1 = torch.cat([st.indices(s) for s in range(10, 20)])
    assert sorted(epoch0.tolist()) == list(range(100))
    assert sorted(epoch1.tolist()) == list(range(100))
    assert not torch.equal(epoch0, epoch1)


def test_stream_rejects_batches_larger_than_the_data() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        BatchStream(10, 32, 0)


def test_independent_batch_is_keyed() -> None:
    assert torch.equal(independent_batch(500, 32, 0, 10, 0), independent_batch(500, 32, 0, 10, 0))
    assert not torch.equal(
        independent_batch(500, 32, 0, 10, 0), independent_batch(500, 32, 0, 10, 1)
    )
    assert len(set(independent_batch(500, 32, 1).tolist())) == 32


def test_synthetic_and_digits() -> None:
    d = load_dataset(DataConfig(name="synthetic", n_train=50, n_test=20, n_features=7, n_classes=3))
    assert d.x_train.shape == (50, 1, 7) and d.x_test.shape == (20, 1, 7)
    assert int(d.y_train.max()) < 3
    dg = load_dataset(DataConfig(name="digits"))
    assert dg.x_train.shape[1:] == (1, 8, 8) and len(dg.y_train) + len(dg.y_test) == 1797
    assert abs(float(dg.x_train.mean())) < 1e-4


def test_mnist1d_is_generated_cached_and_never_downloaded(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    def no_network(*a, **k):
        raise AssertionError("MNIST-1D must never be downloaded")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setenv("BUTTERFLY_CACHE", str(tmp_path))
    random.seed(123)
    np.random.seed(123)
    py_before, np_before = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    d = builtin.load_mnist1d(0)
    assert (random.random(), np.random.rand()) == (py_before, np_before), "global RNG touched"
    assert d.x_train.shape == (4000, 1, 40) and d.x_test.shape == (1000, 1, 40)
    assert (tmp_path / "mnist1d-v1-seed0.npz").is_file()

    def no_generation(seed):
        raise AssertionError("cached data must not be regenerated")

    monkeypatch.setattr(builtin, "_mnist1d_arrays", no_generation)
    again = builtin.load_mnist1d(0)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
