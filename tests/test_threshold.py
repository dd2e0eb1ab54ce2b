"""The σ*(t) and t*(σ) searches (experiment/threshold.py) on synthetic barriers with a known
crossing: the search logic alone, no training."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from butterfly.experiment.threshold import (
    ABOVE,
    ALWAYS_STABLE,
    BELOW,
    MAX_ROUNDS,
    NEVER_STABLE,
    PENDING,
    RESOLVED,
    RUNNING,
    Criterion,
    Point,
    SigmaSearch,
    ThresholdResult,
    TimeSearch,
    key,
)

EPS = 0.01


def measure(b: Callable[[float], float]) -> Callable[[list[float]], list[tuple[float, float]]]:
    return lambda xs: [(x, b(x)) for x in xs]


def rounds_of(search: SigmaSearch | TimeSearch, b: Callable[[float], float]) -> list[list[float]]:
    """Every round's proposal, driving the search to the end."""
    pts: list[tuple[float, float]] = []
    out = []
    while (xs := search.propose(pts)) is not None:
        out.append(xs)
        pts += measure(b)(xs)
    return out


def quadratic(sigma0: float) -> Callable[[float], float]:
    return lambda s: EPS * (s / sigma0) ** 2


# ---- σ* -----------------------------------------------------------------------------------


def test_quadratic_barrier_is_bracketed_to_the_resolution_in_three_rounds() -> None:
    s0 = 3.7e-4
    search = SigmaSearch(eps=EPS)
    r = search.drive(measure(quadratic(s0)))
    assert r.status == RESOLVED and r.done
    assert r.lo is not None and r.hi is not None and r.estimate is not None
    assert r.lo < s0 <= r.hi
    assert r.ratio is not None and r.ratio <= 1.25 * (1 + 1e-5)
    assert math.isclose(r.estimate, math.sqrt(r.lo * r.hi))
    assert abs(math.log(r.estimate / s0)) <= 0.5 * math.log(1.25)
    assert r.rounds == 3 and r.crossings == 1
    sizes = [len(xs) for xs in rounds_of(search, quadratic(s0))]
    assert sizes == [6, 6, 1]  # 13 children in 3 populations


def test_round_one_measures_the_ends_of_the_bracket() -> None:
    first = SigmaSearch(eps=EPS).propose([])
    assert first is not None and len(first) == 6
    assert first[0] == 1e-6 and first[-1] == 1.0
    ratios = [b / a for a, b in itertools.pairwise(first)]
    assert all(math.isclose(q, 10 ** (6 / 5), rel_tol=1e-5) for q in ratios)
    assert all(x == key(x) for x in first)  # stable keys: 6 significant digits


@pytest.mark.parametrize("s0", [1.3e-6, 2e-5, 3.7e-4, 0.0063, 0.5, 0.99])
def test_many_crossings_are_found_within_a_few_rounds(s0: float) -> None:
    r = SigmaSearch(eps=EPS).drive(measure(quadratic(s0)))
    assert r.status == RESOLVED and r.rounds <= 3
    assert r.lo is not None and r.hi is not None and r.lo < s0 <= r.hi


def test_a_step_function_barrier() -> None:
    s0 = 0.0123
    r = SigmaSearch(eps=EPS).drive(measure(lambda s: 1.0 if s >= s0 else 0.0))
    assert r.status == RESOLVED and r.lo is not None and r.hi is not None
    assert r.lo < s0 <= r.hi and r.hi / r.lo <= 1.25 * (1 + 1e-5)


def test_finer_resolution_and_fewer_points_per_round_need_more_rounds() -> None:
    s0 = 3.7e-4
    fine = SigmaSearch(eps=EPS, resolution=1.01).drive(measure(quadratic(s0)))
    assert fine.status == RESOLVED and fine.ratio is not None and fine.ratio <= 1.01 * (1 + 1e-5)
    assert fine.lo is not None and fine.hi is not None and fine.lo < s0 <= fine.hi
    assert fine.rounds == 4
    # two points a round: the ends, then trisections of ln(1e6): 1 + ceil(log_3(13.8 / 0.223))
    pairs = SigmaSearch(eps=EPS, per_round=2).drive(measure(quadratic(s0)))
    assert pairs.status == RESOLVED and pairs.rounds == 5


