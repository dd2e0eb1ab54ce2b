from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from butterfly.metrics import (
    alphas,
    curve_barrier,
    evaluate,
    excess_curve,
    interpolate,
    l2_distance,
)


def test_barrier_is_literal_eq4_not_the_gap_at_the_loss_maximum() -> None:
    ws = alphas(11)
    # endpoints 0 and 10; the loss is highest at alpha = 0.9 (9.5, excess 0.5) but the largest
    # excess over the interpolated endpoints is at alpha = 0.5 (6.0 - 5.0 = 1.0)
    values = [10 * w for w in ws]
    values[5] = 6.0
    values[9] = 9.5
    assert max(range(11), key=lambda i: values[i] if 0 < i < 10 else -1) == 9
    assert curve_barrier(values, ws) == pytest.approx(1.0)
    assert excess_curve(values, ws)[9] == pytest.approx(0.5)
    # a convex path has no barrier (the endpoints' excess is 0 by construction)
    assert curve_barrier([w * w for w in ws], ws) == 0.0


def _tiny_model() -> tuple[nn.Module, dict, dict]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    a = {k: v.detach().clone() for k, v in m.named_parameters()}
    b = {k: v + 0.8 * torch.randn_like(v) for k, v in a.items()}
    return m, a, b


def test_barrier_of_a_network_with_itself_is_exactly_zero() -> None:
    m, a, _ = _tiny_model()
    x, y = torch.randn(50, 3), torch.randint(0, 2, (50,))
    ws = alphas(11)
    same = dict(a)
    losses = [evaluate(m, interpolate(a, same, w), x, y).loss for w in ws]
    assert curve_barrier(losses, ws) == 0.0
    assert l2_distance(a, same) == 0.0


def test_barrier_equals_a_hand_computation() -> None:
    m, a, _ = _tiny_model()
    a = {k: 3 * v for k, v in a.items()}
    x = torch.randn(20, 3)
    with torch.no_grad():
        y = torch.func.functional_call(m, a, (x,)).argmax(-1)  # a fits its labels
    # b computes the same function with its hidden units permuted: equal endpoint losses, but
    # the straight path between them averages different units, so it has a real barrier
    perm = torch.tensor([2, 0, 3, 1])
    b = {"0.weight": a["0.weight"][perm], "0.bias": a["0.bias"][perm],
         "2.weight": a["2.weight"][:, perm], "2.bias": a["2.bias"]}  # fmt: skip
    ws = alphas(11)
    ours = curve_barrier([evaluate(m, interpolate(a, b, w), x, y).loss for w in ws], ws)

    # by hand, in float64 numpy: loss(alpha) on the path, minus the line between the endpoints
    def loss(p: dict) -> float:
        W1, b1 = p["0.weight"].double().numpy(), p["0.bias"].double().numpy()
        W2, b2 = p["2.weight"].double().numpy(), p["2.bias"].double().numpy()
        h = np.maximum(x.double().numpy() @ W1.T + b1, 0)
        z = h @ W2.T + b2
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-logp[np.arange(len(y)), y.numpy()].mean())

    la, lb = loss(a), loss(b)
    hand = max(
        loss({k: (1 - w) * a[k].double() + w * b[k].double() for k in a}) - ((1 - w) * la + w * lb)
        for w in ws
    )
    assert hand > 1e-3, "the test pair must have a real barrier"
    assert ours == pytest.approx(hand, abs=1e-5)


def test_error_is_zero_one_loss() -> None:
    m, a, _ = _tiny_model()
    x = torch.randn(64, 3)
    with torch.no_grad():
        pred = torch.func.functional_call(m, a, (x,)).argmax(-1)
    y = pred.clone()
    y[:16] = 1 - y[:16]
    ev = evaluate(m, a, x, y, batch_size=10)  # chunking must not matter
    assert ev.error == pytest.approx(16 / 64) and ev.accuracy == pytest.approx(0.75)


def test_l2_distance_in_float64() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "v": torch.tensor([[3.0]])}
    b = {"w": torch.tensor([1.0, 0.0]), "v": torch.tensor([[0.0]])}
    assert l2_distance(a, b) == pytest.approx(math.sqrt(13))
