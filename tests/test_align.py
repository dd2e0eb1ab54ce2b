from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from butterfly.align import (
    activation_matching,
    apply_permutation,
    compose,
    derive_spec,
    fixed_point_fraction,
    identity,
    random_perms,
    spec_for,
    weight_matching,
)
from butterfly.align.permute import random_permutation
from butterfly.config import EvalConfig, ModelConfig
from butterfly.data import Dataset
from butterfly.experiment.comparer import Comparer
from butterfly.models import build_model
from butterfly.rng import generator

MODELS = {
    "mlp": (ModelConfig(width=16, depth=3), (1, 12)),
    "cnn": (ModelConfig(name="cnn", width=8, depth=3), (1, 12)),
    "resnet8": (ModelConfig(name="resnet", width=4, depth=8), (3, 8, 8)),
    "resnet14": (ModelConfig(name="resnet", width=4, depth=14), (1, 12)),
}


def _model(name: str, seed: int = 0):
    cfg, shape = MODELS[name]
    m = build_model(cfg, shape, 5, seed).double()
    # give norm layers non-trivial affine parameters so the test sees them permuted
    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    g = torch.Generator().manual_seed(seed + 1)
    for k, v in params.items():
        if "norm" in k or "shortcut.1" in k or k.endswith("bias"):
            v.add_(0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype))
    return m, shape, params


@pytest.mark.parametrize("name", list(MODELS))
def test_hand_written_spec_matches_the_traced_graph(name: str) -> None:
    m, _, _ = _model(name)
    hand, derived = spec_for(m), derive_spec(m)
    assert hand.groups() == derived.groups()
    # every tensor with a hidden axis is covered: all but the input and output axes
    covered = {(n, a) for axes in hand.perm_to_axes.values() for n, a in axes}
    for n, p in m.named_parameters():
        if (
            n.endswith("weight")
            and p.dim() >= 2
            and not n.startswith(("out.", "conv.", "convs.0", "hidden.0"))
        ):
            assert (n, 1) in covered, n


@pytest.mark.parametrize("name", list(MODELS))
def test_a_random_permutation_computes_the_same_function(name: str) -> None:
    m, shape, params = _model(name)
    spec = spec_for(m)
    perms = random_perms(spec, params, 0.0, generator("test", 0))
    assert fixed_point_fraction(perms)[0] < 0.2
    permuted = apply_permutation(spec, perms, params)
    x = torch.randn(7, *shape, dtype=torch.float64)
    y0 = functional_call(m, params, (x,))
    y1 = functional_call(m, permuted, (x,))
    assert torch.allclose(y0, y1, rtol=1e-12, atol=1e-12)
    assert any(not torch.equal(params[k], permuted[k]) for k in params)


@pytest.mark.parametrize("name", list(MODELS))
def test_weight_matching_recovers_a_random_permutation_exactly(name: str) -> None:
    m, _, params = _model(name)
    spec = spec_for(m)
    perms = random_perms(spec, params, 0.0, generator("test", 1))
    b = apply_permutation(spec, perms, params)
    res = weight_matching(spec, params, b, seed=0)
    assert res.converged
    undone = compose(res.perms, perms)  # apply the random perm, then the found one
    assert fixed_point_fraction(undone)[0] == 1.0
    aligned = apply_permutation(spec, res.perms, b)
    for k in params:
        assert torch.equal(aligned[k], params[k]), k
    # matching a network with itself returns the identity
    self_match = weight_matching(spec, params, params)
    assert fixed_point_fraction(self_match.perms)[0] == 1.0 and self_match.iterations == 1


def test_random_permutation_has_the_requested_fixed_points() -> None:
    g = generator("test", 2)
    for f in (0.0, 0.25, 0.5, 1.0):
        p = random_permutation(64, f, g)
        assert sorted(p.tolist()) == list(range(64))
        assert int((p == torch.arange(64)).sum()) == round(f * 64)