def test_max_rounds_stops_an_unresolved_search() -> None:
    r = SigmaSearch(eps=EPS, max_rounds=2).drive(measure(quadratic(3.7e-4)))
    assert r.status == MAX_ROUNDS and r.done and r.rounds == 2
    assert r.lo is not None and r.hi is not None and r.lo < 3.7e-4 <= r.hi
    assert r.ratio is not None and r.ratio > 1.25


def test_non_monotone_barrier_reports_the_first_upward_crossing() -> None:
    s0 = 3.7e-4

    def dip(s: float) -> float:  # stable dip above the crossing: does not move the answer
        return 0.0 if 0.005 <= s <= 0.08 else quadratic(s0)(s)

    r = SigmaSearch(eps=EPS).drive(measure(dip))
    assert r.status == RESOLVED and r.lo is not None and r.hi is not None
    assert r.lo < s0 <= r.hi
    assert r.crossings == 3  # the measured points show the dip: up, down, up

    def island(s: float) -> float:  # a spurious unstable island below the crossing
        return 1.0 if 1e-5 <= s <= 2e-5 else quadratic(s0)(s)

    r = SigmaSearch(eps=EPS).drive(measure(island))
    assert r.status == RESOLVED and r.lo is not None and r.hi is not None
    assert r.lo < 1e-5 <= r.hi  # the smallest unstable σ with everything below it stable
    assert all(not p.unstable for p in r.points if p.x < r.hi)
    assert r.crossings >= 2


def test_open_brackets_above_and_below() -> None:
    above = SigmaSearch(eps=EPS).drive(measure(lambda s: 0.0))
    assert (above.status, above.lo, above.hi, above.estimate) == (ABOVE, 1.0, None, None)
    assert above.rounds == 1 and above.done
    below = SigmaSearch(eps=EPS).drive(measure(lambda s: 1.0))
    assert (below.status, below.lo, below.hi, below.estimate) == (BELOW, None, 1e-6, None)
    assert below.rounds == 1 and below.done
    narrow = SigmaSearch(lo=1e-3, hi=1e-2, eps=EPS).drive(measure(quadratic(0.5)))
    assert narrow.status == ABOVE and narrow.lo == 1e-2


def test_diverged_and_missing_values_count_as_unstable() -> None:
    r = SigmaSearch(eps=EPS).drive(measure(lambda s: math.nan if s > 0.01 else 0.0))
    assert r.status == RESOLVED and r.lo is not None and r.hi is not None
    assert r.lo <= 0.01 < r.hi


def test_proposals_are_a_pure_function_of_the_points() -> None:
    search = SigmaSearch(eps=EPS)
    b = quadratic(3.7e-4)
    pts: list[tuple[float, float]] = []
    for _ in range(2):
        xs = search.propose(pts)
        assert xs is not None
        pts += measure(b)(xs)
    expected = search.propose(pts)
    rng = random.Random(0)
    for _ in range(5):
        shuffled = pts[:]
        rng.shuffle(shuffled)
        assert search.propose(shuffled) == expected
        assert search.result(shuffled) == search.result(pts)
    # points as stored rows would give them back: Point objects, σ read back from a float column
    as_points = [Point(float(repr(x)), v, EPS) for x, v in pts]
    assert search.propose(as_points) == expected
    assert SigmaSearch(eps=EPS).propose(pts) == expected  # a fresh search object


def test_resume_after_round_one_gives_the_same_answer() -> None:
    b = quadratic(3.7e-4)
    search = SigmaSearch(eps=EPS)
    straight = search.drive(measure(b))
    first = search.propose([])
    assert first is not None
    stored = measure(b)(first)
    partial = search.result(stored)
    assert partial.status == RUNNING and not partial.done and partial.rounds == 1
    resumed = SigmaSearch(eps=EPS).drive(measure(b), stored)
    assert resumed == straight


