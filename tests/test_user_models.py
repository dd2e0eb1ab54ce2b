"""Your own model, data and loss: butterfly as a library (Python API and YAML import paths)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

import butterfly
from butterfly.align import derive_spec, spec_error
from butterfly.cli import main
from butterfly.config import ConfigError
from butterfly.experiment.rows import names

TESTS = Path(__file__).parent
COMPARED = [c for c in names("results") if c != "unit_wall_s"]


# ---- the user's code: a model class, a residual network, a loader, a loss -------------------


class TinyNet(nn.Module):
    """A user's MLP written from scratch (its own init: torch's default)."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, width: int = 24):
        super().__init__()
        self.fc1 = nn.Linear(input_shape[0], width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm1 = nn.GroupNorm(1, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.norm1(self.conv1(x)))))


class UserResNet(nn.Module):
    """A user's residual network: a stem, two residual blocks, pooling, a head."""

    def __init__(self, n_classes: int = 5, c: int = 6):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(ResBlock(c), ResBlock(c))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.relu(self.stem(x)))
        return self.head(torch.flatten(self.pool(h), 1))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so no spec can be derived."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.fc = nn.Linear(input_shape[0], 16)
        self.head = nn.Linear(16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        if h.sum() > 0:
            h = h * 1.0
        return self.head(h)


def load_tensors(n: int = 480, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A user's loader: 4 Gaussian classes in 10 dimensions, 400 train / 80 test."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(4, 10, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    x = means[y] + torch.randn(n, 10, generator=g)
    return x[:400], y[:400], x[400:], y[400:]


def mse_loss(model: object, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x).squeeze(-1) - y) ** 2).mean()  # type: ignore[operator]


def not_a_module(**kwargs: object) -> str:
    return "a string"


SWEEP = {
    "recipe": {"steps": 80, "batch_size": 40, "lr": 0.05},
    "perturb": {"times": [0.0, 0.25, 0.5, 0.75], "sigmas": [1e-2, 1e-1]},
    "eval": {"cka_examples": 64, "align_examples": 64, "trajectory_points": 4},
    "seeds": [0],
}


def experiment(**over: object) -> butterfly.Experiment:
    kw: dict = {"model": TinyNet, "data": load_tensors(), **SWEEP, "name": "tiny-user"}
    kw.update(over)
    return butterfly.Experiment(**kw)


def _frame(run: Path) -> pd.DataFrame:
    with butterfly.sweep.Store(run / "results.db") as s:
        return s.results()[COMPARED].reset_index(drop=True)


# ---- the bar: a model class from this module, 2 workers, tensors, killed and resumed --------

RUNNER = """
import sys
from test_user_models import SWEEP, TinyNet, load_tensors
import butterfly
if __name__ == "__main__":
    # three seeds on two workers: a seed's units are committed together when it ends
    sweep = {**SWEEP, "recipe": {**SWEEP["recipe"], "steps": 600}, "seeds": [0, 1, 2]}
    butterfly.Experiment(model=TinyNet, data=load_tensors(), name="tiny-user", **sweep).run(
        out=sys.argv[1], workers=2, quiet=True)
"""


