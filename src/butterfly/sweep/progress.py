"""Live progress for sweeps: units done / total, the running units' steps, elapsed and ETA.

Drawn on one line of stderr when a terminal (or a notebook) is watching; silent otherwise (logs
stay clean). Workers report ``(seed, t, step)`` through a queue.

The ETA extrapolates the *rate of training* measured since the first population reported a
step, over the member-steps of the work plan still to do: start-up, data loading and parent
training (before any population runs) are not counted as work, so they cannot inflate it. No
ETA is shown until it means something: at least 2% of the plan done and 3 seconds of
measured rate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

MIN_FRACTION = 0.02  # of the plan's steps done before an ETA is shown
MIN_SECONDS = 3.0  # of measured training rate before an ETA is shown


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(
        self,
        total_units: int,
        done_units: int,
        total_work: int,
        T: int,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        erase: bool = True,
    ):
        """``total_work``: the steps still to train (T - t per unit to do); ``erase``: clear
        the line with an ANSI code (a terminal) or only return to its start (a notebook)."""
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total_units
        self.done = done_units
        self.total_work = max(total_work, 1)
        self.work_done = 0
        self.T = T
        self.running: dict[tuple[int, int], int] = {}
        self.clock = clock
        self.start = clock()
        self.first: float | None = None  # when the first population reported a step
        self.erase = erase
        self._last = 0.0
        self._width = 0

    def _work(self) -> int:
        return self.work_done + sum(s - t for (_, t), s in self.running.items())

    def step(self, seed: int, t: int, step: int) -> None:
        if self.first is None:
            self.first = self.clock()
            self._work_at_first = self._work()
        self.running[(seed, t)] = step
        self.draw()

    def unit_done(self, seed: int, t: int, work: int) -> None:
        if self.first is None:  # a unit that finished without reporting (in-process)
            self.first = self.clock()
            self._work_at_first = self._work()
        self.running.pop((seed, t), None)
        self.done += 1
        self.work_done += work
        self.draw(force=True)

    def eta(self) -> float | None:
        """Seconds left, or None while the rate is not yet known."""
        if self.first is None:
            return None
        now = self.clock()
        work = self._work()
        measured = now - self.first
        if work < MIN_FRACTION * self.total_work or measured < MIN_SECONDS:
            return None
        rate = (work - self._work_at_first) / measured
        if rate <= 0:
            return None
        return max(self.total_work - work, 0) / rate

    def line(self) -> str:
        elapsed = self.clock() - self.start
        units = " ".join(
            f"[seed {s} t={t}: {st}/{self.T}]" for (s, t), st in sorted(self.running.items())
        )
        eta = self.eta()
        eta_s = _fmt(eta) if eta is not None else "estimating"
        return f"units {self.done}/{self.total} {units} | elapsed {_fmt(elapsed)} | ETA {eta_s}"

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        text = self.line()[:200]
        if self.erase:
            self.stream.write("\r\033[K" + text)
        else:  # a notebook: overwrite by returning and padding
            self.stream.write("\r" + text.ljust(self._width))
        self._width = max(self._width, len(text))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K" if self.erase else "\r" + " " * self._width + "\r")
            self.stream.flush()
