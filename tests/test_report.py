"""Issue 7: figures and a self-contained report.html, checked in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from butterfly.cli import main
from butterfly.sweep import run_sweep
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


def test_report_command_writes_figures_and_page(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(run)]) == 0
    page = run / "report.html"
    text = page.read_text()
    for name in ("barrier_vs_sigma", "barrier_vs_sigma_log", "barrier_wm_vs_sigma", "barrier_vs_t",
                 "cka", "trajectories", "l2_from_init", "barrier_vs_l2", "fixed_points",
                 "barrier_vs_fraction"):  # fmt: skip
        assert (run / "figures" / f"{name}.png").stat().st_size > 5000, name
        assert (run / "figures" / f"{name}.pdf").is_file(), name
    assert text.count("<img") == 10
    assert text.index("Barrier against perturbation size") < text.index("<figcaption>") + 200
    assert not re.search(r"(src|href)=[\"']https?:", text), "the page must load nothing remotely"
    assert "Determinism check passed" in text and "torch" in text and "recipe:" in text


def test_several_runs_side_by_side(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run_sweep(tiny_config(recipe={"warmup": 0.2}, perturb={"times": [0.0, 0.5]}), other, quiet=True)
    page = tmp_path / "both.html"
    assert main(["report", str(run), str(other), "--out", str(page)]) == 0
    text = page.read_text()
    assert "Settings compared" in text and "Run run" in text and "Run other" in text
    assert (tmp_path / "figures" / "runs_compared.png").is_file()


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
    assert dom.count("<img") == 10 and "data:image/png;base64" in dom
    assert "sortable" in dom
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    non_white = (img < 0.97).any(-1)
    assert non_white.mean() > 0.05, "the page looks blank"
    colours = np.unique((img[non_white] * 31).astype(int), axis=0)
    assert len(colours) > 50, "no figure colours rendered"
