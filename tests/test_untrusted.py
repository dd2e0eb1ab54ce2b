"""Files from others: a received checkpoint, config or run folder never runs code it names,
never makes butterfly write or read outside the folder, and every bad case is one sentence.

Each hostile input names a command that would create a marker file; the tests check that the
marker never appears, that nothing outside the folder changed, and the exit code and sentence.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from butterfly.checkpoint import save_checkpoint
from butterfly.cli import main
from butterfly.models import build_model
from butterfly.sweep import Store, run_sweep
from conftest import tiny_config

SYNTH = {"name": "synthetic", "n_train": 64, "n_test": 32, "n_features": 12, "n_classes": 4}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small finished run folder (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("received") / "run"
    cfg = tiny_config(perturb={"times": [0.0], "sigmas": [1e-2], "kinds": ["gaussian"]},
                      recipe={"steps": 10}, eval={"weight_matching": False,
                                                   "activation_matching": False,
                                                   "proxy_fractions": []})  # fmt: skip
    run_sweep(cfg, out, quiet=True, workers=1)
    return out


def copy_of(folder: Path, where: Path) -> Path:
    import shutil

    dst = where / folder.name
    shutil.copytree(folder, dst, symlinks=True)
    return dst


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def err_of(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())


# ---- checkpoints are data ------------------------------------------------------------------


def checkpoint(path: Path, spec: dict, data: dict | None = None, **meta: object) -> Path:
    net = build_model(tiny_config().model, (1, 12), 4, 0)
    params = {k: v.detach() for k, v in net.named_parameters()}
    save_checkpoint(path, params, None, {"model_spec": spec, "data": data or SYNTH,
                                         "eval": {"weight_matching": False}, **meta})  # fmt: skip
    return path


MLP_SPEC = {"name": "mlp", "width": 16, "depth": 2, "input_shape": [1, 12], "n_classes": 4}


@pytest.mark.parametrize(
    ("spec", "data", "args", "sentence"),
    [
        ({**MLP_SPEC, "name": "os:system", "kwargs": {"command": "touch {marker}"}}, None, [],
         "names its model 'os:system', code that is not butterfly's; a checkpoint is data"),
        (MLP_SPEC, {"name": "os:system", "kwargs": {"command": "touch {marker}"}}, [],
         "names its data loader 'os:system', code that is not butterfly's"),
        (MLP_SPEC, {"name": "os:system", "kwargs": {"command": "touch {marker}"}},
         ["--data", "os:system"], "names Python's standard library ('os')"),
        ({**MLP_SPEC, "name": "posix:system", "kwargs": {"command": "touch {marker}"}}, None,
         ["--model", "posix:system"], "names Python's standard library ('posix')"),
        ("mlp", None, [], "model_spec is not a butterfly model description"),
        ({"name": "mlp", "n_classes": 4}, None, [], "input_shape as a list of positive whole"),
    ],
)  # fmt: skip
def test_compare_never_runs_code_a_checkpoint_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: object, data: dict | None,
    args: list[str], sentence: str,
) -> None:  # fmt: skip
    marker = tmp_path / "MARKER"
    fill = lambda d: yaml.safe_load(yaml.safe_dump(d).replace("{marker}", str(marker)))  # noqa: E731
    a = checkpoint(tmp_path / "a.safetensors", fill(spec), fill(data) if data else None)
    b = checkpoint(tmp_path / "b.safetensors", fill(spec), fill(data) if data else None)
    assert main(["compare", str(a), str(b), *args]) == 2
    assert sentence in err_of(capsys)
    assert not marker.exists()


def test_compare_takes_a_user_model_when_the_user_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {"name": "test_user_models:TinyNet", "kwargs": {}, "input_shape": [10], "n_classes": 4}
    from test_user_models import TinyNet

    net = TinyNet(input_shape=(10,), n_classes=4)
    loader = {"name": "test_user_models:load_tensors"}
    for name in ("a", "b"):
        params = {k: v.detach() + (0.01 if name == "b" else 0.0)
                  for k, v in net.named_parameters()}  # fmt: skip
        save_checkpoint(tmp_path / f"{name}.safetensors", params, None,
                        {"model_spec": spec, "data": loader,
                         "eval": {"weight_matching": False, "activation_matching": False}})  # fmt: skip
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    assert main(["compare", a, b]) == 2
    assert "pass --model test_user_models:TinyNet" in err_of(capsys)
    assert main(["compare", a, b, "--model", "test_user_models:TinyNet"]) == 2
    assert "names its data loader 'test_user_models:load_tensors'" in err_of(capsys)
    assert main(["compare", a, b, "--model", "test_user_models:TinyNet", "--data",
                 "test_user_models:load_tensors", "--json"]) == 0  # fmt: skip
    assert '"l2"' in capsys.readouterr().out


# ---- configs are code where they name code -------------------------------------------------


def test_a_config_naming_the_standard_library_is_refused_even_in_a_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "MARKER"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"name": "os:system",
                                            "kwargs": {"command": f"touch {marker}"}}}))  # fmt: skip
    assert main(["run", str(cfg), "--dry-run"]) == 2
    assert "names Python's standard library ('os')" in err_of(capsys)
    assert main(["config", str(cfg)]) == 0  # validates and prints, imports nothing
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_butterfly_import_allow_restricts_import_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUTTERFLY_IMPORT_ALLOW", "mylab, otherlab.models")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "test_user_models:TinyNet"},
                                   "data": SYNTH, "recipe": {"batch_size": 16}}))  # fmt: skip
    assert main(["run", str(cfg), "--dry-run"]) == 2
    assert ("'test_user_models:TinyNet' is outside BUTTERFLY_IMPORT_ALLOW (mylab, "
            "otherlab.models)") in err_of(capsys)  # fmt: skip


def test_status_report_and_repair_never_import_what_a_stored_config_names(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A received folder whose config names a module of the sender's: reading the folder
    imports nothing (the module would leave a marker when imported)."""
    run = copy_of(finished, tmp_path)
    marker = tmp_path / "IMPORTED"
    (tmp_path / "sender_pkg.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                            "def make(**kw):\n    raise SystemExit\n")  # fmt: skip
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"] = {**cfg["model"], "name": "sender_pkg:make"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    for cmd in (["status", str(run)], ["report", str(run)], ["repair", str(run)]):
        proc = subprocess.run([sys.executable, "-m", "butterfly.cli", *cmd], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, (cmd, proc.stderr)
        assert not marker.exists(), cmd


# ---- a run folder is a sandbox -------------------------------------------------------------


def test_report_does_not_write_through_a_symlinked_figures_folder(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_of(finished, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "barrier_vs_sigma.png").write_bytes(b"precious")
    before = tree(elsewhere)
    import shutil

    shutil.rmtree(run / "figures", ignore_errors=True)
    (run / "figures").symlink_to(elsewhere, target_is_directory=True)
    assert main(["report", str(run)]) == 2
    assert "figures is a symbolic link: butterfly reads and writes a run folder's files only " \
           "inside it" in err_of(capsys)  # fmt: skip
    assert tree(elsewhere) == before


def test_a_symlinked_figure_file_is_refused_and_never_written_through(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_of(finished, tmp_path)
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    png = run / "figures" / "barrier_vs_sigma.png"
    png.parent.mkdir(exist_ok=True)
    png.unlink(missing_ok=True)
    png.symlink_to(target)
    assert main(["report", str(run)]) == 2
    assert "barrier_vs_sigma.png is a symbolic link" in err_of(capsys)
    assert target.read_text() == "precious"
    # and were it reached, a figure is written atomically: the link is replaced, not followed
    from matplotlib.figure import Figure

    from butterfly.report.figures import save_figure

    save_figure(Figure(), png)
    assert target.read_text() == "precious" and not png.is_symlink()


@pytest.mark.parametrize("name", ["../victim", "/tmp/victim-abs", "a/../../victim", ".."])
def test_a_finetuning_folder_naming_a_sub_run_outside_itself_is_refused(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    victim = copy_of(finished, tmp_path)  # another run on the machine, with its own results
    top = tmp_path / "ft"
    with Store(top / "results.db") as s:
        s.set_meta("pipeline", "finetune")
        s.set_meta("runs", [[0, name, "random init"]])
    before = tree(victim)
    assert main(["report", str(top)]) == 2
    assert "a fine-tuning sweep's folder name" in err_of(capsys)
    assert main(["status", str(top)]) == 2
    assert "is not one plain name" in err_of(capsys)
    assert tree(victim) == before and not (top / "report.html").exists()


@pytest.mark.parametrize("what", ["config.yaml", "results.db", ".lock", "parents"])
def test_symlinked_files_of_a_run_folder_are_refused(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    run = copy_of(finished, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:SECRET-CONTENT:0:0\n" * 50)
    target: Path = secret
    if what == "parents":
        target = tmp_path / "other-parents"
        import shutil

        shutil.copytree(run / "parents", target)
        shutil.rmtree(run / "parents")
    else:
        (run / what).unlink(missing_ok=True)
    before = tree(tmp_path / "other-parents") if what == "parents" else secret.read_bytes()
    (run / what).symlink_to(target)
    code = main(["status", str(run)]) if what != "parents" else None
    if code is not None:
        assert code == 2
        err = err_of(capsys)
        assert f"{what} is a symbolic link" in err and "SECRET-CONTENT" not in err
    cfg = run / "config.yaml"
    args = ["run", str(cfg if what != "config.yaml" else secret), "--out", str(run)]
    if what in ("results.db", ".lock", "parents"):
        assert main(["run", str(run / "config.yaml"), "--out", str(run), "--quiet"]) == 2
        assert f"{what} is a symbolic link" in err_of(capsys)
    after = tree(tmp_path / "other-parents") if what == "parents" else secret.read_bytes()
    assert after == before, args


def test_errors_never_print_a_files_content(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: " + "SECRET" * 200 + "\n")
    assert main(["config", str(cfg)]) == 2
    err = err_of(capsys)
    assert len(err) < 400 and err.count("SECRET") < 20


def test_an_interrupted_dry_run_does_not_say_units_were_saved(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import butterfly.sweep.estimate as estimate

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(estimate, "project", interrupted)
    assert main(["run", "--dry-run", "--set", "recipe.steps=10"]) == 130
    err = err_of(capsys)
    assert "interrupted" in err and "saved" not in err and "nothing was written" in err


def test_received_checkpoints_load_as_tensors_only(tmp_path: Path) -> None:
    """A checkpoint is safetensors: reading one never unpickles; a torch.save file is refused
    with a sentence (the readers' tests cover its wording)."""
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, path)
    from butterfly.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="PyTorch pickle"):
        load_checkpoint(path)


def test_a_dry_run_reads_a_bounded_prefix_of_a_huge_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 10^6-example GSM8K-format file: the plan needs a preview, not the whole file."""
    import json
    import time

    folder = tmp_path / "qa"
    folder.mkdir()
    line = json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n"
    for split, n in (("train", 1_000_000), ("test", 1_000_000)):
        (folder / f"{split}.jsonl").write_text(line * n)
    cfg = tmp_path / "qa.yaml"
    cfg.write_text(yaml.safe_dump({
        "seeds": [0], "data": {"name": "gsm8k", "path": str(folder),
                                                        "max_length": 96},
        "model": {"name": "gpt", "width": 8, "depth": 1, "heads": 2},
        "recipe": {"steps": 20, "batch_size": 8},
        "perturb": {"times": [0.0], "sigmas": [1e-2], "kinds": ["gaussian"]},
        "eval": {"weight_matching": False, "activation_matching": False, "proxy_fractions": [],
                 "cka": False},
    }))  # fmt: skip
    start = time.perf_counter()
    assert main(["run", str(cfg), "--dry-run"]) == 0
    took = time.perf_counter() - start
    out = capsys.readouterr().out
    print(f"dry run of a 10^6-example file: {took:.1f} s")
    assert "projected wall time" in out and "first 2,048 examples of each split" in out
    assert took < 60  # a hang guard; the plan took about 2 s on the 2-core machine
