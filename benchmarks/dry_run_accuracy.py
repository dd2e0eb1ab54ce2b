"""How good is `butterfly run --dry-run`'s projection? Project a sweep, run it, print both.

    python benchmarks/dry_run_accuracy.py [--set KEY=VALUE ...] [--workers N]

Default: the default sweep (MNIST-1D, 3 seeds x 6 times x 10 members). Prints the projected and
the measured wall time (the sweep itself, and with its report) and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from butterfly.config import load_config
from butterfly.experiment.resolve import resolve
from butterfly.report import build_report
from butterfly.sweep.estimate import project
from butterfly.sweep.pipelines import run_pipeline
from butterfly.sweep.session import resolve_workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    resolved = resolve(load_config(args.config, args.overrides))
    workers = resolve_workers(resolved, args.workers)
    t0 = time.perf_counter()
    projection = project(resolved, workers)
    timing_s = time.perf_counter() - t0
    print("\n".join(projection.lines()))
    print(f"(the projection itself took {timing_s:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = time.perf_counter()
        outcome = run_pipeline(resolved, out, workers=workers, quiet=True)
        sweep_s = time.perf_counter() - start
        build_report([outcome.run_dir])
        total_s = time.perf_counter() - start
    print(f"measured: sweep {sweep_s:.1f} s, with its report {total_s:.1f} s")
    print(f"projected / measured: {projection.wall_s / sweep_s:.2f} (sweep), "
          f"{projection.wall_s / total_s:.2f} (with report)")  # fmt: skip


if __name__ == "__main__":
    main()
