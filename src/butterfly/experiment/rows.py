"""The rows the experiment produces: one schema, used by the producer, the store and the report.

A measure computed is a measure stored is a measure plotted. Each table is a tuple of
:class:`Column` s; :func:`make_row` refuses a key that is not a column (so a new measure cannot be
computed and silently dropped), the store creates and upgrades its tables from these tuples, and
the report and its tests read the column names from here.

``when`` says in which rows a column must hold a value (the schema test checks it):

* ``key``: always (it identifies the row; NOT NULL in the store);
* ``always``: every row;
* ``measured``: every row whose networks did not diverge;
* ``weight_matching``, ``activation_matching``, ``cka``, ``ensemble``: measured rows when that
  ``eval`` switch is on;
* ``optional``: only in some runs (documented per column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

When = Literal[
    "key", "always", "measured", "weight_matching", "activation_matching", "cka", "ensemble",
    "optional",
]  # fmt: skip


@dataclass(frozen=True)
class Column:
    name: str
    sql: Literal["INTEGER", "REAL", "TEXT"]
    doc: str
    when: When = "measured"

    @property
    def declaration(self) -> str:
        return f"{self.sql} NOT NULL" if self.when == "key" else self.sql


def _c(name: str, sql: Literal["INTEGER", "REAL", "TEXT"], doc: str, when: When = "measured"):
    return Column(name, sql, doc, when)


# ---- results: one row per child of a population (the control included) ----------------------
RESULTS: tuple[Column, ...] = (
    _c("seed", "INTEGER", "seed: fixes init, batch order and perturbation noise", "key"),
    _c("kind", "TEXT", "batch, gaussian, spawn (sigma = 0, own batch stream) or control", "key"),
    _c("t", "INTEGER", "perturbation step", "key"),
    _c("t_frac", "REAL", "perturbation step as a fraction of T", "key"),
    _c("sigma", "REAL", "perturbation size", "key"),
    _c("fraction", "REAL", "fraction of the masked weights perturbed", "key"),
    _c("direction", "INTEGER", "direction index", "key"),
    _c("control", "INTEGER", "1 for the sigma = 0 control (l2 = barrier = 0.0 exactly)", "key"),
    _c("member", "TEXT", "the member's name in its population", "key"),
    _c("noise_l2", "REAL", "||sigma eps|| actually applied", "always"),
    _c("n_perturbed", "INTEGER", "number of weights perturbed", "always"),
    _c("l2", "REAL", "||theta_T - theta'_T|| at the end of training"),
    _c("barrier_train_loss", "REAL", "Eq. 4 on training cross-entropy"),
    _c("barrier_train_error", "REAL", "Eq. 4 on training 0-1 error"),
    _c("barrier_test_loss", "REAL", "Eq. 4 on test cross-entropy"),
    _c("barrier_test_error", "REAL", "Eq. 4 on test 0-1 error"),
    _c("train_loss_a", "REAL", "train loss of the original at the end"),
    _c("train_loss_b", "REAL", "train loss of the child at the end"),
    _c("test_acc_a", "REAL", "test accuracy of the original"),
    _c("test_acc_b", "REAL", "test accuracy of the child"),
    _c("test_loss_a", "REAL", "test loss of the original"),
    _c("test_loss_b", "REAL", "test loss of the child"),
    _c("l2_init_a", "REAL", "the original's distance from theta_0"),
    _c("l2_init_b", "REAL", "the child's distance from theta_0"),
    _c("barrier_train_loss_wm", "REAL", "train-loss barrier after weight matching", "weight_matching"),
    _c("barrier_test_error_wm", "REAL", "test-error barrier after weight matching", "weight_matching"),
    _c("fixed_point_fraction_wm", "REAL", "units weight matching leaves in place (pooled)", "weight_matching"),
    _c("fixed_points_wm", "TEXT", "the same per permutation (JSON)", "weight_matching"),
    _c("l2_wm", "REAL", "L2 after weight matching", "weight_matching"),
    _c("wm_iterations", "INTEGER", "weight-matching passes", "weight_matching"),
    _c("barrier_train_loss_am", "REAL", "train-loss barrier after activation matching", "activation_matching"),
    _c("barrier_test_error_am", "REAL", "test-error barrier after activation matching", "activation_matching"),
    _c("fixed_point_fraction_am", "REAL", "units activation matching leaves in place", "activation_matching"),
    _c("fixed_points_am", "TEXT", "the same per permutation (JSON)", "activation_matching"),
    _c("l2_am", "REAL", "L2 after activation matching", "activation_matching"),
    _c("cka", "REAL", "angular CKA distance (rad) of the last block's outputs", "cka"),
    _c("test_f1_a", "REAL", "two-class classifiers: the original's test F1 (class 1 positive)",
       "optional"),
    _c("test_f1_b", "REAL", "two-class classifiers: the child's test F1", "optional"),
    _c("test_mcc_a", "REAL", "two-class classifiers: the original's test Matthews correlation",
       "optional"),
    _c("test_mcc_b", "REAL", "two-class classifiers: the child's test Matthews correlation",
       "optional"),
    _c("ensemble_test_acc", "REAL", "test accuracy of the logit-averaged pair", "ensemble"),
    _c("diverged", "INTEGER", "1 if the child's loss or weights became NaN/Inf (or it had no "
       "defined perturbation)", "key"),
    _c("status", "TEXT", "ok; diverged; original diverged; or why the perturbation was "
       "undefined", "always"),
    _c("unit_wall_s", "REAL", "wall time of the population unit", "always"),
    _c("lyapunov_exponent", "REAL", "eval.lyapunov: top Lyapunov exponent (per step) of the "
       "training map from t to T, along the original (Appendix B.4)", "optional"),
    _c("growth_rate", "REAL", "eval.lyapunov: finite-time growth rate of the child's L2 to the "
       "original, fitted to its trajectory (per step)", "optional"),
    _c("round", "INTEGER", "butterfly threshold: the search round that measured this child",
       "optional"),
)  # fmt: skip
# Added by the fine-tuning pipeline when it joins the results of its sweeps (not stored in a
# sweep's own table).
PRETRAIN_STEPS = _c(
    "pretrain_steps", "INTEGER", "pre-training steps of the start point (0 = random init)",
    "optional",
)  # fmt: skip
RESULTS_UNIQUE = ("seed", "t", "member")

# ---- trajectories: every member at log-spaced steps from t to T (Figure 6, workshop Fig. 3) --
TRAJECTORIES: tuple[Column, ...] = (
    _c("seed", "INTEGER", "seed", "key"),
    _c("t", "INTEGER", "perturbation step of the population", "key"),
    _c("member", "TEXT", "member name", "key"),
    _c("kind", "TEXT", "original, control, batch, gaussian or spawn", "key"),
    _c("sigma", "REAL", "perturbation size", "key"),
    _c("step", "INTEGER", "training step", "key"),
    _c("l2_to_original", "REAL", "L2 distance to the original at this step"),
    _c("l2_from_init", "REAL", "L2 distance from theta_0 at this step"),
    _c("barrier_train_loss", "REAL", "train-loss barrier to the original at this step (not for the original itself; eval.trajectory_barriers)", "optional"),
    _c("l2_predicted", "REAL", "eval.lyapunov: the linearised prediction ||σε|| exp(λ (step − t)) of l2_to_original", "optional"),
)  # fmt: skip
TRAJECTORIES_UNIQUE = ("seed", "t", "member", "step")

# ---- permutation proxy: the original permuted at random (workshop Figure 4, left) ------------
PERMUTATION_PROXY: tuple[Column, ...] = (
    _c("seed", "INTEGER", "seed", "key"),
    _c("fixed_fraction", "REAL", "fraction of units the random permutation leaves in place", "key"),
    _c("fixed_point_fraction", "REAL", "fixed points actually obtained (pooled)"),
    _c("l2", "REAL", "L2 to the unpermuted network"),
    _c("barrier_train_loss", "REAL", "train-loss barrier to the unpermuted network"),
    _c("barrier_test_error", "REAL", "test-error barrier to the unpermuted network"),
)  # fmt: skip
PERMUTATION_PROXY_UNIQUE = ("seed", "fixed_fraction")

# ---- training: the original's curve in each population (is the recipe training well?) -------
TRAINING: tuple[Column, ...] = (
    _c("seed", "INTEGER", "seed", "key"),
    _c("t", "INTEGER", "perturbation step of the population", "key"),
    _c("step", "INTEGER", "training step", "key"),
    _c("batch_loss", "REAL", "the original's mean minibatch loss since the previous row (none "
       "at t)", "optional"),
    _c("train_loss", "REAL", "the original's loss on the training set"),
    _c("test_loss", "REAL", "the original's loss on the test set"),
    _c("test_acc", "REAL", "the original's test accuracy (classifiers)", "optional"),
)  # fmt: skip
TRAINING_UNIQUE = ("seed", "t", "step")

# ---- thresholds: the edge of stability found by butterfly threshold --------------------------
THRESHOLDS: tuple[Column, ...] = (
    _c("seed", "INTEGER", "seed", "key"),
    _c("kind", "TEXT", "perturbation kind", "key"),
    _c("over", "TEXT", "sigma: σ*(t) at the perturbation time `at`; t: t*(σ) at the size `at`",
       "key"),
    _c("at", "REAL", "the fixed coordinate: the step t (over sigma) or the size σ (over t)", "key"),
    _c("status", "TEXT", "resolved, max_rounds, above / below (σ* outside the bracket), "
       "never_stable / always_stable (t* outside it)", "always"),
    _c("estimate", "REAL", "σ* (geometric mean of the bracket) or t* (its upper end)", "optional"),
    _c("lo", "REAL", "the bracket's stable end (σ) or last unstable step (t)", "optional"),
    _c("hi", "REAL", "the bracket's unstable end (σ) or first stable step (t)", "optional"),
    _c("rounds", "INTEGER", "rounds measured", "always"),
    _c("points", "INTEGER", "values measured", "always"),
    _c("crossings", "INTEGER", "stable/unstable changes along the measured values (1: monotone)",
       "always"),
    _c("metric", "TEXT", "the result column compared with ε", "always"),
    _c("eps", "REAL", "ε", "always"),
    _c("relative", "INTEGER", "1: ε relative to the original's final train loss", "always"),
)  # fmt: skip
THRESHOLDS_UNIQUE = ("seed", "kind", "over", "at")

TABLES: dict[str, tuple[tuple[Column, ...], tuple[str, ...]]] = {
    "results": (RESULTS, RESULTS_UNIQUE),
    "trajectories": (TRAJECTORIES, TRAJECTORIES_UNIQUE),
    "permutation_proxy": (PERMUTATION_PROXY, PERMUTATION_PROXY_UNIQUE),
    "training": (TRAINING, TRAINING_UNIQUE),
    "thresholds": (THRESHOLDS, THRESHOLDS_UNIQUE),
}


def names(table: str) -> list[str]:
    return [c.name for c in TABLES[table][0]]


def make_row(table: str, **values: Any) -> dict[str, Any]:
    """A row of ``table``: every column, ``None`` where not given; an unknown key is an error."""
    cols = names(table)
    unknown = sorted(set(values) - set(cols))
    if unknown:
        raise KeyError(f"{table} has no column(s) {unknown}: add them to butterfly.experiment.rows")
    return {c: values.get(c) for c in cols}


# ---- which rows are which -----------------------------------------------------------------
PERTURBED_KINDS = ("batch", "gaussian")


def children(df: pd.DataFrame, spawn: bool = False) -> pd.DataFrame:
    """Children to plot and average: perturbed (batch, gaussian) and, with ``spawn``, Frankle et
    al.'s spawned children; never the sigma = 0 control, never a diverged child."""
    kinds = (*PERTURBED_KINDS, "spawn") if spawn else PERTURBED_KINDS
    return df[(df["control"] == 0) & (df["diverged"] == 0) & df["kind"].isin(kinds)]


def spawned(df: pd.DataFrame) -> pd.DataFrame:
    """Children of the spawning baseline that did not diverge."""
    return df[(df["kind"] == "spawn") & (df["diverged"] == 0)]


def controls(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["control"] == 1]
