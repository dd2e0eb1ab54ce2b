from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from butterfly.config import ModelConfig
from butterfly.experiment.perturb import (
    apply_perturbation,
    eligible,
    gaussian_direction,
    make_mask,
    matching,
    scale_direction,
)
from butterfly.models import build_model, param_info
from butterfly.sweep import run_sweep


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.fc(x)))


def _params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def test_param_info_kinds_and_variances() -> None:
    info = param_info(Tiny())
    assert info["fc.weight"].kind == "weight" and info["fc.weight"].init_var == pytest.approx(2 / 4)
    assert info["out.weight"].init_var == pytest.approx(2 / 3)
    # biases and norm parameters take the scale of the weights of the layer after them
    assert info["fc.bias"].kind == "bias" and info["fc.bias"].init_var == pytest.approx(2 / 3)
    assert info["norm.weight"].kind == "norm" and info["norm.weight"].init_var == pytest.approx(
        2 / 3
    )
    assert info["out.bias"].init_var == pytest.approx(2 / 3)  # last layer: its own scale


def test_known_direction_gives_expected_norm_and_excludes_the_rest() -> None:
    m = Tiny()
    info = param_info(m)
    names = eligible(info, "weights")
    assert names == ["fc.weight", "out.weight"]
    shapes = {n: p.shape for n, p in m.named_parameters()}
    # a known direction: all ones on fc.weight, all twos on out.weight
    direction = {"fc.weight": torch.ones(3, 4), "out.weight": 2 * torch.ones(2, 3)}
    mask = make_mask(shapes, names, 1.0, 0)
    pert = scale_direction(direction, mask, info)
    expected = math.sqrt(12 * (2 / 4) + 6 * (2 / 3))  # sqrt(Var[theta_0 * M]) = sqrt(10)
    assert pert.expected_norm == pytest.approx(expected, rel=1e-12)
    norm = math.sqrt(sum(float(v.double().square().sum()) for v in pert.eps.values()))
    assert norm == pytest.approx(expected, rel=1e-6)
    # direction is preserved: eps is proportional to the given direction
    ratio = pert.eps["out.weight"][0, 0] / pert.eps["fc.weight"][0, 0]
    assert float(ratio) == pytest.approx(2.0, rel=1e-6)
    # applying it: excluded tensors are bit-for-bit untouched
    p = _params(m)
    before = _params(m)
    apply_perturbation(p, pert, 0.01)
    for k in ("fc.bias", "norm.weight", "norm.bias", "out.bias"):
        assert torch.equal(p[k], before[k])
    delta = math.sqrt(sum(float((p[k] - before[k]).double().square().sum()) for k in names))
    assert delta == pytest.approx(0.01 * expected, rel=1e-4)


def test_unnormalised_direction_is_the_raw_masked_direction() -> None:
    m = Tiny()
    info = param_info(m)
    names = eligible(info, "weights")
    shapes = {n: p.shape for n, p in m.named_parameters()}
    d = {n: torch.randn(shapes[n]) for n in names}
    pert = scale_direction(d, make_mask(shapes, names, 1.0, 0), info, normalize=False)
    for n in names:
        assert torch.equal(pert.eps[n], d[n])


def test_fraction_mask_changes_f_of_the_weights_with_eq6_norm() -> None:
    m = build_model(ModelConfig(width=64, depth=2), (1, 40), 10, seed=0)
    info = param_info(m)
    names = eligible(info, "weights")
    shapes = {n: p.shape for n, p in m.named_parameters()}
    n_total = sum(math.prod(shapes[n]) for n in names)
    full_var = sum(math.prod(shapes[n]) * info[n].init_var for n in names)
    for f in (0.1, 0.5):
        mask = make_mask(shapes, names, f, 0, 0, 0)
        pert = scale_direction(gaussian_direction(shapes, info, names, 0, 0, 0), mask, info)
        changed = sum(int(e.count_nonzero()) for e in pert.eps.values())
        assert changed == round(f * n_total)
        masked_var = sum(float((mask[n] * info[n].init_var).sum()) for n in names)
        assert masked_var == pytest.approx(f * full_var, rel=0.1)  # about f of the init variance
        norm = math.sqrt(sum(float(e.double().square().sum()) for e in pert.eps.values()))
        assert norm == pytest.approx(math.sqrt(masked_var), rel=1e-6)  # Eq. 6 on the masked part
    single = make_mask(shapes, names, 1e-9, 0)
    assert sum(int(v.sum()) for v in single.values()) == 1  # down to a single weight


def test_masks_select_by_kind() -> None:
    m = build_model(ModelConfig(name="resnet", width=4, depth=8), (3, 8, 8), 10, seed=0)
    info = param_info(m)
    norm = eligible(info, "norm")
    assert norm and all(info[n].kind == "norm" for n in norm)
    assert all(info[n].kind == "weight" for n in eligible(info, "weights"))
    wb = eligible(info, "weights+biases")
    assert "out.bias" in wb and not any(info[n].kind == "norm" for n in wb)
    assert set(eligible(info, "all")) == set(info)


def test_gaussian_direction_matches_kaiming_scale_and_is_keyed() -> None:
    m = build_model(ModelConfig(width=256, depth=1), (1, 100), 10, seed=0)
    info = param_info(m)
    shapes = {n: p.shape for n, p in m.named_parameters()}
    d = gaussian_direction(shapes, info, ["hidden.0.weight"], 0, 0, 0)
    assert float(d["hidden.0.weight"].var()) == pytest.approx(2 / 100, rel=0.05)
    d2 = gaussian_direction(shapes, info, ["hidden.0.weight"], 0, 0, 0)
    assert torch.equal(d["hidden.0.weight"], d2["hidden.0.weight"])
    d3 = gaussian_direction(shapes, info, ["hidden.0.weight"], 0, 0, 1)
    assert not torch.equal(d["hidden.0.weight"], d3["hidden.0.weight"])


def test_zero_direction_is_refused() -> None:
    m = Tiny()
    info = param_info(m)
    names = eligible(info, "weights")
    shapes = {n: p.shape for n, p in m.named_parameters()}
    with pytest.raises(FloatingPointError, match="norm 0"):
        scale_direction(
            {n: torch.zeros(shapes[n]) for n in names}, make_mask(shapes, names, 1.0), info
        )


def test_layer_patterns_choose_the_parameters_within_the_mask() -> None:
    m = build_model(ModelConfig(name="resnet", width=4, depth=8), (3, 8, 8), 10, seed=0)
    info = param_info(m)
    first = ["blocks.0.conv1.weight", "blocks.0.conv2.weight"]
    assert eligible(info, "weights", ["blocks.0.*"]) == first
    assert eligible(info, "weights", ["blocks.2.*", "blocks.0.*"]) == [
        *first, "blocks.2.conv1.weight", "blocks.2.conv2.weight", "blocks.2.shortcut.0.weight"]  # fmt: skip
    assert eligible(info, "norm", ["blocks.0.*"]) == [
        "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias"]  # fmt: skip
    assert eligible(info, "all", ["out.*"]) == ["out.weight", "out.bias"]
    assert eligible(info, "weights", []) == eligible(info, "weights")  # no patterns: every one
    assert matching(["a.weight", "A.weight"], ["a.*"]) == ["a.weight"]  # case-sensitive
    with pytest.raises(ValueError, match=r"selects no parameter of this model within perturb.layers \['out.bias'\]"):
        eligible(info, "weights", ["out.bias"])


def test_a_layer_mask_perturbs_only_its_block_with_eq6_scaled_to_it() -> None:
    import butterfly

    m = build_model(ModelConfig(name="resnet", width=4, depth=8), (3, 8, 8), 10, seed=0)
    child = butterfly.perturb(m, 0.01, layers=["blocks.1.*"])
    before = {k: v.detach() for k, v in m.named_parameters()}
    after = {k: v.detach() for k, v in child.named_parameters()}
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert changed == ["blocks.1.conv1.weight", "blocks.1.conv2.weight", "blocks.1.shortcut.0.weight"]
    info = param_info(m)
    target = math.sqrt(sum(before[n].numel() * info[n].init_var for n in changed))  # Eq. 6
    delta = math.sqrt(sum(float((after[n] - before[n]).double().square().sum()) for n in changed))
    assert delta == pytest.approx(0.01 * target, rel=1e-4)


def test_a_sweep_with_layer_patterns_perturbs_only_those_weights(tmp_path: Path) -> None:
    from conftest import tiny_config

    lean = {"weight_matching": False, "activation_matching": False, "proxy_fractions": [],
            "trajectory_points": 0}  # fmt: skip
    cfg = tiny_config(perturb={"times": [0.0], "sigmas": [1e-2], "layers": ["hidden.1.*"]},
                      eval=lean)  # fmt: skip
    df = run_sweep(cfg, tmp_path / "run", quiet=True).results
    kids = df[df.control == 0]
    assert len(kids) == 2 and (kids.n_perturbed == 16 * 16).all()  # hidden.1.weight of width 16
    gauss = kids[kids.kind == "gaussian"].iloc[0]
    assert gauss.noise_l2 == pytest.approx(1e-2 * math.sqrt(256 * 2 / 16), rel=1e-5)


@pytest.mark.parametrize(
    ("layers", "needle"),
    [
        ("[blocks.*]", "perturb.layers pattern 'blocks.*' matches no parameter of model 'mlp'; its "
         "parameters are named like hidden.0.weight, hidden.0.bias, hidden.1.weight"),
        ("['*.bias']", "perturb.layers ['*.bias'] and perturb.mask = weights together select no "
         "parameter of model 'mlp': the patterns match only bias parameters"),
    ],
)
def test_layer_patterns_are_checked_against_the_model_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layers: str, needle: str
) -> None:
    from butterfly.cli import main
    from conftest import tiny_config

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config().to_dict()))
    code = main(["run", str(tmp_path / "c.yaml"), "--set", f"perturb.layers={layers}",
                 "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"butterfly: error: {needle}") and "Traceback" not in err
    assert not (tmp_path / "r").exists()