def test_random_head_permutations_move_heads_as_blocks_with_the_requested_fixed_points() -> None:
    """A head group of 6 heads of 4 units: one head order shared by the query/key and the
    value/output permutations, units moved only within a head, exactly round(f n) in place."""
    from butterfly.align import PermutationSpec, random_perms

    spec = PermutationSpec({"qk": (("q", 0), ("k", 0)), "vo": (("v", 0), ("o", 1))},
                           heads={"qk": ("H", 4), "vo": ("H", 4)})  # fmt: skip
    params = {n: torch.zeros(24, 24) for n in "qkvo"}
    for f in (0.0, 0.1, 0.25, 0.5, 0.8, 1.0):
        perms = random_perms(spec, params, f, generator("test", 3))
        orders = []
        for p in perms.values():
            assert sorted(p.tolist()) == list(range(24))
            blocks = p.view(6, 4) // 4
            assert (blocks == blocks[:, :1]).all()  # each head lands whole in one head
            orders.append(blocks[:, 0])
            assert int((p == torch.arange(24)).sum()) == round(f * 24), (f, p)
        assert torch.equal(orders[0], orders[1])
    # every count of units in place is met exactly, but n - 1 (one unit cannot move alone)
    from butterfly.align.permute import head_plan

    for H, d in ((4, 4), (3, 5), (2, 3)):
        n = H * d
        for m in range(n + 1):
            order, kept = head_plan(H, d, m / n, generator("test", m))
            fixed = sum(kept[h] for h in range(H) if order[h] == h)
            assert fixed == m or m == n - 1, (H, d, m, fixed)


def _dataset(shape: tuple[int, ...], n: int = 300) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    return Dataset("rand", x, y, x[:100], y[:100], 5)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_activation_matching_recovers_a_permuted_copy(name: str) -> None:
    m, shape, params = _model(name)
    m = m.float()
    params = {k: v.float() for k, v in params.items()}
    spec = spec_for(m)
    perms = random_perms(spec, params, 0.0, generator("test", 3))
    b = apply_permutation(spec, perms, params)
    x = torch.randn(400, *shape)
    found = activation_matching(m, spec, params, b, x)
    assert fixed_point_fraction(compose(found, perms))[0] == 1.0
    same = activation_matching(m, spec, params, params, x)
    assert fixed_point_fraction(same)[0] == 1.0


def test_comparer_on_a_permuted_copy_and_on_itself() -> None:
    m, shape, params = _model("mlp")
    m = m.float()
    a = {k: v.float() for k, v in params.items()}
    spec = spec_for(m)
    b = apply_permutation(spec, random_perms(spec, a, 0.25, generator("test", 4)), a)
    cmp = Comparer(m, _dataset(shape), EvalConfig(cka_examples=100, align_examples=200))
    r = cmp.compare(a, b)
    assert r["l2"] > 1.0
    assert r["l2_wm"] == 0.0 and r["barrier_train_loss_wm"] == 0.0
    assert r["fixed_point_fraction_wm"] == pytest.approx(0.25, abs=0.05)
    assert r["l2_am"] == 0.0
    assert r["cka"] == pytest.approx(0.0, abs=1e-6)  # permuting units does not change CKA
    itself = cmp.compare(a, dict(a))
    for col in ("l2", "barrier_train_loss", "barrier_test_error", "l2_wm", "barrier_train_loss_wm",
                "barrier_train_loss_am", "cka"):  # fmt: skip
        assert itself[col] == 0.0, col
    assert itself["fixed_point_fraction_wm"] == itself["fixed_point_fraction_am"] == 1.0
    assert itself["ensemble_test_acc"] == pytest.approx(itself["test_acc_a"], abs=1e-12)


