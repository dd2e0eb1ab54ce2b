"""``report.html``: one self-contained page per run (or runs): figures embedded as data URIs,
config, environment, the determinism check, a sortable results table and timings. It loads
nothing from the network and opens from disk.
"""

from __future__ import annotations

import base64
import html
import json
import numbers
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from butterfly.atomic import write_atomic
from butterfly.experiment.rows import PRETRAIN_STEPS, children
from butterfly.experiment.verdict import verdict
from butterfly.report.figures import (
    FigureSpec,
    Palette,
    RunData,
    all_figures,
    compared_figures,
    finetune_figures,
)
from butterfly.report.summary import (
    PRETRAIN_LABEL,
    config_diff,
    finding,
    finetune_table,
    fmt_number,
    fmt_t,
    hardware_noise_table,
    identity_table,
    pm_table,
    pretrain_labels,
    summary_table,
    table1,
    table3,
    table3_cells,
)
from butterfly.safepath import inside
from butterfly.sweep.rundir import PAGE, check_no_links, figures_dir, store_path
from butterfly.sweep.store import Store, pipeline_runs

TABLE3_CSV = "table3.csv"  # beside the page of a fine-tuning folder

TABLE_COLUMNS = [
    "seed", "kind", "t", "t_frac", "sigma", "fraction", "control", "noise_l2", "l2",
    "barrier_train_loss", "barrier_test_error", "barrier_train_loss_wm", "fixed_point_fraction_wm",
    "barrier_train_loss_am", "fixed_point_fraction_am", "cka", "test_acc_a", "test_acc_b",
    "ensemble_test_acc", "diverged",
]  # fmt: skip

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
figure{margin:18px 0;background:#fff;border:1px solid #e3e3e3;padding:10px;border-radius:4px}
figure img{max-width:100%}figcaption{color:#444;font-size:.9em}
table{border-collapse:collapse;font-size:.82em;background:#fff}
th,td{border:1px solid #e0e0e0;padding:3px 7px;text-align:right}th{background:#f0f0f0;cursor:pointer;position:sticky;top:0}
td.s{text-align:left}.ok{color:#0a5c2b;font-weight:600}.bad{color:#a00000;font-weight:700}
.finding{background:#fff;border-left:4px solid #3b528b;padding:8px 12px;font-size:1.05em}
pre{background:#fff;border:1px solid #e3e3e3;padding:10px;overflow:auto;font-size:.85em}
.scroll{max-height:520px;overflow:auto;border:1px solid #e0e0e0}
"""

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){
  th.addEventListener('click', function(){
    var table = th.closest('table'), body = table.tBodies[0];
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _figure_html(spec: FigureSpec, path: Path) -> str:
    return (
        f'<figure data-figure="{html.escape(Path(spec.file).stem)}">{_img(path)}<figcaption>'
        f"<b>{html.escape(spec.title)}.</b> {html.escape(spec.caption)}</figcaption></figure>"
    )


def _sort_key(v: object) -> str:
    """The raw value a sortable cell sorts by (full precision; empty when missing)."""
    text = fmt_number(v)
    if text == "–":
        return ""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        return str(v)
    return str(int(v)) if isinstance(v, numbers.Integral) else repr(float(v))


def _table(df: pd.DataFrame, sortable: bool = False, cls: str = "") -> str:
    """An HTML table; every cell through ``fmt_number`` (the page's one number format)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for v in rec:
            num = isinstance(v, numbers.Number) and not isinstance(v, (bool, np.bool_))
            cells.append(
                f'<td class="{"" if num else "s"}" data-v="{html.escape(_sort_key(v))}">'
                f"{html.escape(fmt_number(v))}</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    klass = " ".join(x for x in ("sortable" if sortable else "", cls) if x)
    return (
        f'<table class="{klass}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _control_check(df: pd.DataFrame) -> str:
    exact, text = verdict(df)
    head, *items = text.splitlines()
    listed = "".join(f"<li>{html.escape(p.strip())}</li>" for p in items)
    return (f'<p class="{"ok" if exact else "bad"}">{html.escape(head)}</p>'
            + (f"<ul>{listed}</ul>" if listed else ""))  # fmt: skip


def _pivot_html(t: pd.DataFrame, row_label: Callable[[tuple], str], first: str, cls: str) -> str:
    """A (rows x sigma) table of means as HTML: σ in the column heads, one label column."""
    t = t.copy()
    t.columns = [
        f"σ = {fmt_number(float(s))}" if float(s) else "σ = 0 (spawned)" for s in t.columns
    ]
    labels = [row_label(i if isinstance(i, tuple) else (i,)) for i in t.index]
    t.index = pd.Index(labels, name=first)
    return _table(t.reset_index(), cls=cls)


def _summary(df: pd.DataFrame) -> str:
    parts = []
    t = summary_table(df, "barrier_train_loss")
    if not t.empty:
        parts.append(
            "<h2>Mean train-loss barrier over seeds</h2><p>Rows: kind and perturbation time; "
            "columns: σ (spawned children at σ = 0). Mean over seeds of each seed's mean over "
            "directions; children that perturb the largest fraction of weights only.</p>"
            + _pivot_html(t, lambda i: f"{i[0]}, t = {fmt_t(i[1])}", "kind, t", "summary")
        )
    if children(df)["fraction"].nunique() > 1:
        t = summary_table(df, "barrier_train_loss", by_fraction=True)
        parts.append(
            "<h2>Mean train-loss barrier by fraction of weights perturbed</h2>"
            + _pivot_html(
                t,
                lambda i: f"{i[0]}, fraction {fmt_number(i[1])}, t = {fmt_t(i[2])}",
                "kind, fraction, t",
                "summary-fraction",
            )
        )
    noise = hardware_noise_table(df)
    if not noise.empty:
        shown = noise.reset_index()
        shown.insert(0, "t", shown.pop("t_frac").map(fmt_t))
        parts.append(
            "<h2>Hardware noise: the twin beside the smallest perturbation (appendix C.2)</h2>"
            "<p>The twin is the original trained again from t on the same batches by another "
            "code path (an autograd pass per member instead of the population's batched or "
            "vectorised one): its distance and barrier to the original are what rounding alone "
            "grows into by T. Beside them, the smallest perturbation of each kind. Means over "
            "seeds.</p>" + _table(shown, cls="hardware-noise")
        )
    ident = identity_table(df)
    if not ident.empty:
        total, same = int(ident["children"].sum()), int(ident["identity"].sum())
        shown = ident.reset_index()
        shown["t"] = shown.pop("t_frac").map(fmt_t)
        shown = shown[["kind", "t", "children", "identity", "fixed_points", "barrier", "barrier_wm"]]
        parts.append(
            "<h2>Weight matching: how often it finds the identity (Appendix C.5)</h2>"
            f"<p>Weight matching left every unit in place for {same} of {total} perturbed "
            "children (the paper finds the identity for its transformers, and a weak link "
            "between fixed points and barriers for its ResNets). fixed_points: the mean "
            "fraction of units left in place; barrier, barrier_wm: the mean train-loss "
            "barrier before and after matching.</p>"
            + _table(shown.rename(columns={"fixed_points": "fixed points",
                                           "barrier_wm": "barrier after matching"}),
                     cls="identity")
        )
    return "".join(parts)


def table3_section(starts: dict[int, tuple[str, pd.DataFrame]], page_dir: Path) -> str:
    """Paper Table 3 for a fine-tuning folder (``starts``: pre-training steps -> (label, the
    sweep's training table)), as HTML; the numbers (mean and std over seeds) are also written
    to ``table3.csv`` in ``page_dir``."""
    tab = table3(starts)
    if tab.empty:
        return ""
    write_atomic(inside(page_dir, TABLE3_CSV), tab.to_csv(index=False))
    missing = tab["before_test_loss_mean"].isna() & (tab["seeds"] > 0)
    note = ""
    if missing.any():
        note = (" – before fine-tuning: that sweep has no population perturbed at t = 0, so its "
                "network was not evaluated before its first step.")  # fmt: skip
    return (
        "<h2>The original before and after fine-tuning (Table 3)</h2><p>Test accuracy and test "
        "cross-entropy of the original network of each pre-training start point: before "
        "fine-tuning (at step 0 of the population perturbed at t = 0: the pre-trained network "
        "with its freshly drawn head, the paper's zero-shot evaluation) and at the end of "
        "fine-tuning (step T of the earliest population); mean ± std over seeds (the mean alone "
        f"for one seed).{html.escape(note)} Also in {TABLE3_CSV}.</p>"
        + _table(table3_cells(tab), cls="table3")
    )


def read_run(run_dir: Path) -> dict:
    """Everything the report needs from one run's store."""
    with Store(store_path(Path(run_dir))) as s:
        return {
            "results": s.results(),
            "trajectories": s.trajectories(),
            "proxy": s.permutation_proxy(),
            "training": s.training(),
            "thresholds": s.thresholds(),
            "units": s.units(),
            "config": s.get_meta("config") or {},
            "environment": s.get_meta("environment") or {},
        }


def run_data(run: dict) -> RunData:
    """What a run's figures read, from :func:`read_run`'s tables."""
    return RunData(run["results"], run["trajectories"], run["proxy"], run["thresholds"],
                   run["training"])  # fmt: skip


def _run_section(
    name: str,
    run: dict,
    figures: list[tuple[FigureSpec, Path]],
    heading: bool,
) -> str:
    df, units, env = run["results"], run["units"], run["environment"]
    parts = [f"<h2>Run {html.escape(name)}</h2>"] if heading else []
    parts.append(_control_check(df))
    kids = children(df)
    parts.append(
        f"<p>{len(df)} rows ({len(kids)} perturbed children, "
        f"{int(df['diverged'].sum())} diverged), {len(units)} population units.</p>"
    )
    parts.append(_summary(df))
    parts.extend(_figure_html(spec, path) for spec, path in figures)
    cols = [c for c in TABLE_COLUMNS if c in df.columns]
    parts.append("<h2>Results (click a column to sort)</h2>")
    parts.append(f'<div class="scroll">{_table(df[cols], sortable=True, cls="results")}</div>')
    parts.append("<h2>Timings</h2>")
    if len(units):
        parts.append(
            f"<p>{fmt_number(float(units['wall_s'].sum()))} s of unit time, "
            f"{fmt_number(int(units['steps'].sum()))} member-steps.</p>"
        )
        parts.append(
            _table(
                units[["seed", "t", "population", "steps", "wall_s"]], sortable=True, cls="timings"
            )
        )
    parts.append("<h2>Environment</h2>")
    parts.append(_table(pd.DataFrame({"key": list(env), "value": [str(v) for v in env.values()]})))
    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{html.escape(yaml.safe_dump(run['config'], sort_keys=False))}</pre>")
    return "\n".join(parts)


def _findings(runs: dict[str, dict], finetune: pd.DataFrame | None) -> str:
    """The page's opening: one sentence per run (or for the fine-tuning folder as a whole)."""
    if finetune is not None:
        return f'<p class="finding"><b>Finding.</b> {html.escape(finding(finetune))}</p>'
    if len(runs) == 1:
        (run,) = runs.values()
        return f'<p class="finding"><b>Finding.</b> {html.escape(finding(run["results"]))}</p>'
    items = "".join(
        f"<li><b>{html.escape(n)}:</b> {html.escape(finding(r['results']))}</li>"
        for n, r in runs.items()
    )
    return f'<div class="finding"><b>Findings.</b><ul>{items}</ul></div>'


def _config_differences(runs: dict[str, dict]) -> str:
    diff = config_diff({n: r["config"] for n, r in runs.items()})
    head = "<h2>Config keys that differ between the runs</h2>"
    if diff.empty:
        return head + "<p>None: the runs have the same config.</p>"
    return head + _table(diff, cls="config-diff")


def build_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write the figures (PNG and PDF) and ``report.html``; returns the page's path."""
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("give at least one run folder")
    for r in run_dirs:
        check_no_links(r)
    default = inside(run_dirs[0], PAGE) if len(run_dirs) == 1 else Path(PAGE)
    page = out or default
    fig_dir = figures_dir(page.parent)
    sections = []
    # A fine-tuning run folder stands for its sweeps, one per pre-training checkpoint.
    named: dict[str, Path] = {}
    pretrain_steps: dict[str, int] = {}
    for r in run_dirs:
        subs = pipeline_runs(r)
        if subs is not None:
            for steps, d, label in subs:
                named[label if len(run_dirs) == 1 else f"{r.name}: {label}"] = d
                pretrain_steps[label] = steps
        else:
            named[r.name if r.name else str(r)] = r
    for r in named.values():
        if not store_path(r).is_file():
            raise FileNotFoundError(f"{r} has no results.db: is it a butterfly run folder?")
    runs = {name: read_run(r) for name, r in named.items()}
    finetune = None
    if pretrain_steps and len(run_dirs) == 1:
        frames = [
            runs[n]["results"].assign(**{PRETRAIN_STEPS.name: s, PRETRAIN_LABEL: n})
            for n, s in pretrain_steps.items()
        ]
        finetune = pd.concat(frames, ignore_index=True)
    # One palette for the whole page: the same t (and sigma) has the same colour everywhere.
    palette = Palette.of(
        *(r["results"] for r in runs.values()), *([finetune] if finetune is not None else [])
    )
    sections.append(_findings(runs, finetune))
    if len(runs) > 1:
        sections.append(_config_differences(runs))
    if finetune is not None:
        sections += [_figure_html(spec, path)
                     for spec, path in finetune_figures(finetune, palette, fig_dir)]  # fmt: skip
        table = finetune_table(finetune)
        name = pretrain_labels(finetune)
        label = lambda i: f"{name(i[0])}, {i[1]}, t = {fmt_t(i[2])}"  # noqa: E731
        if not table.empty:
            sections.append(
                "<h2>Mean train-loss barrier by pre-training duration</h2>"
                + _pivot_html(table, label, "pre-training steps, kind, t", "finetune")
            )
        starts = {s: (n, runs[n]["training"]) for n, s in pretrain_steps.items()}
        sections.append(table3_section(starts, page.parent))
        for metric, what in (("barrier_train_loss", "train-loss barrier"), ("l2", "L2 distance")):
            pmt = pm_table(finetune, metric, ["pretrain_steps", "kind", "t_frac"])
            if not pmt.empty:
                body = _pivot_html(pmt, label, "pre-training steps, kind, t", f"pm-{metric}")
                sections.append(f"<h2>Tables 4-5: {what}, mean ± std over seeds</h2>{body}")
    if len(runs) > 1:
        t1 = table1({n: r["results"] for n, r in runs.items()})
        sections.append(
            "<h2>Final performance of the perturbed networks (Table 1)</h2>"
            "<p>Test accuracy and train cross-entropy at T of every perturbed child, mean ± std "
            "over seeds of each seed's mean over its children (all t, σ and kinds).</p>"
            + _table(t1, cls="table1")
        )
        data = {n: run_data(r) for n, r in runs.items()}
        sections += [_figure_html(spec, path)
                     for spec, path in compared_figures(data, palette, fig_dir)]  # fmt: skip
    for i, (name, run) in enumerate(runs.items()):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80] or "run"
        sub = fig_dir if len(runs) == 1 else inside(fig_dir, f"run{i}-{slug}")
        figs = all_figures(run["results"], run["trajectories"], run["proxy"], sub, palette,
                           run["thresholds"], run["training"])  # fmt: skip
        sections.append(_run_section(name, run, figs, heading=len(runs) > 1))
    title = "butterfly report: " + ", ".join(html.escape(r.name) for r in run_dirs)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    meta = json.dumps({"runs": [str(r) for r in run_dirs]})
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title><style>{CSS}</style></head>
<body><main>
<h1>{title}</h1>
<p>Spawn-and-perturb experiment (Altıntaş, Kwok, Raffel, Rolnick, ICML 2025): each child was
perturbed once at step t by σ·ε and trained with the original on identical batches to step T.
Generated {stamp} from the run's results.db.</p>
<script type="application/json" id="runs">{html.escape(meta)}</script>
{"".join(sections)}
</main><script>{SORT_JS}</script></body></html>
"""
    write_atomic(page, doc)  # a full disk leaves no half-written page behind
    return page
