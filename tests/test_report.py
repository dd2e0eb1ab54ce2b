"""Issue 7: figures and a self-contained report.html, checked in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from butterfly.cli import main
from butterfly.experiment.rows import children, spawned
from butterfly.report import build_report
from butterfly.report.summary import finding, fmt_number, fmt_t
from butterfly.sweep import run_sweep
from butterfly.sweep.store import Store
from conftest import tiny_config


def _chromium() -> str:
    """Debian's chromium, installed here if missing (the test's setup); skip if impossible."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed (not root / no apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0:
            pytest.skip(f"chromium could not be installed: {r.stderr.strip()[-300:]}")
    return shutil.which("chromium") or pytest.skip("chromium installed but not on PATH")


# Chromium's own background traffic (time sync, component updates, accounts), seen here even for
# an empty page; anything else reaching the proxy was asked for by the report.
BROWSER_HOSTS = re.compile(
    r"^(GET|POST|CONNECT) (http://)?[a-z0-9.-]*(google\.com|googleapis\.com|gvt1\.com)[:/]"
)


class CountingProxy:
    """A loopback TCP listener used as Chromium's proxy: every network request reaches it, and
    its first line (method and target) is recorded."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                line = conn.recv(300).split(b"\r\n")[0].decode("latin-1")
            except OSError:
                line = "<no request line>"
            self.requests.append(line)
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = tiny_config(perturb={"times": [0.0, 0.25, 0.5], "fractions": [0.1, 1.0]})
    run_sweep(cfg, out, quiet=True)
    return out


class Tables(HTMLParser):
    """The page's tables: class -> rows of (cell text, data-v) pairs (header row first, with
    data-v None)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.numeric: list[tuple[str, str]] = []  # (text, data-v) of every numeric cell
        self._rows: list | None = None
        self._cell: list[str] | None = None
        self._attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._rows = self.tables.setdefault(a.get("class") or "", [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell, self._attrs = [], a

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._rows is not None:
            text = "".join(self._cell)
            self._rows[-1].append((text, self._attrs.get("data-v")))
            if tag == "td" and self._attrs.get("class") == "":
                self.numeric.append((text, self._attrs.get("data-v") or ""))
            self._cell = None
        elif tag == "table":
            self._rows = None


def parse(page: Path) -> tuple[str, Tables]:
    text = page.read_text()
    t = Tables()
    t.feed(text)
    return text, t


def supported_figures(df: pd.DataFrame, traj: pd.DataFrame) -> list[str]:
    """The figures the data supports, in the page's order (the report's rule, restated)."""
    kids = children(df)
    full = kids[kids["fraction"] == kids["fraction"].max()]
    names = ["training"]  # every run records the original's training curve
    grid = full["t_frac"].nunique() >= 3 and full["sigma"].nunique() >= 3
    if full["barrier_train_loss"].notna().any() and grid:
        names.append("stability_map")
    if full["barrier_train_loss"].notna().any():
        names += ["barrier_vs_sigma", "barrier_vs_sigma_log"]
        if kids["fraction"].nunique() > 1 and (kids["fraction"] < 1).any():
            names.append("barrier_vs_sigma_one_weight")  # Figure 1, right
    if full["barrier_train_loss_wm"].notna().any():
        names += ["barrier_wm_vs_sigma", "barrier_wm_vs_sigma_log"]
    if full["t_frac"].nunique() > 1:
        names.append("barrier_vs_t")
    if full["cka"].notna().any():
        names.append("cka")
    if len(traj):
        names.append("trajectories")
        if traj["l2_predicted"].notna().any():
            names.append("linearised")
        names.append("l2_from_init")
    if full["l2"].notna().any():
        names.append("barrier_vs_l2")
    if full["test_acc_b"].notna().any() and full["barrier_train_loss"].notna().any():
        names.append("performance")
    if full["fixed_point_fraction_wm"].notna().any():
        names.append("fixed_points")
    if kids["fraction"].nunique() > 1:
        names.append("barrier_vs_fraction")
    if len(spawned(df)):
        names.append("spawn")
    return names


def stored(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    with Store(run_dir / "results.db") as s:
        return s.results(), s.trajectories(), s.get_meta("config")


def check_figures_and_numbers(page: Path, run_dir: Path, fig_dir: Path) -> Tables:
    text, tables = parse(page)
    df, traj, _ = stored(run_dir)
    listed = re.findall(r'<figure data-figure="(\w+)">', text)
    assert listed == supported_figures(df, traj)
    for name in listed:
        png = mpimg.imread(fig_dir / f"{name}.png")[..., :3]
        assert len(np.unique((png * 31).astype(int).reshape(-1, 3), axis=0)) > 20, name
        assert (fig_dir / f"{name}.pdf").read_bytes()[:5] == b"%PDF-", name
    # one number format for every number on the page
    assert tables.numeric
    for shown, raw in tables.numeric:
        value = None if raw == "" else int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)
        assert shown == fmt_number(value), (shown, raw)
    # the summary table holds the store's means over seeds (largest fraction; spawn at 0)
    kids = children(df, spawn=True)
    kids = kids[(kids["kind"] == "spawn") | (kids["fraction"] == children(df)["fraction"].max())]
    means = kids.groupby(["kind", "t_frac", "sigma"])["barrier_train_loss"].mean()
    head, *rows = tables.tables["summary"]
    sigmas = sorted(kids["sigma"].unique())
    labels = ["σ = 0 (spawned)" if s == 0 else f"σ = {fmt_number(s)}" for s in sigmas]
    assert [h for h, _ in head] == ["kind, t", *labels]
    expected_rows = sorted({(k, tf) for k, tf, _ in means.index})
    assert [r[0][0] for r in rows] == [f"{k}, t = {fmt_t(tf)}" for k, tf in expected_rows]
    for (kind, tf), row in zip(expected_rows, rows, strict=True):
        for s, (shown, raw) in zip(sigmas, row[1:], strict=True):
            want = means.get((kind, tf, s))
            if want is None:
                assert shown == "–" and raw == ""
            else:
                assert float(raw) == pytest.approx(want, rel=1e-12, abs=1e-300)
                assert shown == fmt_number(want)
    # the page opens, right after the introduction, with the finding computed from the store
    m = re.search(r'id="runs">.*?</script>\s*<p class="finding"><b>Finding.</b> (.*?)</p>', text)
    assert m and m.group(1) == html.escape(finding(df))
    return tables


def test_report_command_writes_figures_and_page(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(run)]) == 0
    page = run / "report.html"
    check_figures_and_numbers(page, run, run / "figures")
    text = page.read_text()
    assert re.findall(r'<figure data-figure="(\w+)">', text) == [
        "training", "barrier_vs_sigma", "barrier_vs_sigma_log", "barrier_vs_sigma_one_weight",
        "barrier_wm_vs_sigma", "barrier_wm_vs_sigma_log", "barrier_vs_t", "cka",
        "trajectories", "l2_from_init", "barrier_vs_l2", "performance", "fixed_points",
        "barrier_vs_fraction",
    ]  # fmt: skip
    assert text.count("<img") == 14
    assert not re.search(r"(src|href)=[\"']https?:", text), "the page must load nothing remotely"
    assert "determinism check: all" in text and "torch" in text and "recipe:" in text
    assert "Perturbing at t = 0 by σ = " in text


def test_a_run_without_optional_measures_shows_only_what_it_has(tmp_path: Path) -> None:
    out = tmp_path / "bare"
    off = {"cka": False, "weight_matching": False, "activation_matching": False,
           "ensemble": False, "trajectory_points": 0, "proxy_fractions": []}  # fmt: skip
    run_sweep(
        tiny_config(perturb={"times": [0.0], "kinds": ["gaussian"]}, eval=off), out, quiet=True
    )
    page = build_report([out])
    check_figures_and_numbers(page, out, out / "figures")
    text = page.read_text()
    assert re.findall(r'<figure data-figure="(\w+)">', text) == [
        "training", "barrier_vs_sigma",
        "barrier_vs_sigma_log",
        "barrier_vs_l2",
        "performance",
    ]
    assert "(gaussian perturbation, 1 seed)" in text


def flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_several_runs_side_by_side(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run_sweep(tiny_config(recipe={"warmup": 0.2}, perturb={"times": [0.0, 0.5]}), other, quiet=True)
    page = tmp_path / "both.html"
    assert main(["report", str(run), str(other), "--out", str(page)]) == 0
    text, tables = parse(page)
    assert "Settings compared" in text and "Run run" in text and "Run other" in text
    compared = re.findall(r'<figure data-figure="(\w+)">', text)
    # the comparison's own figures come before each run's: Figures 4 and 12, 28, 8, 7/14/15
    assert compared[:4] == ["runs_compared", "runs_compared_log", "performance_compared",
                            "settings_compared"]  # fmt: skip
    for name in compared[:4]:
        assert (tmp_path / "figures" / f"{name}.png").is_file()
    # the config keys that differ, with each run's value
    a, b = flat(stored(run)[2]), flat(stored(other)[2])
    differ = sorted(k for k in set(a) | set(b) if a.get(k, "absent") != b.get(k, "absent"))
    assert {"recipe.warmup", "perturb.times", "perturb.fractions"} <= set(differ)
    head, *rows = tables.tables["config-diff"]
    assert [h for h, _ in head] == ["key", "run", "other"]
    assert [r[0][0] for r in rows] == differ
    by_key = {r[0][0]: [c for c, _ in r[1:]] for r in rows}
    assert by_key["recipe.warmup"] == [fmt_number(a["recipe.warmup"]), fmt_number(0.2)]
    assert by_key["perturb.times"] == [json.dumps(a["perturb.times"]), json.dumps([0.0, 0.5])]
    # Table 1: one row per run, its children's final accuracy and cross-entropy over seeds
    head, *rows = tables.tables["table1"]
    assert [h for h, _ in head] == ["run", "test accuracy", "train CE", "children"]
    assert [r[0][0] for r in rows] == ["run", "other"]
    for r, d in zip(rows, (run, other), strict=True):
        kids = children(stored(d)[0])
        for (cell, _), col in zip(r[1:3], ("test_acc_b", "train_loss_b"), strict=True):
            per_seed = kids.groupby("seed")[col].mean()
            spread = f" ± {fmt_number(per_seed.std(ddof=1))}" if len(per_seed) > 1 else ""
            assert cell == fmt_number(per_seed.mean()) + spread
    assert '<figure data-figure="settings_compared">' in text
    # one finding per run, from each run's store
    for name, d in (("run", run), ("other", other)):
        sentence = html.escape(finding(stored(d)[0]))
        assert f"<li><b>{name}:</b> {sentence}</li>" in text


def test_report_renders_in_headless_chromium_without_network(run: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    main(["report", str(run)])
    page = run / "report.html"
    shot = tmp_path / "shot.png"
    proxy = CountingProxy()
    try:
        base = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            f"--proxy-server=127.0.0.1:{proxy.port}", "--proxy-bypass-list=<-loopback>",
        ]  # fmt: skip
        r = subprocess.run(
            [*base, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert shot.is_file(), r.stderr[-1500:]
        dom = subprocess.run(
            [*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180
        ).stdout
    finally:
        proxy.close()
    from_page = [r for r in proxy.requests if not BROWSER_HOSTS.match(r)]
    assert not from_page, f"the report made network requests: {from_page}"
    assert dom.count("<img") == 14 and "data:image/png;base64" in dom
    assert "sortable" in dom
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    non_white = (img < 0.97).any(-1)
    assert non_white.mean() > 0.05, "the page looks blank"
    colours = np.unique((img[non_white] * 31).astype(int), axis=0)
    assert len(colours) > 50, "no figure colours rendered"
