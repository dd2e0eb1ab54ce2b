from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from butterfly.metrics.cka import angular_cka


def reference(x: np.ndarray, y: np.ndarray) -> float:
    """The paper's formula written out literally (Eq. 5, appendix B.2), in float64 numpy."""
    m = x.shape[0]
    H = np.eye(m) - np.ones((m, m)) / m

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        ka, kb = H @ a @ a.T @ H, H @ b @ b.T @ H
        return 2 / (m * (m - 3)) * float(np.sum(np.tril(ka, -1) * np.tril(kb, -1)))

    return math.acos(hsic(x, y) / math.sqrt(hsic(x, x) * hsic(y, y)))


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 30, generator=g, dtype=torch.float64)
    y = x @ torch.randn(30, 20, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        200, 20, generator=g, dtype=torch.float64
    )
    return x, y


def test_identical_inputs_give_zero(xy) -> None:
    x, _ = xy
    assert angular_cka(x, x) == 0.0
    assert angular_cka(x.float(), x.float().clone()) == 0.0


def test_matches_a_literal_implementation(xy) -> None:
    x, y = xy
    for a, b in (
        (x, y),
        (y, x),
        (x[:, :5], y),
        (torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 7, dtype=torch.float64)),
    ):
        assert angular_cka(a, b) == pytest.approx(reference(a.numpy(), b.numpy()), abs=1e-9)


def test_invariances(xy) -> None:
    x, y = xy
    base = angular_cka(x, y)
    assert base > 0.1
    q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    assert angular_cka(x, y @ q) == pytest.approx(base, abs=1e-10)  # orthogonal
    assert angular_cka(3.7 * x, y) == pytest.approx(base, abs=1e-10)  # isotropic scaling
    assert angular_cka(x + 5.0, y - torch.randn(20, dtype=torch.float64)) == pytest.approx(
        base, abs=1e-10
    )  # translation
    a = torch.randn(20, 20, dtype=torch.float64)
    a[:, 0] *= 30  # a general (anisotropic) linear map
    assert abs(angular_cka(x, y @ a) - base) > 1e-3


def test_resolves_a_distance_of_a_milliradian() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 64, generator=g, dtype=torch.float64)
    noise = torch.randn(1000, 64, generator=g, dtype=torch.float64)
    # find the noise scale that gives a true distance of about 1e-3 rad, by the reference formula
    eps = 1e-3
    for _ in range(3):
        d = reference(x.numpy(), (x + eps * noise).numpy())
        eps *= 1e-3 / d
    y = x + eps * noise
    truth = reference(x.numpy(), y.numpy())
    assert truth == pytest.approx(1e-3, rel=0.05)
    ours = angular_cka(x.float(), y.float())  # float32 activations, as a network produces them
    assert ours == pytest.approx(truth, rel=0.02)
    assert angular_cka(x, y) == pytest.approx(truth, rel=1e-6)


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        angular_cka(torch.randn(10, 2), torch.randn(11, 2))
    with pytest.raises(ValueError, match="at least 4"):
        angular_cka(torch.randn(3, 2), torch.randn(3, 2))
