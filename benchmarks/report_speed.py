"""How long does `butterfly report` take, with its figures written one by one or by a pool?

    python benchmarks/report_speed.py [RUN_DIR] [--repeats 3]

Without RUN_DIR it first runs a small sweep (the default model on MNIST-1D, 1 seed, 600 steps,
3 times, trajectories on: every figure of a run is drawn). Then it builds the run's report in
three ways, alternating, ``--repeats`` times each, and prints each way's median wall time:

* ``layout twice, serial``: the figures written one by one, the constrained layout solved again
  for the PDF (butterfly before the pool);
* ``serial``: one by one, the PDF keeping the PNG's layout (``BUTTERFLY_FIGURE_WORKERS=1``);
* ``pool``: one writer process per core (the default).

Each build runs as its own ``butterfly report`` process, so start-up (imports) is counted as a
user sees it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# a report built by a process whose figures solve their layout for both files, one by one
OLD_WAY = """
import sys
import matplotlib.pyplot as plt
from butterfly import figure_files
from butterfly.atomic import atomic_path

def save_figure(fig, path):
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=figure_files.PNG_DPI, format="png")
        with atomic_path(path.with_suffix(".pdf")) as tmp:
            fig.savefig(tmp, format="pdf")
    finally:
        plt.close(fig)
    return path

def save_figures(figs):
    return [save_figure(fig, path) for fig, path in figs]

import butterfly.report.figures.registry as registry
registry.save_figures = save_figures
from butterfly.cli import main
sys.exit(main(["report", sys.argv[1]]))
"""


def small_run(out: Path) -> None:
    from butterfly.config import load_config
    from butterfly.sweep.pipelines import run_pipeline

    cfg = load_config(None, ["seeds=[0]", "recipe.steps=600", "perturb.times=[0.0,0.1,0.5]"])
    run_pipeline(cfg, out, quiet=True)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run_dir
        if run is None:
            run = Path(tmp) / "run"
            print("running a small sweep first (1 seed, 600 steps, 3 times) ...", flush=True)
            small_run(run)
        cli = [sys.executable, "-m", "butterfly.cli", "report", str(run)]
        ways = {
            "layout twice, serial": ([sys.executable, "-c", OLD_WAY, str(run)],
                                     {"BUTTERFLY_FIGURE_WORKERS": "1"}),
            "serial": (cli, {"BUTTERFLY_FIGURE_WORKERS": "1"}),
            "pool": (cli, {}),
        }  # fmt: skip
        times: dict[str, list[float]] = {w: [] for w in ways}
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        for _ in range(args.repeats):
            for way, (cmd, extra) in ways.items():
                env = {k: v for k, v in os.environ.items() if k != "BUTTERFLY_FIGURE_WORKERS"}
                times[way].append(timed(cmd, {**env, **extra}))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        n = len(list((run / "figures").glob("*.png")))
        print(f"{n} figures (PNG and PDF); cores: {len(os.sched_getaffinity(0))}")
        base = statistics.median(times["layout twice, serial"])
        for way, ts in times.items():
            med = statistics.median(ts)
            runs = ", ".join(f"{t:.1f}" for t in ts)
            print(f"{way:22s} median {med:6.1f} s ({runs}); {base / med:.2f}x")


if __name__ == "__main__":
    main()
