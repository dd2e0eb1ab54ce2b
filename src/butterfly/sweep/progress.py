"""Live progress for sweeps: units done / total, the running units' steps, elapsed and ETA.

Drawn on one line of stderr when it is a terminal; silent otherwise (logs stay clean). Workers
report ``(seed, t, step)`` through a queue; the ETA extrapolates from member-steps done.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


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
    ):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total_units
        self.done = done_units
        self.total_work = max(total_work, 1)
        self.work_done = 0
        self.T = T
        self.running: dict[tuple[int, int], int] = {}
        self.start = time.monotonic()
        self._last = 0.0

    def step(self, seed: int, t: int, step: int) -> None:
        self.running[(seed, t)] = step
        self.draw()

    def unit_done(self, seed: int, t: int, work: int) -> None:
        self.running.pop((seed, t), None)
        self.done += 1
        self.work_done += work
        self.draw(force=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        partial = sum(s - t for (_, t), s in self.running.items())
        frac = min((self.work_done + partial) / self.total_work, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        units = " ".join(
            f"[seed {s} t={t}: {st}/{self.T}]" for (s, t), st in sorted(self.running.items())
        )
        eta_s = _fmt(eta) if eta == eta else "?"
        return f"units {self.done}/{self.total} {units} | elapsed {_fmt(elapsed)} | ETA {eta_s}"

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        self.stream.write("\r\033[K" + self.line()[:200])
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
