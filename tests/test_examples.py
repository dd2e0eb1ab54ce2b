"""The examples in examples/ run as a user would run them, and show what they say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, **(env or {})})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _results(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "results.csv")
    ctrl = df[df.control == 1]
    assert len(ctrl) > 0 and (ctrl.l2 == 0.0).all() and (ctrl.barrier_train_loss == 0.0).all()
    return df[df.control == 0]


def test_own_cnn_on_own_tensors(tmp_path: Path) -> None:
    out = tmp_path / "cnn"
    proc = _run([sys.executable, str(EXAMPLES / "own_cnn.py"), str(out)])
    assert "all sigma = 0 controls exactly 0" in proc.stdout
    kids = _results(out)
    assert len(kids) == 2 * 3 * 2  # seeds x times x sigmas (batch only)
    by_t = kids.groupby("t_frac").barrier_train_loss.mean()
    assert by_t[0.0] > 10 * by_t[0.5]  # the butterfly effect, on the user's CNN
    assert kids.barrier_train_loss_wm.notna().all() and kids.cka.notna().all()
    assert (out / "data.safetensors").is_file() and (out / "report.html").is_file()


def test_custom_loss_regression(tmp_path: Path) -> None:
    out = tmp_path / "loss"
    _run([sys.executable, str(EXAMPLES / "custom_loss.py"), str(out)])
    kids = _results(out)
    assert kids.barrier_train_loss.notna().all() and (kids.l2 > 0).all()
    assert kids.barrier_test_error.isna().all()  # a regression has no error rate
    for kind in ("batch", "gaussian"):
        d = kids[kids.kind == kind]
        assert d[d.t == 0].l2.mean() > d[d.t_frac == 0.5].l2.mean()


def test_user_model_from_yaml_by_import_path(tmp_path: Path) -> None:
    out = tmp_path / "yaml"
    _run([sys.executable, "-m", "butterfly.cli", "run", str(EXAMPLES / "yaml_model" / "sweep.yaml"),
          "--out", str(out), "--quiet"], env={"PYTHONPATH": str(EXAMPLES / "yaml_model")})  # fmt: skip
    kids = _results(out)
    assert len(kids) == 2 * 3 * 2 * 2
    cfg = (out / "config.yaml").read_text()
    assert "name: mymodels:WideShallow" in cfg and "name: mymodels:clusters" in cfg
    assert kids.barrier_train_loss_wm.notna().all()  # a spec derived through GELU


def test_the_readme_snippet_of_your_own_model_runs_as_a_file(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    snippet = next(b for b in blocks if "butterfly.Experiment(" in b and "class MyNet" in b)
    # as pasted, but shorter and into the test's folder
    snippet = snippet.replace('"steps": 2000', '"steps": 200').replace(
        'out="runs/mine"', f'out={str(tmp_path / "mine")!r}'
    )
    script = tmp_path / "snippet.py"
    script.write_text(snippet + "\n    print(run)\n")
    proc = _run([sys.executable, str(script)])
    assert "all sigma = 0 controls exactly 0" in proc.stdout
    assert len(pd.read_csv(tmp_path / "mine" / "results.csv")) == 3 * 3 * 5