def test_an_identity_alignment_reuses_the_plain_barriers_instead_of_evaluating_again() -> None:
    # Appendix C.5: for fine-tuned transformers weight matching returns the identity; the
    # aligned network is then the child itself, so its barriers are the plain ones (no second
    # pass over the path), while a real permutation is still evaluated
    m, shape, params = _model("mlp")
    m = m.float()
    a = {k: v.float() for k, v in params.items()}
    near = {k: v + 1e-3 * torch.randn(v.shape, generator=generator("near", 0)) for k, v in a.items()}
    spec = spec_for(m)
    far = apply_permutation(spec, random_perms(spec, a, 0.25, generator("test", 4)), near)
    cfg = EvalConfig(cka_examples=100, align_examples=200, activation_matching=False,
                     cka=False, ensemble=False)  # fmt: skip
    cmp = Comparer(m, _dataset(shape), cfg)
    calls = []
    evaluate = cmp.evaluate
    cmp.evaluate = lambda p, x, y: calls.append(len(x)) or evaluate(p, x, y)  # type: ignore[method-assign]
    plain = Comparer(m, _dataset(shape), cfg.model_copy(update={"weight_matching": False}))
    base = plain.compare(a, near)

    r = cmp.compare(a, near)
    assert r["fixed_point_fraction_wm"] == 1.0
    assert r["barrier_train_loss_wm"] == r["barrier_train_loss"] == base["barrier_train_loss"]
    assert r["barrier_test_error_wm"] == r["barrier_test_error"]
    assert r["l2_wm"] == r["l2"] > 0
    # 2 endpoints x 2 sets + 9 inner points x 2 sets: the path once, not twice
    assert len(calls) == 2 * 2 + 2 * (len(cmp.ws) - 2)
    calls.clear()
    moved = cmp.compare(a, far)
    assert moved["fixed_point_fraction_wm"] < 0.5
    assert moved["l2_wm"] == pytest.approx(r["l2"], rel=1e-5)  # the permutation undone
    assert len(calls) == 2 * (2 * 2 + 2 * (len(cmp.ws) - 2)) - 2  # a's endpoint is reused


def test_models_without_a_spec_say_how_to_give_one() -> None:
    from butterfly.align import NoPermutationSpec
    from butterfly.config import ModelConfig
    from butterfly.models import build_model

    class Branchy(torch.nn.Module):  # control flow on the data: torch.fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.b(h if h.sum() > 0 else -h)

    with pytest.raises(
        NoPermutationSpec, match=r"Branchy has no permutation spec \(.*\).*permutation_spec\(\)"
    ):
        spec_for(Branchy())
    # the built-in ViT's spec is derived through its attention (the residual stream, each
    # block's MLP units, and its heads: query/key and value/output units, one head order)
    vit = build_model(ModelConfig(name="vit", width=12, depth=1), (3, 8, 8), 10, 0)
    spec = spec_for(vit, torch.randn(2, 3, 8, 8))
    assert len(spec.perm_to_axes) == 4 and spec.head_groups() == {"H0": ["H0_qk", "H0_vo"]}
    # Models without a hand-written spec get one derived from their graph; a single layer
    # between the fixed input and output has nothing to permute.
    assert spec_for(torch.nn.Sequential(torch.nn.Linear(3, 3))).perm_to_axes == {}
    assert identity(spec_for(_model("mlp")[0]), _model("mlp")[2])


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_batched_path_evaluation_matches_per_point_and_keeps_zero_exact(name: str) -> None:
    m, shape, params = _model(name)
    m = m.float()
    a = {k: v.float() for k, v in params.items()}
    b = {k: v + 0.05 * torch.randn_like(v) for k, v in a.items()}
    data = _dataset(shape)
    batched = Comparer(m, data, EvalConfig(batched_path=True, batch_size=256))
    single = Comparer(m, data, EvalConfig(batched_path=False, batch_size=256))
    ea, eb = single.endpoint(a), single.endpoint(b)
    got, ref = batched.barriers(a, b, ea, eb), single.barriers(a, b, ea, eb)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-5), k
    same = batched.barriers(a, dict(a), ea, ea)
    assert all(v == 0.0 for v in same.values()), same
    assert batched.train_loss_barrier(a, dict(a)) == 0.0
