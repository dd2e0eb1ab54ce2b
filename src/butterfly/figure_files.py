"""Writing figures to files: PNG and PDF, atomically, several at once.

Nearly all of a report's time is matplotlib drawing its figures (the layout of every axes, tick
labels, text), one core per figure, and a report's figures are independent of each other. So
:func:`save_figures` hands them (pickled, built already) to a pool of worker processes, one per
core, and each worker writes its figures' two files. The files are the same as those written one
by one in this process: the figure, its size and its resolution travel whole.

The module imports matplotlib and nothing heavier (no torch), so a worker starts in about a
second. The figures are written here instead, one after another, when there is one figure or one
core, when ``BUTTERFLY_FIGURE_WORKERS=1`` says so, when a figure cannot be pickled, and when the
main program is a script without an ``if __name__ == "__main__":`` guard (a spawned worker would
run its top level again).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain, islice
from multiprocessing import get_context
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from butterfly.atomic import atomic_path
from butterfly.config.errors import ConfigError
from butterfly.imports import unguarded_main

WORKERS_ENV = "BUTTERFLY_FIGURE_WORKERS"
PNG_DPI = 130


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG (``path``) and PDF beside it, and close it. Each file is written
    atomically, so a symbolic link in its place is replaced, never written through."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=PNG_DPI, format="png")
        # drawing the PNG placed every axes (constrained layout, sizes in inches); the PDF keeps
        # that placement instead of solving the layout again
        if fig.get_layout_engine() is not None:
            fig.set_layout_engine("none")
        with atomic_path(path.with_suffix(".pdf")) as tmp:
            fig.savefig(tmp, format="pdf")
    finally:
        plt.close(fig)
    return path


def _save_pickled(blob: bytes, path: str) -> str:
    return str(save_figure(pickle.loads(blob), Path(path)))


def figure_workers() -> int:
    """How many processes write a report's figures: one per core this process may use, 8 at
    most, or as ``BUTTERFLY_FIGURE_WORKERS`` says."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError(f"{WORKERS_ENV} must be a whole number >= 1, got {env!r}")
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))


def save_figures(figs: Iterable[tuple[Figure, Path]]) -> list[Path]:
    """Write every ``(figure, path)`` pair (PNG at ``path``, PDF beside it) and close the
    figures; the paths come back in the order given. ``figs`` may be a generator that builds
    each figure when asked: a figure goes to a writer process as soon as it is built, so the
    workers start, and write, while the rest are being built."""
    it = iter(figs)
    head = list(islice(it, 2))
    n = figure_workers()
    if len(head) < 2 or n == 1 or unguarded_main():
        return [save_figure(fig, path) for fig, path in chain(head, it)]
    done: list[Path | Future[str]] = []
    with ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
        for fig, path in chain(head, it):
            try:
                blob = pickle.dumps(fig)
            except (pickle.PicklingError, TypeError, AttributeError):
                done.append(save_figure(fig, path))  # it holds something local: written here
                continue
            plt.close(fig)
            done.append(pool.submit(_save_pickled, blob, str(path)))
        return [d if isinstance(d, Path) else Path(d.result()) for d in done]