def test_a_user_model_on_tensors_killed_and_resumed_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env,
                            start_new_session=True, stderr=subprocess.PIPE)  # fmt: skip
    db = killed / "results.db"
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.is_file():
            try:
                with sqlite3.connect(db, timeout=1) as c:
                    done = c.execute("SELECT COUNT(*) FROM units").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= 1:
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as c:
        before = c.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    assert 1 <= before < 12
    assert (killed / "data.safetensors").is_file()  # the tensors were written into the folder
    resumed = subprocess.run([sys.executable, str(script), str(killed)], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    clean = tmp_path / "clean"
    sweep = {**SWEEP, "recipe": {**SWEEP["recipe"], "steps": 600}, "seeds": [0, 1, 2]}
    run = butterfly.Experiment(model=TinyNet, data=load_tensors(), name="tiny-user", **sweep).run(
        out=clean, workers=2, quiet=True, report=False
    )
    assert run.control_ok
    a, b = _frame(killed), _frame(clean)
    assert len(a) == 3 * 4 * 5 and a.equals(b)
    ctrl = a[a.control == 1]
    assert (ctrl.l2 == 0.0).all() and (ctrl.barrier_train_loss == 0.0).all()
    assert (a[a.control == 0].l2 > 0).all()


def test_the_same_user_model_through_python_and_through_yaml(tmp_path: Path) -> None:
    run = experiment().run(out=tmp_path / "py", workers=1, quiet=True, report=False)
    cfg = {
        "name": "tiny-user",
        "model": {"name": "test_user_models:TinyNet"},
        "data": {"name": "test_user_models:load_tensors"},
        **SWEEP,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.run(
        [sys.executable, "-m", "butterfly.cli", "run", str(path), "--out", str(tmp_path / "yaml"),
         "--quiet", "--workers", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = run.results.sort_values(["seed", "t", "member"]).reset_index(drop=True)
    b = _frame(tmp_path / "yaml").sort_values(["seed", "t", "member"]).reset_index(drop=True)
    for col in ("l2", "barrier_train_loss", "barrier_test_error", "barrier_train_loss_wm", "cka"):
        assert a[col].tolist() == b[col].tolist(), col
    assert (a[a.control == 0].barrier_train_loss.notna()).all()
    saved = yaml.safe_load((tmp_path / "py" / "config.yaml").read_text())
    assert saved["model"]["name"] == "test_user_models:TinyNet"
    assert saved["data"]["name"] == "stored" and saved["data"]["fingerprint"].startswith("blake2b:")


def test_a_changed_data_set_on_an_existing_folder_is_refused(tmp_path: Path) -> None:
    experiment(seeds=[0], perturb={"times": [0.5], "sigmas": [1e-2]}).run(
        out=tmp_path / "run", workers=1, quiet=True, report=False
    )
    x, y, xt, yt = load_tensors()
    other = experiment(data=(x + 1e-3, y, xt, yt), seeds=[0],
                       perturb={"times": [0.5], "sigmas": [1e-2]})  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.fingerprint"):
        other.run(out=tmp_path / "run", workers=1, quiet=True, report=False)


def test_a_user_loss_trains_a_regression_with_an_exact_control(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 5, generator=g)
    y = x @ torch.randn(5, generator=g) + 0.1 * torch.randn(300, generator=g)
    exp = butterfly.Experiment(
        model=lambda seed: nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)),
        data=butterfly.data.from_tensors(x[:250], y[:250], x[250:], y[250:]),
        loss_fn=mse_loss, recipe={"steps": 60, "batch_size": 25, "lr": 0.05},
        perturb={"times": [0.0, 0.5], "sigmas": [1e-2]}, seeds=[0], name="regression",
        eval={"cka_examples": 40, "align_examples": 40},
    )  # fmt: skip
    run = exp.run(out=tmp_path / "reg", workers=2, quiet=True, report=False)
    df = run.results
    assert run.control_ok and exp.config.recipe.loss == "test_user_models:mse_loss"
    kids = df[df.control == 0]
    assert (kids.barrier_train_loss.notna()).all() and (kids.l2 > 0).all()
    # no class scores: error barriers, accuracy and the ensemble are left empty, not invented
    assert df.barrier_test_error.isna().all() and df.ensemble_test_acc.isna().all()
    assert df.test_acc_a.isna().all()


def test_a_model_that_cannot_be_traced_runs_without_alignment_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = experiment(model=Untraceable, perturb={"times": [0.0], "sigmas": [1e-2]}).run(
        out=tmp_path / "u", workers=1, quiet=False, report=False
    )
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note: weight matching")]
    assert len(notes) == 1 and "permutation_spec()" in notes[0]
    df = run.results
    assert run.control_ok and df.barrier_train_loss_wm.isna().all() and df.cka.notna().all()


# ---- inferred permutation specs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "x"),
    [
        (butterfly.models.build_model(butterfly.config.ModelConfig(width=16, depth=3), (12,), 5, 0),
         torch.randn(32, 12)),
        (butterfly.models.build_model(butterfly.config.ModelConfig(name="cnn", width=8), (1, 12),
                                      5, 0), torch.randn(32, 1, 12)),
        (butterfly.models.build_model(
            butterfly.config.ModelConfig(name="resnet", width=4, depth=20), (3, 8, 8), 5, 0),
         torch.randn(16, 3, 8, 8)),
        (UserResNet(), torch.randn(16, 3, 8, 8)),
        (TinyNet((10,), 4), torch.randn(32, 10)),
    ],
    ids=["mlp", "cnn", "resnet20", "user-resnet", "user-mlp"],
)  # fmt: skip
def test_an_inferred_spec_leaves_the_function_unchanged(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():  # non-trivial norm affine parameters, so they must be permuted too
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    spec = derive_spec(model)
    assert len(spec.perm_to_axes) >= 2
    params = {k: v.detach() for k, v in model.named_parameters()}
    perms = butterfly.align.random_perms(spec, params, 0.0, torch.Generator().manual_seed(1))
    assert all((p != torch.arange(len(p))).any() for p in perms.values())
    out = torch.func.functional_call(model, params, (x,))
    moved = torch.func.functional_call(
        model, butterfly.align.apply_permutation(spec, perms, params), (x,)
    )
    assert (out - moved).abs().max() <= 1e-5
    assert spec_error(model, spec, x) <= 1e-6


def test_a_wrong_spec_is_caught_by_its_error() -> None:
    m = TinyNet((10,), 4)
    spec = derive_spec(m)
    broken = butterfly.align.PermutationSpec(
        {p: axes[:-1] for p, axes in spec.perm_to_axes.items()}  # forget the next layer's axis
    )
    assert spec_error(m, broken, torch.randn(32, 10)) > 1e-2


def _train(seed: int, data: butterfly.data.Dataset, steps: int = 300) -> nn.Module:
    torch.manual_seed(seed)
    m = TinyNet((10,), 4, width=32)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(data.y_train), (40,), generator=g)
        loss = nn.functional.cross_entropy(m(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


def test_weight_matching_lowers_the_barrier_of_two_independently_trained_user_mlps() -> None:
    data = butterfly.data.from_tensors(*load_tensors(1200))
    a, b = _train(1, data), _train(2, data)
    out = butterfly.compare(a, b, data, eval_cfg={"activation_matching": False})
    assert out["barrier_train_loss"] > 0.02
    assert out["barrier_train_loss_wm"] < 0.5 * out["barrier_train_loss"]
    assert out["fixed_point_fraction_wm"] < 0.5 and out["l2_wm"] < out["l2"]


# ---- the public API -------------------------------------------------------------------------


def test_the_public_functions_work_on_modules_and_state_dicts() -> None:
    x, y, xt, yt = load_tensors()
    net = TinyNet((10,), 4)
    same = butterfly.perturb(net, 0.01, seed=0)
    again = butterfly.perturb(net, 0.01, seed=0)
    assert butterfly.metrics.l2(same, again) == 0.0 and butterfly.metrics.l2(net, same) > 0
    batch = butterfly.perturb(net, 0.01, "batch", data=(x, y))
    # Eq. 6: ||eps|| = sqrt(sum of the masked weights' init variances); sigma scales it
    info = butterfly.models.param_info(net, {k: v for k, v in net.named_parameters()})
    target = sum(i.init_var * p.numel() for (n, p), i in
                 zip(net.named_parameters(), info.values(), strict=True) if i.kind == "weight") ** 0.5  # fmt: skip
    assert butterfly.metrics.l2(net, batch) == pytest.approx(0.01 * target, rel=1e-5)
    assert butterfly.metrics.barrier(net, net, (x, y)) == 0.0
    assert butterfly.metrics.barrier(net.state_dict(), same.state_dict(), (x, y), model=net) >= 0
    out = butterfly.compare(net, same, (x, y, xt, yt))
    assert out["l2"] == pytest.approx(butterfly.metrics.l2(net, same))
    assert {"barrier_train_loss", "barrier_test_error", "cka", "ensemble_test_acc"} <= set(out)
    text = butterfly.__doc__ or ""
    for name in ("Experiment", "compare", "perturb", "metrics.barrier", "angular_cka"):
        assert name in text


# ---- bad inputs: one sentence, exit 2, nothing written ------------------------------------


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"model": {"name": "no_such_package.models:Net"}}, "cannot be imported"),
        ({"model": {"name": "test_user_models:NoSuchClass"}}, "has no attribute 'NoSuchClass'"),
        ({"model": {"name": "test_user_models:not_a_module"}}, "not a torch.nn.Module"),
        ({"model": {"name": "test_user_models:TinyNet", "kwargs": {"depth": 3}}}, "model.kwargs"),
        ({"data": {"name": "test_user_models:no_loader"}}, "has no attribute 'no_loader'"),
        ({"data": {"name": "test_user_models:load_tensors", "kwargs": {"n": -5}}}, "data"),
        ({"model": {"name": "test_user_models:UserResNet"}}, "fails on two training examples"),
        ({"recipe": {"loss": "test_user_models:nope"}}, "has no attribute 'nope'"),
    ],
)
def test_bad_user_inputs_exit_2_with_one_sentence(
    section: dict, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    cfg = {"name": "bad", "model": {"name": "test_user_models:TinyNet"},
           "data": {"name": "test_user_models:load_tensors"}, **SWEEP}  # fmt: skip
    for k, v in section.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ((torch.randn(10, 3), torch.zeros(9, dtype=torch.long), torch.randn(4, 3),
          torch.zeros(4, dtype=torch.long)), "x_train has 10 examples but y_train has 9"),
        ((torch.randn(10, 3), torch.tensor([0, 1, 2, 7, 0, 1, 2, 0, 1, 2]), torch.randn(4, 3),
          torch.zeros(4, dtype=torch.long)), None),
        ((torch.randn(10, 3), torch.zeros(10, dtype=torch.long), torch.randn(4, 5),
          torch.zeros(4, dtype=torch.long)), "every example must have the same shape"),
    ],
)  # fmt: skip
def test_bad_tensors_are_refused_before_anything_is_written(
    data: tuple, needle: str | None, tmp_path: Path
) -> None:
    if needle is None:  # labels out of range of the stated classes
        with pytest.raises(butterfly.data.DataError, match=r"labels must lie in 0\.\.3"):
            butterfly.data.from_tensors(*data, n_classes=4)
        return
    with pytest.raises(ConfigError, match=needle):
        butterfly.Experiment(model=TinyNet, data=data, name="bad").run(out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_model_whose_output_does_not_match_the_classes_is_refused(tmp_path: Path) -> None:
    x, y, xt, yt = load_tensors()
    exp = butterfly.Experiment(model=TinyNet, data=(x, y, xt, yt), name="mismatch",
                               model_kwargs={}, **SWEEP)  # fmt: skip
    exp_bad = butterfly.Experiment(
        model=lambda seed: nn.Linear(10, 7), data=(x, y, xt, yt), name="mismatch", **SWEEP
    )
    with pytest.raises(ConfigError, match=r"outputs \(2, 7\) for 2 examples.*needs \(2, 4\)"):
        exp_bad.run(out=tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="not a module instance"):
        butterfly.Experiment(model=TinyNet((10,), 4), data=(x, y, xt, yt))
    assert exp.config.model.name == "test_user_models:TinyNet"


def test_batchnorm_with_running_statistics_trains_with_the_control_exact(tmp_path: Path) -> None:
    x, y, xt, yt = load_tensors()
    exp = butterfly.Experiment(
        model=lambda seed: nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                         nn.Linear(8, 4)),
        data=(x, y, xt, yt), name="bn", **SWEEP,
    )  # fmt: skip
    df = exp.run(out=tmp_path / "o", quiet=True, report=False).results
    ctrl = df[df.member == "control"]
    assert len(ctrl) == 4 and (ctrl.l2 == 0.0).all() and (ctrl.barrier_train_loss == 0.0).all()
    assert (df[df.kind == "gaussian"].l2 > 0).all() and df.barrier_test_loss.notna().all()


def test_a_script_without_a_main_guard_runs_in_its_own_process(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\nimport butterfly\nfrom test_user_models import SWEEP, TinyNet, load_tensors\n"
        "run = butterfly.Experiment(model=TinyNet, data=load_tensors(), name='unguarded', **SWEEP)"
        ".run(out=sys.argv[1], workers=2, quiet=False, report=False)\nprint(run)\n"
    )
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "o")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(TESTS)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note: running in this process, not 2 workers: the script has no" in proc.stderr
    assert "all sigma = 0 controls exactly 0" in proc.stdout


def test_objects_of_this_process_cannot_go_to_ray(tmp_path: Path) -> None:
    exp = experiment(model=lambda seed: TinyNet((10,), 4))
    with pytest.raises(ConfigError, match="only in this Python process"):
        exp.run(out=tmp_path / "o", executor="ray")
    assert not (tmp_path / "o").exists()
