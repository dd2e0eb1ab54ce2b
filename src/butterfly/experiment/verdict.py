"""Verdicts over a results table: the σ = 0 control check every run ends with (DESIGN
contract 2), populations whose original diverged, and the one wording of the determinism
verdict that the command line, ``butterfly status`` and the Python API print."""

from __future__ import annotations

from typing import TYPE_CHECKING

from butterfly.experiment import rows

if TYPE_CHECKING:
    import pandas as pd

# A child's status when the original diverged; the control's says whether it did so bit for bit
# (then the determinism check counts it as exact).
ORIGINAL_DIVERGED = "original diverged"
ORIGINAL_DIVERGED_EXACT = f"{ORIGINAL_DIVERGED} (control bit-identical)"


def check_control(df: pd.DataFrame) -> list[str]:
    """Problems with the sigma = 0 control rows (empty when every control is exactly zero):
    DESIGN contract 2, the determinism check every run ends with. L2 and the train-loss
    barrier must be exactly 0.0; so must the test-error barrier where the model has one (a
    regression has none)."""
    problems = []
    for _, r in rows.controls(df).iterrows():
        if str(r.get("status") or "") == ORIGINAL_DIVERGED_EXACT:
            continue  # the original diverged; its control did so bit for bit
        bad = {c: r[c] for c in ("l2", "barrier_train_loss") if not _exact_zero(r[c])}
        err = r["barrier_test_error"]
        if err is not None and err == err and err != 0.0:
            bad["barrier_test_error"] = err
        if bad or r["diverged"]:
            problems.append(
                f"seed {r['seed']} t={r['t']}: " + ", ".join(f"{k}={v!r}" for k, v in bad.items())
            )
    return problems


def original_diverged(df: pd.DataFrame) -> int:
    """Populations whose original continuation diverged (a result, not a determinism
    failure: report it and lower the learning rate)."""
    if "status" not in df:
        return 0
    status = rows.controls(df)["status"].fillna("").astype(str)
    return int(status.str.startswith(ORIGINAL_DIVERGED).sum())


def _exact_zero(v: object) -> bool:
    return v is not None and v == 0.0


def verdict(df: pd.DataFrame) -> tuple[bool, str]:
    """(every control exact?, the determinism verdict in words): ``determinism check: all N
    sigma = 0 controls have l2 = 0.0 and barrier = 0.0 exactly``, or ``DETERMINISM FAILURE``
    followed by one line per population whose control is not exactly zero."""
    problems = check_control(df) if len(df) else []
    n_ctrl = int((df["control"] == 1).sum()) if len(df) else 0
    if problems:
        lines = [f"DETERMINISM FAILURE: the sigma = 0 control differs from the original in "
                 f"{len(problems)} of {n_ctrl} populations:"] + [f"  {p}" for p in problems]  # fmt: skip
        return False, "\n".join(lines)
    return True, (f"determinism check: all {n_ctrl} sigma = 0 controls have l2 = 0.0 and "
                  "barrier = 0.0 exactly")  # fmt: skip
