"""Models as researchers write them (``public_models.py``, written the way public repositories
write them, not by butterfly): tied weights, their own LayerNorm class and fused attention,
frozen parameters, functional dropout, data-dependent initialisation, a Hugging Face model
drawn fresh from its config per seed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import butterfly
from butterfly.checkpoint import load_checkpoint
from butterfly.cli import main
from butterfly.config import ConfigError, ModelConfig, build_config
from butterfly.experiment.resolve import resolve
from butterfly.experiment.setup import make_setup
from butterfly.models import build_model, param_info, trainable
from butterfly.sweep import run_sweep
from butterfly.train import Population

SMALL_EVAL = {"max_train_examples": 32, "max_test_examples": 32, "alphas": 5, "cka": False,
              "ensemble": False, "weight_matching": False, "activation_matching": False,
              "proxy_fractions": [], "trajectory_barriers": False}  # fmt: skip


def gpt_raw() -> dict[str, Any]:
    return {
        "name": "minigpt", "seeds": [0],
        "data": {"name": "arithmetic", "max_length": 128, "tokenizer": "bytes"},
        "model": {"name": "public_models:MiniGPT", "kwargs": {"n_embd": 16, "n_layer": 1,
                                                               "n_head": 2}},
        "recipe": {"optimizer": "adamw", "lr": 3e-3, "steps": 8, "batch_size": 8},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-2], "kinds": ["gaussian"]},
        "eval": {**SMALL_EVAL, "weight_matching": True}, "runtime": {"workers": 1},
    }  # fmt: skip


def results(run: Path) -> pd.DataFrame:
    with sqlite3.connect(run / "results.db") as db:
        return pd.read_sql("SELECT * FROM results ORDER BY t, member", db)


def test_a_gpt_with_tied_embeddings_and_its_own_layernorm_from_yaml_and_python(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gpt.yaml"
    cfg.write_text(yaml.safe_dump(gpt_raw()))
    assert main(["run", str(cfg), "--out", str(tmp_path / "yaml")]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    # the census: tied output layer counted once, the model's own LayerNorm class as norm
    assert "norm 6 tensors / 96 numbers; tied 1 tensors / 4,128 numbers" in out
    df = results(tmp_path / "yaml")
    ctrl = df[df.member == "control"]
    assert len(ctrl) == 2 and (ctrl.l2 == 0.0).all() and (ctrl.barrier_test_loss == 0.0).all()
    kids = df[df.kind == "gaussian"].set_index("t")
    assert (kids.l2 > 0).all()
    assert kids.barrier_test_loss[0] > kids.barrier_test_loss[4] >= 0  # t = 0 against T/2
    # weight matching through the attention blocks (the residual stream, the MLP units, heads)
    assert df.fixed_point_fraction_wm.notna().all() and (ctrl.fixed_point_fraction_wm == 1.0).all()
    # stored once, under the name named_parameters() gives it
    saved, _, _ = load_checkpoint(tmp_path / "yaml/parents/seed0/step0000004.safetensors")
    assert "transformer.wte.weight" in saved and "lm_head.weight" not in saved

    from public_models import MiniGPT

    raw = gpt_raw()
    exp = butterfly.Experiment(MiniGPT, model_kwargs=raw["model"]["kwargs"], config=raw)
    run = exp.run(out=tmp_path / "python", quiet=True, report=False)
    cols = ["t", "member", "l2", "barrier_test_loss", "barrier_train_loss"]
    a = run.results.sort_values(["t", "member"]).reset_index(drop=True)[cols]
    assert a.equals(df[cols].reset_index(drop=True))


def test_tied_weights_stay_tied_and_norm_classes_are_recognised_by_what_they_are() -> None:
    from public_models import MiniGPT

    model = MiniGPT((2, 32), 258, n_embd=16, n_layer=1, n_head=2)
    info = param_info(model, {k: v.detach() for k, v in trainable(model).items()})
    assert info["transformer.h.0.ln_1.weight"].kind == "norm"
    assert info["transformer.h.0.ln_1.bias"].kind == "norm"
    assert info["transformer.ln_f.weight"].kind == "norm"
    assert "lm_head.weight" not in info and info["transformer.wte.weight"].kind == "weight"

    class RMSNorm(nn.Module):  # a name that says norm
        def __init__(self, d: int):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale

    class Gain(nn.Module):  # no telling name: a 1-D gain initialised to ones
        def __init__(self, d: int):
            super().__init__()
            self.g = nn.Parameter(torch.ones(d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.g

    class Declared(nn.Module):  # declared by the model
        is_norm = True

        def __init__(self, d: int):
            super().__init__()
            self.alpha = nn.Parameter(torch.full((d,), 0.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.alpha

    net = nn.Sequential(nn.Linear(4, 8), RMSNorm(8), Gain(8), Declared(8), nn.Linear(8, 2))
    info = param_info(net, {k: v.detach() for k, v in net.named_parameters()}, own_init=False)
    assert [info[n].kind for n in ("1.scale", "2.g", "3.alpha")] == ["norm"] * 3
    assert info["1.scale"].init_var == pytest.approx(2 / 8)  # the next weight layer's scale


def frozen_raw(p: float = 0.0, mode: str = "auto") -> dict[str, Any]:
    return {
        "name": "frozen", "seeds": [0],
        "data": {"name": "synthetic", "n_train": 256, "n_test": 128, "n_features": 12,
                 "n_classes": 4},
        "model": {"name": "public_models:FrozenWhiteningNet", "kwargs": {"p": p}},
        "recipe": {"steps": 60, "batch_size": 32, "lr": 0.1, "weight_decay": 5e-4},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-1], "kinds": ["gaussian"],
                    "mask": "all"},
        "eval": SMALL_EVAL, "runtime": {"workers": 1, "mode": mode},
    }  # fmt: skip


def test_frozen_parameters_are_neither_trained_nor_perturbed_nor_counted(tmp_path: Path) -> None:
    resolved = resolve(build_config(frozen_raw()))
    assert "frozen 1 tensors / 144 numbers" in resolved.census
    setup = make_setup(resolved, 0)
    # the factory was handed the training tensors: its filters whiten the training inputs
    w = setup.model.whiten.weight.detach().clone()
    x = setup.data.x_train.reshape(len(setup.data.x_train), -1)
    white = torch.cov((x @ w.T).T)
    assert torch.allclose(white, torch.eye(12), atol=0.05)
    assert "whiten.weight" not in setup.init and "whiten.weight" not in setup.info
    pop = Population.fresh(setup.trainer.update, setup.init)
    setup.trainer.train(pop, 60)
    assert set(pop.params) == {"fc.weight", "fc.bias", "out.weight", "out.bias"}
    assert not torch.equal(pop.params["fc.weight"][0], setup.init["fc.weight"])  # it trained
    # left as the model has it, byte for byte, after training with weight decay
    assert setup.model.whiten.weight.numpy().tobytes() == w.numpy().tobytes()

    # a real task (scikit-learn's digits, whitened by the frozen filters): the barrier of a
    # child perturbed at t = 0 is above that of one perturbed at t = 0.5T
    raw = frozen_raw()
    raw["data"] = {"name": "digits"}
    raw["model"]["kwargs"]["width"] = 64
    raw["recipe"].update(steps=200, lr=0.005, momentum=0.9)
    raw["perturb"]["sigmas"] = [0.3]
    raw["eval"].update(max_train_examples=256, max_test_examples=256)
    out = run_sweep(build_config(raw), tmp_path / "run", quiet=True)
    assert out.control_ok
    for ckpt in (tmp_path / "run/parents/seed0").glob("*.safetensors"):
        saved, _, _ = load_checkpoint(ckpt)
        assert "whiten.weight" not in saved
    kids = out.results[out.results.kind == "gaussian"].set_index("t")
    assert kids.loc[0, "barrier_test_loss"] > 10 * kids.loc[100, "barrier_test_loss"]


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_functional_dropout_is_on_in_training_with_the_control_exact(
    tmp_path: Path, mode: str
) -> None:
    on = run_sweep(build_config(frozen_raw(0.5, mode)), tmp_path / "on", quiet=True)
    off = run_sweep(build_config(frozen_raw(0.0, mode)), tmp_path / "off", quiet=True)
    assert on.control_ok and off.control_ok
    ctrl = on.results[on.results.member == "control"]
    assert (ctrl.l2 == 0.0).all() and (ctrl.barrier_test_loss == 0.0).all()
    # F.dropout(x, p, self.training) with no nn.Dropout module: the run with p > 0 differs
    a = on.results.sort_values(["t", "member"]).l2.tolist()
    b = off.results.sort_values(["t", "member"]).l2.tolist()
    assert a != b
    again = run_sweep(build_config(frozen_raw(0.5, mode)), tmp_path / "again", quiet=True)
    assert again.results.sort_values(["t", "member"]).l2.tolist() == a


def tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    from butterfly.hf_local import load_tokenizer

    tok = load_tokenizer("minilm")
    tok.save_pretrained(folder)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    return folder


def test_a_hugging_face_bert_from_a_config_draws_its_weights_per_seed(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = tiny_bert(tmp_path / "bert")
    fresh = ModelConfig(name="hf", path=str(folder), init="fresh")
    nets = [build_model(fresh, (2, 16), 2, s) for s in (0, 1, 0)]
    p = [dict(n.named_parameters()) for n in nets]
    name = "net.bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(p[0][name], p[1][name])  # distinct θ0 per seed
    assert all(torch.equal(p[0][k], p[2][k]) for k in p[0])  # the same seed, the same θ0
    saved = dict(build_model(ModelConfig(name="hf", path=str(folder)), (2, 16), 2, 0)
                 .named_parameters())  # fmt: skip
    assert not torch.equal(saved[name], p[0][name])  # not the saved weights
    assert p[0][name].std().item() == pytest.approx(0.02, rel=0.2)  # BERT's own scheme
    with pytest.raises(ConfigError, match=r"model\.init = kaiming is not for a Hugging Face"):
        build_config({"model": {"name": "hf", "path": str(folder), "init": "kaiming"}})
    with pytest.raises(ConfigError, match=r"model\.init = fresh draws a Hugging Face"):
        build_config({"model": {"name": "mlp", "init": "fresh"}})
    raw = {
        "name": "bert", "seeds": [0, 1],
        "data": {"name": "sentiment", "max_length": 16, "max_train": 256},
        "model": {"name": "hf", "path": str(folder), "init": "fresh"},
        "recipe": {"optimizer": "adamw", "lr": 1e-2, "steps": 100, "batch_size": 16},
        "perturb": {"times": [0.0, 0.5], "sigmas": [0.1, 0.5], "kinds": ["gaussian"]},
        "eval": {**SMALL_EVAL, "weight_matching": True}, "runtime": {"workers": 1},
    }  # fmt: skip
    cfg = tmp_path / "bert.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    df = results(tmp_path / "run")
    ctrl = df[df.member == "control"]
    assert len(ctrl) == 4 and (ctrl.l2 == 0.0).all() and (ctrl.barrier_train_loss == 0.0).all()
    theta0 = [load_checkpoint(tmp_path / f"run/parents/seed{s}/step0000000.safetensors")[0]
              for s in (0, 1)]  # fmt: skip
    assert not torch.equal(theta0[0][name], theta0[1][name])
    kids = df[df.kind == "gaussian"]
    # the butterfly effect, per size: a perturbation at t = 0 ends further apart than at T/2
    by_t = kids.groupby(["sigma", "t"]).barrier_train_loss.mean()
    for sigma in (0.1, 0.5):
        assert by_t[(sigma, 0)] > by_t[(sigma, 50)] >= 0, by_t
    # weight matching through BERT's heads (butterfly's spec for it: fx cannot trace it)
    assert kids.fixed_point_fraction_wm.notna().all() and (ctrl.fixed_point_fraction_wm == 1.0).all()
    # the same numbers from the Python API (seed 1)
    py = butterfly.Experiment(config={**raw, "seeds": [1]}).run(out=tmp_path / "py", quiet=True,
                                                                 report=False).results  # fmt: skip
    cols = ["t", "member", "l2", "barrier_train_loss", "fixed_point_fraction_wm"]
    a = py.sort_values(["t", "member"]).reset_index(drop=True)[cols]
    assert a.equals(df[df.seed == 1][cols].reset_index(drop=True))


def test_a_model_of_your_own_reads_the_built_in_text_data(tmp_path: Path) -> None:
    raw = {
        "seeds": [0],
        "data": {"name": "sentiment", "max_length": 32},  # tokenizer: bytes (the default here)
        "model": {"name": "public_models:BagOfTokens"},
        "recipe": {"steps": 20, "batch_size": 16, "lr": 0.1},
        "perturb": {"times": [0.0], "sigmas": [1e-2], "kinds": ["gaussian"]},
        "eval": SMALL_EVAL,
    }  # fmt: skip
    resolved = resolve(build_config(raw))
    assert resolved.tokenizer == "bytes"
    out = run_sweep(resolved, tmp_path / "run", quiet=True, workers=1)
    assert out.control_ok and (out.results[out.results.kind == "gaussian"].l2 > 0).all()


def per_example_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


def broken_in_training(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:  # a bug that only training mode reaches
                raise RuntimeError("shape mismatch in the training branch")
            return self.fc(x.view(x.size(0), -1))

    return Net()


def raising_factory(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    raise KeyError("no such block")


@pytest.mark.parametrize(
    ("sets", "sentence"),
    [
        (["model.name=public_models:MiniGPT"], "fails on two training examples of shape (1, 12)"),
        (["loss=test_public_models:per_example_loss"], "must return a scalar tensor"),
        (["model.name=test_public_models:broken_in_training"],
         "fails in one training step of a 2-member population on 2 training examples: "
         "RuntimeError: shape mismatch in the training branch"),
        (["model.name=test_public_models:raising_factory"],
         "failed to build: KeyError: 'no such block'"),
    ],
)  # fmt: skip
def test_models_that_fail_are_one_sentence_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sets: list[str], sentence: str
) -> None:
    raw = frozen_raw()
    raw["model"] = {"name": "mlp", "width": 8}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    args = ["run", str(cfg), "--out", str(tmp_path / "o")]
    for s in sets:
        key, value = s.split("=", 1)
        if key == "loss":
            args += ["--set", f"recipe.loss={value}"]
        else:
            args += ["--set", s]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert sentence in err and len(err.rstrip(".").split(". ")) <= 3
    assert not (tmp_path / "o").exists()


def fails_late(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> torch.Tensor:
    if step >= 40:
        raise FloatingPointError(f"the loss blew up at step {step}")
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def test_debug_shows_where_a_worker_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from butterfly.sweep import SweepFailed

    raw = frozen_raw()
    raw["recipe"]["loss"] = "test_public_models:fails_late"
    raw["runtime"]["workers"] = 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(SweepFailed):
        main(["run", str(cfg), "--out", str(tmp_path / "b"), "--debug"])
    err = capsys.readouterr().err
    # the worker's own traceback: the file and line of the user's loss, and its message
    assert "butterfly: failed in seed 0" in err and "in fails_late" in err
    # (measured as the loss of the end of training: the first trajectory point calls it at T)
    assert "FloatingPointError: the loss blew up at step 60" in err


class ViewNet(nn.Module):
    """A CIFAR-repository habit: ``out.view(out.size(0), -1)`` before the classifier; and a
    GroupNorm with 2 groups (statistics per group of channels)."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(groups, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.gn(self.conv1(x)))
        out = torch.relu(self.conv2(out))
        out = out.view(out.size(0), -1)
        return self.fc(out)


