"""The critical perturbation size σ*(t) and the critical time t*(σ): adaptive bracket searches.

The paper measures the train-loss barrier B (Eq. 4) on a fixed grid of perturbation sizes σ and
times t (Figure 2). These searches find instead *where* B crosses an instability threshold ε:

* :class:`SigmaSearch`: for a fixed perturbation time t (seed, kind), the smallest σ with
  B(σ) ≥ ε, searched in log σ inside a bracket (default 1e-6 to 1, in the units of Eq. 6);
* :class:`TimeSearch`: for a fixed σ, the earliest step t after which B(t) < ε stays, searched
  on integer steps in log(1 + t).

Both know nothing of training. Each is a state machine whose *whole state is the list of
measured points* (x, B): :meth:`BracketSearch.propose` says which x to measure next (a whole
*round* at once: one population trains all σ of a round; several t of a round are separate
units that can run in parallel) and :meth:`BracketSearch.result` says what the points show.
A proposal is a pure, deterministic function of the points (their order does not matter, and
proposed σ are rounded to :data:`DIGITS` significant digits so that they are stable keys), so a
search resumed after a crash re-reads its stored points and proposes exactly the same values.

How a round is chosen. Round 1 measures ``per_round`` points spaced evenly in log x over the
whole bracket, endpoints included, so an open bracket is known after one round. Every later
round places n points evenly (in log) strictly inside the current bracket [lo, hi], with n the
fewest that reach the resolution this round (at most ``per_round``): each round divides the
log width by n + 1. The search stops when hi/lo ≤ ``resolution`` (time: (1+hi)/(1+lo) ≤
``resolution`` or hi − lo ≤ ``min_gap`` steps), when the bracket is open, or after
``max_rounds`` rounds. With the defaults (1e-6..1, 6 points, resolution 1.25) a σ search takes
3 rounds of 6, 6 and 1 points.

Which crossing is reported. Barriers are noisy and need not be monotone, so the bracket is
defined from the sorted measured points, not from a model of B:

* σ: the *first upward crossing*: σ_hi is the smallest measured σ with B ≥ ε, σ_lo the largest
  measured σ below it (every measured σ below σ_hi is stable). σ* is the geometric mean
  √(σ_lo σ_hi), the centre of the bracket in log σ, so it is within √resolution of any
  crossing inside the bracket. A stable dip above σ_hi does not move the answer; a spurious
  unstable point below the true crossing does (the search then refines around it) — the
  result's ``crossings`` counts the sign changes among the measured points, so a value above 1
  flags a non-monotone B.
* t: the *last downward crossing*: t* is the earliest measured t with B < ε at t and at every
  later measured t; t_lo is the measured step before it (the latest unstable one).

A point whose value is not a number (a diverged child has no barrier) counts as unstable.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from butterfly.config import ThresholdConfig, default_of

DIGITS = 6  # significant digits of a proposed σ (a stable key for stored rows)

# statuses of a result
PENDING = "pending"  # round 1 has not been measured yet
RUNNING = "running"  # the bracket is closed but wider than the resolution; more rounds to go
RESOLVED = "resolved"  # the bracket is closed and within the resolution
MAX_ROUNDS = "max_rounds"  # stopped after max_rounds, wider than the resolution
ABOVE = "above"  # σ: B < ε everywhere in the bracket: σ* > the bracket's maximum
BELOW = "below"  # σ: B ≥ ε already at the bracket's minimum: σ* < the bracket's minimum
NEVER_STABLE = "never_stable"  # t: B ≥ ε at the latest t allowed
ALWAYS_STABLE = "always_stable"  # t: B < ε at every measured t, t = t_min included

# the defaults are the config's (one owner: ThresholdConfig); the search, the report and the
# command line read them from there
DEFAULT_METRIC: str = default_of(ThresholdConfig, "metric")
DEFAULT_EPS: float = default_of(ThresholdConfig, "eps")


def key(x: float) -> float:
    """``x`` rounded to :data:`DIGITS` significant digits: how measured points are matched."""
    return float(f"{float(x):.{DIGITS}g}")


@dataclass(frozen=True)
class Point:
    """One measured point: the searched coordinate ``x`` (σ or the step t), the metric's
    ``value`` B there (NaN or inf: diverged or missing) and the threshold ``eps`` it is judged
    against (absolute, or already scaled by the original's train loss)."""

    x: float
    value: float
    eps: float

    @property
    def unstable(self) -> bool:
        """B ≥ ε, or B is not a number (a diverged child is unstable)."""
        return not (self.value < self.eps)


@dataclass(frozen=True)
class Criterion:
    """When a child counts as unstable: ``metric`` ≥ ε, with ε = ``eps`` (absolute, in the
    metric's units) or, when ``relative``, ε = ``eps`` × the original's train loss at the end
    (``train_loss_a``).

    The default, an absolute train-loss barrier (Eq. 4) of 0.05 nats, sits above the *chaotic
    floor*: early in training, the smallest perturbations that survive float32 rounding
    (σ ≈ 1e-6) already give barriers of 0.01-0.04 on the default MNIST-1D recipe, whatever σ,
    so a smaller ε finds no σ dependence there (σ* below any resolvable σ); 0.05 resolves
    σ*(t) at all six of the paper's perturbation times. It does not collapse when the train
    loss goes to zero the way a relative ε does (for a network that fits its training set, 1%
    of its train loss lies within rounding noise).
    """

    metric: str = DEFAULT_METRIC
    eps: float = DEFAULT_EPS
    relative: bool = False

    def __post_init__(self) -> None:
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"criterion eps must be a positive number; got {self.eps}")

    def threshold(self, row: Mapping[str, Any]) -> float:
        """ε for this row (the relative criterion needs the row's ``train_loss_a``)."""
        if not self.relative:
            return self.eps
        loss = row.get("train_loss_a")
        if loss is None or not math.isfinite(float(loss)) or float(loss) <= 0:
            raise ValueError(
                f"a relative criterion needs a positive finite train_loss_a; got {loss!r}"
            )
        return self.eps * float(loss)

    def value(self, row: Mapping[str, Any]) -> float:
        """The metric of the row; inf for a diverged child, NaN when missing."""
        if row.get("diverged"):
            return math.inf
        v = row.get(self.metric)
        return math.nan if v is None else float(v)

    def unstable(self, row: Mapping[str, Any]) -> bool:
        """Whether the child of this row is unstable: metric ≥ ε (or diverged, or missing)."""
        return bool(row.get("diverged")) or not (self.value(row) < self.threshold(row))

    def point(self, row: Mapping[str, Any], over: Literal["sigma", "t"] = "sigma") -> Point:
        """The row as a measured point of a search over ``over`` (the row's ``sigma`` or
        ``t`` column)."""
        if row.get("diverged"):  # unstable whatever ε; a diverged row has no train_loss_a
            return Point(float(row[over]), math.inf, self.eps)
        return Point(float(row[over]), self.value(row), self.threshold(row))


@dataclass(frozen=True)
class ThresholdResult:
    """What the measured points show.

    ``estimate`` is σ* (the geometric mean of the bracket) or t* (= ``hi``), None when the
    bracket is open or nothing is measured. ``lo`` / ``hi`` bound the crossing (None on an open
    side: status ``above``/``never_stable`` has only ``lo``, ``below``/``always_stable`` only
    ``hi``). ``rounds`` counts completed rounds, ``points`` are the points those rounds
    measured (sorted, duplicates merged), ``crossings`` the number of stable/unstable sign
    changes along them (1 for a monotone B), ``done`` whether the search asks for no more.
    """

    over: Literal["sigma", "t"]
    status: str
    estimate: float | None
    lo: float | None
    hi: float | None
    rounds: int
    points: tuple[Point, ...]
    crossings: int
    done: bool

    @property
    def ratio(self) -> float | None:
        """hi / lo for σ, (1 + hi) / (1 + lo) for t; None for an open bracket."""
        if self.lo is None or self.hi is None:
            return None
        if self.over == "t":
            return (1 + self.hi) / (1 + self.lo)
        return self.hi / self.lo


PointLike = Point | tuple[float, float] | tuple[float, float, float]


@dataclass(frozen=True)
class BracketSearch:
    """The shared state machine of :class:`SigmaSearch` and :class:`TimeSearch`.

    ``eps`` judges points given as plain (x, B) tuples; :class:`Point` s carry their own.
    """

    lo: float
    hi: float
    per_round: int = 6
    resolution: float = 1.25
    max_rounds: int = 8
    eps: float = DEFAULT_EPS
    over: Literal["sigma", "t"] = field(default="sigma", init=False)

    def __post_init__(self) -> None:
        if self.per_round < 2:
            raise ValueError(
                f"per_round must be at least 2 (round 1 measures both ends); got {self.per_round}"
            )
        if not self.resolution > 1:
            raise ValueError(f"resolution must be a ratio > 1; got {self.resolution}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1; got {self.max_rounds}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive; got {self.eps}")

    # ---- to be provided by the two searches --------------------------------------------

    def key(self, x: float) -> float:
        raise NotImplementedError

    def initial(self) -> list[float]:
        raise NotImplementedError

    def interior(self, lo: float, hi: float) -> list[float]:
        raise NotImplementedError

    def resolved(self, lo: float, hi: float) -> bool:
        raise NotImplementedError

    def bracket(self, pts: Sequence[Point]) -> tuple[str, float | None, float | None]:
        raise NotImplementedError

    def estimate(self, lo: float, hi: float) -> float:
        raise NotImplementedError

    # ---- the state machine ------------------------------------------------------------

    def measured(self, points: Iterable[PointLike]) -> dict[float, Point]:
        """The points by key, duplicates merged (mean value and ε, independent of order)."""
        groups: dict[float, list[Point]] = {}
        for p in points:
            q = p if isinstance(p, Point) else Point(p[0], p[1], p[2] if len(p) > 2 else self.eps)
            groups.setdefault(self.key(q.x), []).append(q)
        out = {}
        for k, ps in groups.items():
            if len(ps) == 1:
                out[k] = Point(k, ps[0].value, ps[0].eps)
            else:
                values = sorted(p.value for p in ps)
                epss = sorted(p.eps for p in ps)
                out[k] = Point(k, math.fsum(values) / len(values), math.fsum(epss) / len(epss))
        return out

    def _next(self, used: dict[float, Point], rounds: int) -> list[float] | None:
        """The proposal of round ``rounds + 1`` given the points of the completed rounds."""
        if rounds == 0:
            return self.initial()
        if rounds >= self.max_rounds:
            return None
        _, lo, hi = self.bracket(sorted(used.values(), key=lambda p: p.x))
        if lo is None or hi is None or self.resolved(lo, hi):
            return None
        proposal = [x for x in self.interior(lo, hi) if x not in used]
        return proposal or None

    def _replay(self, points: Iterable[PointLike]) -> tuple[list[float] | None, int, dict]:
        """Replay the rounds the points answer: (what is missing, completed rounds, points of
        the completed rounds). Points the search did not propose are ignored."""
        have = self.measured(points)
        used: dict[float, Point] = {}
        rounds = 0
        while True:
            proposal = self._next(used, rounds)
            if proposal is None:
                return None, rounds, used
            missing = [x for x in proposal if x not in have]
            if missing:
                return missing, rounds, used
            for x in proposal:
                used[x] = have[x]
            rounds += 1

    def propose(self, points: Iterable[PointLike] = ()) -> list[float] | None:
        """The values to measure in the next round (sorted), or None when the search is done.

        After a partial round (some of its values measured) it proposes the rest of that
        round, so an interrupted search continues exactly as an uninterrupted one.
        """
        missing, _, _ = self._replay(points)
        return None if missing is None else sorted(missing)

    def result(self, points: Iterable[PointLike] = ()) -> ThresholdResult:
        """What the points of the completed rounds show (see the module docstring)."""
        missing, rounds, used = self._replay(points)
        pts = tuple(sorted(used.values(), key=lambda p: p.x))
        crossings = sum(a.unstable != b.unstable for a, b in itertools.pairwise(pts))
        done = missing is None
        if rounds == 0:
            return ThresholdResult(self.over, PENDING, None, None, None, 0, pts, 0, done)
        status, lo, hi = self.bracket(pts)
        est = None
        if lo is not None and hi is not None:
            est = self.estimate(lo, hi)
            unresolved = MAX_ROUNDS if done else RUNNING
            status = RESOLVED if self.resolved(lo, hi) else unresolved
        return ThresholdResult(self.over, status, est, lo, hi, rounds, pts, crossings, done)

    def drive(
        self,
        measure: Callable[[list[float]], Iterable[PointLike]],
        points: Iterable[PointLike] = (),
    ) -> ThresholdResult:
        """Run the search to the end in memory: ``measure(xs)`` returns the points of a round."""
        pts = list(points)
        while (xs := self.propose(pts)) is not None:
            pts.extend(measure(xs))
        return self.result(pts)


def _n_inside(width: float, resolution: float, per_round: int) -> int:
    """The fewest points, evenly spaced inside a log width, that bring it to the resolution
    (at most ``per_round``)."""
    need = math.ceil(width / math.log(resolution) - 1e-9) - 1
    return max(1, min(per_round, need))


@dataclass(frozen=True)
class SigmaSearch(BracketSearch):
    """The smallest σ with B(σ) ≥ ε for a fixed t: bisection in log σ, several σ per round.

    See the module docstring for the rounds, the stopping rule and the crossing reported.
    """

    lo: float = 1e-6
    hi: float = 1.0
    over: Literal["sigma", "t"] = field(default="sigma", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.lo < self.hi and math.isfinite(self.hi)):
            raise ValueError(f"the σ bracket must satisfy 0 < lo < hi; got [{self.lo}, {self.hi}]")

    def key(self, x: float) -> float:
        return key(x)

    def initial(self) -> list[float]:
        return self._spaced(self.lo, self.hi, self.per_round - 2, ends=True)

    def _spaced(self, lo: float, hi: float, n: int, ends: bool = False) -> list[float]:
        a, b = math.log(lo), math.log(hi)
        xs = [key(math.exp(a + (b - a) * j / (n + 1))) for j in range(1, n + 1)]
        return sorted({*xs, *((key(lo), key(hi)) if ends else ())})

    def interior(self, lo: float, hi: float) -> list[float]:
        n = _n_inside(math.log(hi / lo), self.resolution, self.per_round)
        return [x for x in self._spaced(lo, hi, n) if lo < x < hi]

    def resolved(self, lo: float, hi: float) -> bool:
        return hi / lo <= self.resolution * (1 + 1e-5)  # 1e-5: the rounding of the keys

    def bracket(self, pts: Sequence[Point]) -> tuple[str, float | None, float | None]:
        return first_upward_crossing(pts)

    def estimate(self, lo: float, hi: float) -> float:
        return math.sqrt(lo * hi)


def first_upward_crossing(pts: Sequence[Point]) -> tuple[str, float | None, float | None]:
    """(status, σ_lo, σ_hi) of points sorted by σ: σ_hi the smallest unstable σ, σ_lo the
    measured σ below it (open sides None: ``above`` or ``below`` the bracket)."""
    first = next((i for i, p in enumerate(pts) if p.unstable), None)
    if first is None:
        return ABOVE, pts[-1].x, None
    if first == 0:
        return BELOW, None, pts[0].x
    return RUNNING, pts[first - 1].x, pts[first].x


def grid_sigma_star(points: Iterable[tuple[float, float]], eps: float = DEFAULT_EPS) -> float | None:
    """σ* from a grid's measured (σ, B) points, judged as the search judges its own: the
    geometric mean of the first upward crossing's bracket (None when it is open)."""
    pts = sorted((Point(key(s), float(v), eps) for s, v in points), key=lambda p: p.x)
    if not pts:
        return None
    _, lo, hi = first_upward_crossing(pts)
    return math.sqrt(lo * hi) if lo is not None and hi is not None else None


@dataclass(frozen=True)
class TimeSearch(BracketSearch):
    """The earliest step t* after which B(t) < ε stays, for a fixed σ: integer steps in
    [``lo``, ``hi``] (default [0, T − 1]), bisected in log(1 + t), several t per round.

    Resolved when (1 + t_hi)/(1 + t_lo) ≤ ``resolution`` or t_hi − t_lo ≤ ``min_gap``.
    """

    lo: float = 0
    hi: float = 2999
    min_gap: int = 1
    over: Literal["sigma", "t"] = field(default="t", init=False)

    @classmethod
    def for_steps(cls, T: int, **kw: Any) -> TimeSearch:
        """The search over every perturbation step of a run of ``T`` steps, [0, T − 1]."""
        return cls(lo=0, hi=T - 1, **kw)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.lo < self.hi) or self.lo != int(self.lo) or self.hi != int(self.hi):
            raise ValueError(
                f"the step bracket must be integers 0 <= lo < hi; got [{self.lo}, {self.hi}]"
            )
        if self.min_gap < 1:
            raise ValueError(f"min_gap must be at least 1 step; got {self.min_gap}")

    def key(self, x: float) -> float:
        return float(round(x))

    def _spaced(self, lo: int, hi: int, n: int) -> list[float]:
        a, b = math.log1p(lo), math.log1p(hi)
        return [float(round(math.expm1(a + (b - a) * j / (n + 1)))) for j in range(1, n + 1)]

    def initial(self) -> list[float]:
        lo, hi = int(self.lo), int(self.hi)
        inside = [min(max(x, lo + 1), hi - 1) for x in self._spaced(lo, hi, self.per_round - 2)]
        return sorted({float(lo), float(hi), *(x for x in inside if lo < x < hi)})

    def interior(self, lo: float, hi: float) -> list[float]:
        a, b = int(lo), int(hi)
        n = _n_inside(math.log((1 + b) / (1 + a)), self.resolution, self.per_round)
        if b - a - 1 <= n:
            return [float(s) for s in range(a + 1, b)]
        return sorted({min(max(x, a + 1), b - 1) for x in self._spaced(a, b, n)})

    def resolved(self, lo: float, hi: float) -> bool:
        return hi - lo <= self.min_gap or (1 + hi) / (1 + lo) <= self.resolution

    def bracket(self, pts: Sequence[Point]) -> tuple[str, float | None, float | None]:
        """The last downward crossing: (status, t_lo, t*)."""
        last = max((i for i, p in enumerate(pts) if p.unstable), default=None)
        if last is None:
            return ALWAYS_STABLE, None, pts[0].x
        if last == len(pts) - 1:
            return NEVER_STABLE, pts[-1].x, None
        return RUNNING, pts[last].x, pts[last + 1].x

    def estimate(self, lo: float, hi: float) -> float:
        return hi