def test_a_partial_round_is_completed_before_anything_new_is_proposed() -> None:
    b = quadratic(3.7e-4)
    search = SigmaSearch(eps=EPS)
    r1 = search.propose([])
    assert r1 is not None
    pts = measure(b)(r1)
    r2 = search.propose(pts)
    assert r2 is not None
    half = pts + measure(b)(r2[:3])
    assert search.propose(half) == r2[3:]
    assert search.result(half).rounds == 1  # the half round does not count yet
    assert search.drive(measure(b), half) == search.drive(measure(b))
    assert search.result([]).status == PENDING


def test_duplicate_points_are_merged_whatever_their_order() -> None:
    search = SigmaSearch(eps=EPS)
    xs = search.propose([])
    assert xs is not None
    a = [(x, 0.004) for x in xs] + [(x, 0.02) for x in xs]  # two directions per σ
    r = search.result(a)
    assert all(p.value == pytest.approx(0.012) for p in r.points)
    assert r == search.result(a[::-1])


def test_criterion_absolute_relative_and_diverged() -> None:
    c = Criterion()
    assert (c.metric, c.eps, c.relative) == ("barrier_train_loss", 0.05, False)
    c = Criterion(eps=0.01)
    row = {"sigma": 1e-3, "barrier_train_loss": 0.02, "train_loss_a": 0.5, "diverged": 0}
    assert c.unstable(row) and c.point(row) == Point(1e-3, 0.02, 0.01)
    rel = Criterion(eps=0.05, relative=True)
    assert rel.threshold(row) == pytest.approx(0.025) and not rel.unstable(row)
    bad = {"sigma": 1e-3, "diverged": 1}  # no barrier, no train_loss_a
    assert c.unstable(bad) and rel.unstable(bad) and rel.point(bad).unstable
    assert c.point({"t": 12, "barrier_train_loss": 0.0}, over="t") == Point(12.0, 0.0, 0.01)
    with pytest.raises(ValueError, match="train_loss_a"):
        rel.threshold({"barrier_train_loss": 0.0})
    with pytest.raises(ValueError, match="eps"):
        Criterion(eps=0.0)


def test_rows_drive_a_search_through_the_criterion() -> None:
    c = Criterion(eps=0.02, relative=True)
    s0 = 2e-3

    def rows(xs: list[float]) -> list[Point]:
        return [
            c.point({"sigma": x, "barrier_train_loss": 0.004 * (x / s0), "train_loss_a": 0.2})
            for x in xs
        ]

    r = SigmaSearch().drive(rows)  # ε = 0.02 × 0.2 = 0.004: the crossing is at s0
    assert r.status == RESOLVED and r.lo is not None and r.hi is not None
    assert r.lo < s0 <= r.hi


def test_bad_searches_are_refused() -> None:
    with pytest.raises(ValueError, match="bracket"):
        SigmaSearch(lo=1.0, hi=1e-3)
    with pytest.raises(ValueError, match="resolution"):
        SigmaSearch(resolution=1.0)
    with pytest.raises(ValueError, match="per_round"):
        SigmaSearch(per_round=1)
    with pytest.raises(ValueError, match="integers"):
        TimeSearch(lo=0, hi=10.5)


# ---- t* -----------------------------------------------------------------------------------


def decreasing(t_star: int) -> Callable[[float], float]:
    """B(t) ≥ ε exactly for t < t_star, decreasing in t."""
    return lambda t: EPS * ((1 + t_star) / (1 + t)) ** 1.5 * (1.0001 if t < t_star else 0.9999)


@pytest.mark.parametrize("t_star", [1, 7, 100, 699, 2400])
def test_time_search_finds_the_crossing_step(t_star: int) -> None:
    search = TimeSearch.for_steps(3000, eps=EPS)
    r = search.drive(measure(decreasing(t_star)))
    assert r.status == RESOLVED and r.over == "t"
    assert r.lo is not None and r.hi is not None
    assert r.lo < t_star <= r.hi and r.estimate == r.hi
    assert r.hi - r.lo <= 1 or (1 + r.hi) / (1 + r.lo) <= 1.25
    assert r.rounds <= 3
    assert all(x == int(x) and 0 <= x <= 2999 for x in (p.x for p in r.points))


def test_time_search_rounds_and_steps() -> None:
    search = TimeSearch.for_steps(3000, eps=EPS)
    rounds = rounds_of(search, decreasing(699))
    assert rounds[0] == [0.0, 4.0, 24.0, 121.0, 604.0, 2999.0]
    assert [len(r) for r in rounds] == [6, 6, 1]
    exact = TimeSearch.for_steps(3000, eps=EPS, resolution=1.0001).drive(measure(decreasing(699)))
    assert (exact.lo, exact.hi, exact.status) == (698.0, 699.0, RESOLVED)  # to one step
    assert exact.rounds <= 6


def test_time_search_reports_the_last_downward_crossing_of_a_noisy_barrier() -> None:
    base = decreasing(100)

    def noisy(t: float) -> float:  # an unstable blip at a later step, and a stable dip before
        if 300 <= t <= 320:
            return 1.0
        if 20 <= t <= 30:
            return 0.0
        return base(t)

    r = TimeSearch.for_steps(3000, eps=EPS, per_round=8).drive(measure(noisy))
    assert r.status == RESOLVED and r.lo is not None and r.hi is not None
    measured = {p.x: p.unstable for p in r.points}
    assert measured[30.0] is False and measured[96.0] is True  # the dip was seen, and passed
    assert measured[304.0] is True and r.lo == 304.0  # the blip was seen: t* comes after it
    assert all(not p.unstable for p in r.points if p.x >= r.hi)
    assert r.crossings == 3


def test_time_search_open_brackets() -> None:
    never = TimeSearch.for_steps(3000, eps=EPS).drive(measure(lambda t: 1.0))
    assert (never.status, never.lo, never.hi, never.estimate) == (NEVER_STABLE, 2999.0, None, None)
    always = TimeSearch.for_steps(3000, eps=EPS).drive(measure(lambda t: 0.0))
    assert (always.status, always.lo, always.hi) == (ALWAYS_STABLE, None, 0.0)
    assert never.rounds == always.rounds == 1


def test_short_runs_measure_every_step() -> None:
    search = TimeSearch.for_steps(5, eps=EPS)
    assert search.propose([]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    r = search.drive(measure(decreasing(3)))
    assert (r.lo, r.hi, r.rounds, r.status) == (2.0, 3.0, 1, RESOLVED)


def test_time_search_resumes_and_ignores_order() -> None:
    b = decreasing(250)
    search = TimeSearch.for_steps(3000, eps=EPS)
    straight = search.drive(measure(b))
    first = search.propose([])
    assert first is not None
    stored = measure(b)(first)
    assert search.drive(measure(b), stored[::-1]) == straight
    assert isinstance(straight, ThresholdResult)


def test_the_search_the_report_and_the_help_read_the_configs_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from butterfly.cli import main
    from butterfly.config import ThresholdConfig
    from butterfly.experiment.threshold import DEFAULT_EPS, DEFAULT_METRIC, grid_sigma_star
    from butterfly.report.figures import STABILITY_EPS

    cfg = ThresholdConfig()
    assert STABILITY_EPS == DEFAULT_EPS == cfg.eps and cfg.metric == DEFAULT_METRIC
    with pytest.raises(SystemExit):
        main(["threshold", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in ("eps", "metric", "resolution", "over"):
        assert f"(default {getattr(cfg, name)})" in help_text, name
    # the report's σ* of a grid is the search's own crossing rule
    grid = [(1e-4, 0.01), (1e-3, 0.02), (1e-2, cfg.eps + 0.01), (1e-1, 0.01)]
    assert grid_sigma_star(grid) == pytest.approx((1e-3 * 1e-2) ** 0.5)
    assert grid_sigma_star([(1e-4, 1.0), (1e-3, 1.0)]) is None  # unstable already at the start
    assert grid_sigma_star([(1e-4, 0.0), (1e-3, 0.0)]) is None  # stable throughout
    # a σ whose children all diverged (no barrier) counts as unstable, as in the search
    assert grid_sigma_star([(1e-4, 0.0), (1e-3, float("nan"))]) == pytest.approx(10**-3.5)