def test_a_spec_is_derived_through_view_of_size_and_grouped_norms() -> None:
    from butterfly.align import derive_spec, spec_error

    x = torch.randn(4, 3, 4, 4)
    one = ViewNet(groups=1)
    spec = derive_spec(one)
    # conv1's channels (through a GroupNorm of one group) are permutable; conv2's are flattened
    # with positions into the classifier, so they stay fixed
    assert list(spec.perm_to_axes.values()) == [(("conv1.weight", 0), ("conv1.bias", 0),
                                                ("gn.weight", 0), ("gn.bias", 0),
                                                ("conv2.weight", 1))]  # fmt: skip
    assert spec_error(one, spec, x) < 1e-5
    # two groups of 4: groups move as blocks and channels within a group, never between
    two = ViewNet(groups=2)
    spec = derive_spec(two)
    assert list(spec.perm_to_axes.values()) == [(("conv1.weight", 0), ("conv1.bias", 0),
                                                ("gn.weight", 0), ("gn.bias", 0),
                                                ("conv2.weight", 1))]  # fmt: skip
    assert spec.heads == {"P_0": ("G0", 4)}
    assert spec_error(two, spec, x) < 1e-5
    from butterfly.align import (
        activation_matching,
        apply_permutation,
        random_perms,
        weight_matching,
    )

    theta = {k: v.detach() for k, v in two.named_parameters()}
    perms = random_perms(spec, theta, 0.0, torch.Generator().manual_seed(0))
    assert set((perms["P_0"].view(2, 4) // 4)[:, 0].tolist()) == {0, 1}  # groups swapped whole
    moved = apply_permutation(spec, perms, theta)
    for found in (weight_matching(spec, theta, moved).perms,
                  activation_matching(two, spec, theta, moved, torch.randn(64, 3, 4, 4))):  # fmt: skip
        back = apply_permutation(spec, found, moved)
        assert all(torch.equal(back[k], theta[k]) for k in theta)
    # a channel moved to the other group would change the statistics: the check sees it
    wrong = type(spec)(spec.perm_to_axes)  # the same axes without the group structure
    assert spec_error(two, wrong, x) > 1e-2


# ---- BatchNorm with running statistics -------------------------------------------------------


def image_tensors(n: int = 320, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Four classes of 3 x 8 x 8 images (a class mean plus noise), 256 train / 64 test."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    x = means[y] + 2.0 * torch.randn(n, 3, 8, 8, generator=g)
    return x[:256], y[:256], x[256:], y[256:]


def resnet18(seed: int) -> nn.Module:
    from public_models import ResNet18

    torch.manual_seed(seed)
    return ResNet18(num_classes=4, width=4)


def test_a_published_resnet18_with_batchnorm_runs_unmodified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = {
        "name": "resnet18-bn", "seeds": [0],
        "data": {"name": "test_public_models:image_tensors"},
        "model": {"name": "public_models:ResNet18", "kwargs": {"num_classes": 4, "width": 4}},
        "recipe": {"steps": 12, "batch_size": 32, "lr": 0.05},
        "perturb": {"times": [0.0, 0.5], "sigmas": [1e-2, 1e-1], "kinds": ["gaussian"]},
        "eval": {**SMALL_EVAL, "weight_matching": True, "running_stats_examples": 64},
        "runtime": {"workers": 1},
    }  # fmt: skip
    cfg = tmp_path / "resnet18.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    # 1 stem + 2 per block x 8 blocks + 3 shortcuts
    assert ("running statistics in 20 layers (BatchNorm2d): per member in training, "
            "re-estimated for every network measured on 64 training inputs") in out  # fmt: skip
    df = results(tmp_path / "o")
    ctrl = df[df.member == "control"]
    assert len(ctrl) == 2 and (ctrl.l2 == 0.0).all() and (ctrl.barrier_train_loss == 0.0).all()
    assert (ctrl.barrier_test_error == 0.0).all()
    child = df[df.kind == "gaussian"]
    assert (child.l2 > 0).all() and child.barrier_train_loss.notna().all()
    # the butterfly effect: the same perturbation does more at t = 0 than at T/2
    by_t = child.groupby(["sigma", "t"])[["l2", "barrier_train_loss"]].mean()
    assert (by_t.xs(0, level="t").l2 > by_t.xs(6, level="t").l2).all()
    assert by_t.loc[(0.1, 0), "barrier_train_loss"] > by_t.loc[(0.1, 6), "barrier_train_loss"]
    # weight matching through BatchNorm, residual additions and view(size(0), -1)
    assert child.fixed_point_fraction_wm.notna().all() and child.l2_wm.notna().all()
    # the same from Python, with the published class itself
    from public_models import ResNet18

    py = butterfly.Experiment(ResNet18, model_kwargs=raw["model"]["kwargs"], data=image_tensors(),
                              config={k: v for k, v in raw.items() if k not in ("data", "model")})  # fmt: skip
    got = py.run(out=tmp_path / "python", quiet=True, report=False).results
    cols = ["t", "member", "l2", "barrier_train_loss", "barrier_test_error"]
    a = got.sort_values(["t", "member"]).reset_index(drop=True)[cols]
    assert a.equals(df[cols].reset_index(drop=True))

    # the parent's checkpoint at t = 6 holds its running statistics after 6 training steps
    params, state, _ = load_checkpoint(tmp_path / "o/parents/seed0/step0000006.safetensors")
    running = state["running"]
    assert len(running) == 60 and "layer1.0.bn1.running_mean" not in params
    assert int(running["bn1.num_batches_tracked"]) == 6
    assert float(running["layer4.1.bn2.running_var"].sub(1).abs().max()) > 1e-3
    # each member's own statistics at T: the control's are the original's, bit for bit; a
    # perturbed child's have moved away from them
    members = tmp_path / "o/checkpoints/seed0/t0000006"
    own = {m: load_checkpoint(members / f"{m}.safetensors")[1]["running"]
           for m in ("original", "control", "gaussian-s0.01-f1-d0")}  # fmt: skip
    assert int(own["original"]["bn1.num_batches_tracked"]) == 12
    for k, v in own["original"].items():
        assert torch.equal(v, own["control"][k])
    assert not torch.equal(own["original"]["layer4.1.bn2.running_mean"],
                           own["gaussian-s0.01-f1-d0"]["layer4.1.bn2.running_mean"])  # fmt: skip


class ConvBN(nn.Module):
    """A conv, BatchNorm, ReLU, pool, linear classifier (with the BatchNorm1d of a head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)
        self.bn_head = nn.BatchNorm1d(5, momentum=0.3)
        self.out = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))
        h = F.adaptive_avg_pool2d(h, 1).view(x.size(0), -1)
        return self.out(F.relu(self.bn_head(self.fc(h))))


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_each_member_keeps_the_running_statistics_torch_train_mode_gives_it(mode: str) -> None:
    from butterfly.data import BatchStream, Dataset
    from butterfly.train import PopulationTrainer
    from butterfly.train.population import RUNNING

    torch.manual_seed(0)
    model = ConvBN().eval()
    before = {k: v.clone() for k, v in model.named_buffers()}
    x, y, xt, yt = image_tensors()
    data = Dataset("images", x, y, xt, yt, 4)
    cfg = build_config({"recipe": {"steps": 4, "batch_size": 16, "lr": 0.1, "momentum": 0.0,
                                    "warmup": 0.0, "schedule": "constant"}})  # fmt: skip
    trainer = PopulationTrainer(model, data, BatchStream(len(y), 16, 0), cfg.recipe, mode)
    theta = {k: v.detach().clone() for k, v in trainable(model).items()}
    other = {k: v + 0.05 * torch.randn_like(v) for k, v in theta.items()}
    pop = Population.from_members(["a", "b"], [theta, other],
                                  [trainer.update.init_state(p) for p in (theta, other)], 0)
    trainer.train(pop, 4)
    for i, start in enumerate((theta, other)):
        # the reference: the module itself in train mode, plain SGD, the same batches
        ref = ConvBN()
        ref.load_state_dict({**start, **before}, strict=True)
        ref.train()
        opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        for step in range(4):
            xb, yb = trainer.batch(step)
            opt.zero_grad()
            F.cross_entropy(ref(xb), yb).backward()
            opt.step()
        for name, buf in ref.named_buffers():
            got = pop.state[RUNNING][name][i]
            assert got.dtype == buf.dtype and torch.allclose(got, buf, rtol=1e-5, atol=1e-6), name
        for name, p in ref.named_parameters():
            assert torch.allclose(pop.params[name][i], p, rtol=1e-4, atol=1e-6), name
    # the module's own buffers are never written
    assert all(torch.equal(v, before[k]) for k, v in model.named_buffers())


def test_measured_statistics_are_re_estimated_as_torch_would_or_interpolated() -> None:
    from butterfly.data import Dataset
    from butterfly.experiment.comparer import Comparer
    from butterfly.metrics.running import WithRunning

    torch.manual_seed(1)
    model = ConvBN().eval()
    x, y, xt, yt = image_tensors()
    data = Dataset("images", x, y, xt, yt, 4)
    cfg = build_config({"eval": {"running_stats_examples": 100, "batch_size": 64}}).eval
    cmp = Comparer(model, data, cfg)
    theta = {k: v.detach().clone() for k, v in trainable(model).items()}
    full = cmp.full(theta)
    ref = ConvBN()
    ref.load_state_dict({**theta, **dict(model.named_buffers())})
    for m in ref.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    ref.train()
    with torch.no_grad():
        ref(x[:64])
        ref(x[64:100])  # the chunks of eval.batch_size, averaged
    for name, buf in ref.named_buffers():
        assert torch.allclose(full[name], buf, rtol=1e-5, atol=1e-6), name
    assert int(full["bn.num_batches_tracked"]) == 2
    # interpolated: the endpoints' own statistics, mixed like the weights
    own_a = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v
             for k, v in full.items() if k not in theta}  # fmt: skip
    own_b = {k: v * 3 if v.is_floating_point() else v for k, v in own_a.items()}
    inter = Comparer(model, data, cfg.model_copy(update={"running_stats": "interpolate"}))
    a, b = WithRunning(theta, own_a), WithRunning(theta, own_b)
    assert torch.equal(inter.full(a)["bn.running_var"], own_a["bn.running_var"])
    mid = {k: v for k, v in theta.items()}
    stats = own_a | {k: own_a[k] + 0.5 * (own_b[k] - own_a[k]) for k in own_a
                     if own_a[k].is_floating_point()}  # fmt: skip
    want = F.cross_entropy(torch.func.functional_call(model, {**mid, **stats}, (x,)), y)
    path = inter._path(a, b, x, y)
    assert path[len(path) // 2].loss == pytest.approx(float(want), rel=1e-5)
    # identical weights and statistics: every point of the path is the endpoint, exactly
    assert inter.barriers(a, a, inter.endpoint(a), inter.endpoint(a))["barrier_train_loss"] == 0.0


def test_the_python_barrier_re_estimates_batchnorm_statistics() -> None:
    from butterfly.metrics import barrier

    torch.manual_seed(2)
    a, b = ConvBN(), ConvBN()
    x, y, _, _ = image_tensors()
    assert barrier(a, a, (x, y)) == 0.0
    got = barrier(a, b, (x, y), alphas=3)
    # the reference: the midpoint's statistics re-estimated by torch itself
    mid = ConvBN()
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    with torch.no_grad():
        for n, p in mid.named_parameters():
            p.copy_(pa[n] + 0.5 * (pb[n] - pa[n]))
    losses = []
    for net in (a, mid, b):
        net = net.train()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        with torch.no_grad():
            net(x)
            losses.append(float(F.cross_entropy(net.eval()(x), y)))
    want = max(0.0, losses[1] - 0.5 * (losses[0] + losses[2]))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6) and got > 0


def test_members_with_batchnorm_stay_bit_identical_whatever_the_population_size() -> None:
    from butterfly.data import BatchStream, Dataset
    from butterfly.train import PopulationTrainer
    from butterfly.train.population import RUNNING

    x, y, xt, yt = image_tensors()
    data = Dataset("images", x, y, xt, yt, 4)
    cfg = build_config({"recipe": {"steps": 2, "batch_size": 32, "lr": 0.1}})
    torch.manual_seed(0)
    model = ConvBN().eval()
    trainer = PopulationTrainer(model, data, BatchStream(len(y), 32, 0), cfg.recipe)
    theta = {k: v.detach().clone() for k, v in trainable(model).items()}
    for size in range(2, 7):
        # BatchNorm1d under vmap gave members that differ by their place (sizes 2-10 measured):
        # auto trains such a model member by member
        assert trainer.mode_for(size) == "loop"
        pop = Population.from_members(["m"] * size, [theta] * size,
                                      [trainer.update.init_state(theta)] * size, 0)  # fmt: skip
        trainer.train(pop, 2)
        for tensors in (pop.params, pop.state[RUNNING]):
            assert all(torch.equal(v[0], v[i]) for v in tensors.values() for i in range(size))


def test_alignment_never_moves_a_frozen_parameter() -> None:
    from butterfly.align import apply_permutation, random_perms, weight_matching
    from butterfly.data import Dataset
    from butterfly.experiment.comparer import Comparer
    from public_models import FrozenWhiteningNet

    x, y, xt, yt = image_tensors()
    x, xt = x[:, :1, :4, :4].contiguous(), xt[:, :1, :4, :4].contiguous()  # 16 inputs
    torch.manual_seed(0)
    model = FrozenWhiteningNet((1, 4, 4), 4, width=8, data=(x, y)).eval()
    cmp = Comparer(model, Dataset("img", x, y, xt, yt, 4), build_config({}).eval)
    names = {n for axes in cmp.spec.perm_to_axes.values() for n, _ in axes}
    # the whitening filters' output units feed fc: that space would move a frozen tensor
    assert "whiten.weight" not in names and "fc.weight" in names and cmp.aligns
    theta = {k: v.detach() for k, v in trainable(model).items()}
    other = {k: v + 0.1 * torch.randn_like(v) for k, v in theta.items()}
    assert set(weight_matching(cmp.spec, theta, other).perms) == set(cmp.spec.perm_to_axes)
    perms = random_perms(cmp.spec, theta, 0.0, torch.Generator().manual_seed(0))
    moved = apply_permutation(cmp.spec, perms, theta)
    out = torch.func.functional_call(model, theta, (x,))
    assert torch.allclose(torch.func.functional_call(model, moved, (x,)), out, atol=1e-5)


# ---- alignment through attention -------------------------------------------------------------


class TorchAttentionNet(nn.Module):
    """A pre-norm block with torch's ``nn.MultiheadAttention`` (the norm called once per
    argument, as code often does), an MLP, and mean pooling over positions."""

    def __init__(self, d: int = 16, heads: int = 4, classes: int = 4):
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attn(self.ln(h), self.ln(h), self.ln(h), need_weights=False)
        h = h + a
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h.mean(1))


def tokens(n: int = 4, length: int = 12, vocab: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    return torch.stack([ids, torch.ones_like(ids)], 1)


def transformer_cases() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    from butterfly.config import ModelConfig
    from public_models import MiniGPT, TinyBert

    torch.manual_seed(0)
    vit = build_model(ModelConfig(name="vit", width=12, depth=2, heads=2, patch=4), (3, 8, 8), 10, 0)
    gpt = build_model(ModelConfig(name="gpt", width=16, depth=2, heads=4), (2, 12), 20, 0)
    text = tokens(4, 12, 20)
    text[:, 1] = text[:, 1] * (torch.arange(12) >= 6)  # token types: two segments
    text[:, 0, -2:] = 0  # padding, masked out
    return {
        "minigpt": (MiniGPT((2, 12), 20, n_embd=16, n_layer=2, n_head=2), tokens()),
        "torch-mha": (TorchAttentionNet(), torch.randn(4, 5, 6)),
        "vit": (vit, torch.randn(4, 3, 8, 8)),
        "gpt": (gpt, tokens()),
        "bert-style": (TinyBert((2, 12), 3, vocab=20), text),
    }


@pytest.mark.parametrize("name", ["minigpt", "torch-mha", "vit", "gpt", "bert-style"])
def test_weight_matching_through_attention_recovers_a_permuted_copy(name: str) -> None:
    from butterfly.align import (
        apply_permutation,
        derive_spec,
        random_perms,
        spec_error,
        weight_matching,
    )

    model, x = transformer_cases()[name]
    model = model.double().eval()
    x = x.double() if x.is_floating_point() else x
    spec = derive_spec(model, x[:2])
    groups = {p: {a[0] for a in axes} for p, axes in spec.perm_to_axes.items()}
    # the residual stream (its embeddings, norm gains, every projection into and out of it),
    # each block's MLP units, and each attention layer's heads: as blocks, and the units
    # within a head (queries with keys, values with the output projection's inputs)
    want = {"minigpt": (2, 8, {"transformer.wte.weight", "transformer.wpe.weight",
                               "transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.weight",
                               "transformer.h.1.attn.c_proj.bias", "transformer.ln_f.bias"}),
            "torch-mha": (1, 4, {"embed.weight", "ln.weight", "attn.in_proj_weight",
                                 "attn.out_proj.bias", "fc2.weight", "head.weight"}),
            "vit": (2, 6, {"cls_token", "pos_embed", "embed.weight"}),
            "gpt": (2, 4, {"tokens.weight", "positions.weight", "out.weight"}),
            "bert-style": (2, 4, {"word.weight", "position.weight", "token_type.weight",
                                  "layers.1.output_norm.bias", "pooler.weight"})}[name]  # fmt: skip
    layers, d = want[0], want[1]
    assert len(spec.perm_to_axes) == 1 + 3 * layers + (name == "bert-style")  # + the pooler
    assert any(want[2] <= g for g in groups.values()), groups
    assert spec.heads == {f"H{i}_{p}": (f"H{i}", d) for i in range(layers) for p in ("qk", "vo")}
    if name == "torch-mha":
        assert spec.perm_to_axes["H0_vo"] == (("attn.in_proj_weight", 0, 32), ("attn.in_proj_bias", 0, 32),
                                              ("attn.out_proj.weight", 1, 0))  # fmt: skip
    if name == "minigpt":  # the packed projection's parts, the merged heads into c_proj
        assert spec.perm_to_axes["H1_vo"] == (("transformer.h.1.attn.c_attn.weight", 0, 32),
                                              ("transformer.h.1.attn.c_attn.bias", 0, 32),
                                              ("transformer.h.1.attn.c_proj.weight", 1, 0))  # fmt: skip
    assert spec_error(model, spec, x) < 1e-12
    theta = {k: v.detach() for k, v in trainable(model).items()}
    perms = random_perms(spec, theta, 0.0, torch.Generator().manual_seed(1))
    assert all(bool((v != torch.arange(len(v))).all()) for v in perms.values())  # none in place
    moved = apply_permutation(spec, perms, theta)
    assert not all(torch.equal(moved[k], theta[k]) for k in theta)
    found = weight_matching(spec, theta, moved).perms
    back = apply_permutation(spec, found, moved)
    assert all(torch.equal(back[k], theta[k]) for k in theta)


def test_half_precision_weights_get_one_sentence_that_says_what_to_do(tmp_path: Path) -> None:
    x, y, xt, yt = image_tensors()
    exp = butterfly.Experiment(model=lambda seed: ConvBN().half(), data=(x, y, xt, yt),
                               name="half", seeds=[0], recipe={"steps": 2})  # fmt: skip
    with pytest.raises(ConfigError, match=r"has float16 parameters.*call \.float\(\).*recipe\.precision: bf16 or fp16"):
        exp.run(out=tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()


def hf_cases(folder: Path) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """A BERT, a GPT-2 and a ViT built from configs (random weights, saved locally) and
    loaded the way ``model.name: hf`` loads them."""
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTForImageClassification

    from butterfly.models.hf import HFCausalLM, HFClassifier

    torch.manual_seed(0)
    tiny_bert(folder / "bert")
    GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=4, n_positions=16,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(folder / "gpt2")  # fmt: skip
    ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=24, image_size=8, patch_size=4,
                                        num_labels=3)).save_pretrained(folder / "vit")  # fmt: skip
    ids = tokens(4, 12, 40)
    ids[:, 1] = 1
    return {
        "bert": (HFClassifier(str(folder / "bert"), (2, 12), 3), tokens(4, 12, 30)),
        "gpt2": (HFCausalLM(str(folder / "gpt2"), (2, 12)), ids),
        "vit": (HFClassifier(str(folder / "vit"), (3, 8, 8), 3), torch.randn(4, 3, 8, 8)),
    }


def test_hugging_face_bert_gpt2_and_vit_are_aligned_heads_included(tmp_path: Path) -> None:
    """Their specs (written from the architecture: fx cannot trace them) keep the function
    under a random permutation of every space, heads moved as blocks; weight matching
    recovers a randomly permuted copy exactly."""
    pytest.importorskip("transformers")
    from butterfly.align import apply_permutation, random_perms, spec_error, weight_matching
    from butterfly.align.spec import spec_for

    for name, (model, x) in hf_cases(tmp_path).items():
        model = model.double().eval()
        x = x.double() if x.is_floating_point() else x
        spec = spec_for(model, x[:2])
        theta = {k: v.detach() for k, v in trainable(model).items()}
        covered = {a[0] for axes in spec.perm_to_axes.values() for a in axes}
        # every tensor is permuted somewhere, except the classifier's biases (class order)
        assert set(theta) - covered <= {"net.classifier.bias"}, (name, set(theta) - covered)
        layers = 1 if name == "bert" else 2
        assert len(spec.head_groups()) == layers and len(spec.perm_to_axes) == 1 + 3 * layers + (name == "bert")
        assert spec_error(model, spec, x) < 1e-12, name
        perms = random_perms(spec, theta, 0.0, torch.Generator().manual_seed(1))
        assert all(bool((v != torch.arange(len(v))).all()) for v in perms.values())
        moved = apply_permutation(spec, perms, theta)
        found = weight_matching(spec, theta, moved).perms
        back = apply_permutation(spec, found, moved)
        assert all(torch.equal(back[k], theta[k]) for k in theta), name


class OddAttention(nn.Module):
    """Forms attention code also takes: keyword dims, a per-head (ALiBi-style) bias, one
    nn.MultiheadAttention called twice, per-head attention weights used downstream."""

    def __init__(self, form: str, E: int = 8, H: int = 2):
        super().__init__()
        self.form, self.E, self.H = form, E, H
        self.inp, self.qkv = nn.Linear(4, E), nn.Linear(E, 3 * E)
        self.o, self.out = nn.Linear(E, E), nn.Linear(E, 3)
        self.mha = nn.MultiheadAttention(E, H, batch_first=True)
        self.register_buffer("bias", torch.randn(1, H, 5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        N, T, E = h.shape
        if self.form in ("keywords", "alibi"):
            q, k, v = self.qkv(h).view(N, T, 3, self.H, E // self.H).permute(dims=(2, 0, 3, 1, 4)).unbind(0)
            scores = torch.matmul(q, other=k.transpose(dim0=-2, dim1=-1))
            if self.form == "alibi":
                scores = scores + self.bias  # a bias per head: heads may not move
            a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(N, T, E)
            return self.out(h + self.o(a))
        if self.form == "mha-twice":
            h = h + self.mha(h, h, h, need_weights=False)[0]
            return self.out(h + self.mha(h, h, h, need_weights=False)[0])
        a, w = self.mha(h, h, h, average_attn_weights=False)  # (N, H, T, T), per head
        return self.out(h + a).mean(1) + w[:, 0].amax((-1, -2))[:, None]


@pytest.mark.parametrize("form,heads", [("keywords", 1), ("alibi", 0), ("mha-twice", 1),
                                        ("per-head-weights", 0)])  # fmt: skip
def test_attention_forms_get_heads_only_where_heads_may_move(form: str, heads: int) -> None:
    from butterfly.align import derive_spec, spec_error

    torch.manual_seed(0)
    model, x = OddAttention(form).double().eval(), torch.randn(8, 5, 4).double()
    spec = derive_spec(model, x[:2])
    assert len(spec.head_groups()) == heads, spec.heads
    assert spec_error(model, spec, x) < 1e-12  # the residual stream is aligned in every form
    assert len(spec.perm_to_axes) >= 1 + 2 * heads


def test_a_single_gradient_equals_torch_func_bit_for_bit_without_importing_dynamo() -> None:
    """A perturbation's direction and a member trained alone use plain autograd; on models as
    researchers write them its gradients and losses equal ``torch.func.grad_and_value``'s bit
    for bit (BatchNorm's running statistics, tied weights, dropout, frozen layers)."""
    import subprocess
    import sys

    from torch.func import grad_and_value

    from butterfly.data import BatchStream, Dataset
    from butterfly.train import PopulationTrainer
    from public_models import FrozenWhiteningNet, MiniGPT

    x, y, xt, yt = image_tensors()
    ids = torch.randint(0, 50, (64, 1, 12), generator=torch.Generator().manual_seed(1))
    tokens = torch.cat([ids, torch.ones_like(ids)], 1)
    cases = [
        (ConvBN(), (x, y, xt, yt, 4)),
        (resnet18(0), (x, y, xt, yt, 4)),
        (FrozenWhiteningNet((3, 8, 8), 4, p=0.3), (x, y, xt, yt, 4)),
        (MiniGPT((2, 12), 50, dropout=0.1), (tokens, ids[:, 0], tokens[:8], ids[:8, 0], 50)),
    ]
    cfg = build_config({"recipe": {"steps": 4, "batch_size": 16}})
    for model, (xs, ys, xts, yts, k) in cases:
        model.eval()  # key None: as the model is (measuring); a key: training mode, seeded
        data = Dataset("own", xs, ys, xts, yts, k)
        trainer = PopulationTrainer(model, data, BatchStream(len(ys), 16, 0), cfg.recipe)
        reference = grad_and_value(trainer._loss_running, has_aux=True)
        params = {n: v.detach().clone() for n, v in trainable(model).items()}
        xb, yb = trainer.batch(0)
        for key in (None, ("perturb", 0, 3)):
            with trainer._noise(key):
                got, (loss, after) = trainer._single(params, trainer.running0, xb, yb)
            with trainer._noise(key):
                want, (loss_w, after_w) = reference(params, trainer.running0, xb, yb)
            name = type(model).__name__
            assert got.keys() == want.keys(), name
            assert all(torch.equal(got[n], want[n]) for n in want), name
            assert torch.equal(loss, loss_w) and not loss.requires_grad, name
            assert all(torch.equal(after[n], after_w[n]) for n in after_w), name
    # a sweep's worker never pays for torch.func's first call (it imports torch._dynamo)
    code = ("import sys, torch; from butterfly.train import PopulationTrainer\n"
            "from butterfly.data import BatchStream, Dataset\nfrom butterfly.config import "
            "build_config\nfrom butterfly.models import MLP\nm = MLP((8,), 3, 16, 1)\n"
            "x = torch.randn(32, 8); y = torch.randint(0, 3, (32,))\n"
            "t = PopulationTrainer(m, Dataset('d', x, y, x, y, 3), BatchStream(32, 8, 0), "
            "build_config({}).recipe)\np = {k: v.detach() for k, v in m.named_parameters()}\n"
            "t.single_gradient(p, x, y, ('perturb', 0))\nprint('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr
