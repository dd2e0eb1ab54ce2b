"""The ``butterfly`` command line, thin over the Python API.

    butterfly run [CONFIG.yaml] [--set key=value ...] [--out DIR] [--workers N] [--quiet]
                  [--executor local|ray] [--address ADDR] [--force-new] [--scale cpu|full]
    butterfly threshold [CONFIG.yaml] [--over sigma|t] [--eps E] [--metric M] [--sigma S]
    butterfly config [CONFIG.yaml] [--set key=value ...] [--scale cpu|full]
    butterfly presets [NAME [--show]]
    butterfly report RUN_DIR [RUN_DIR ...] [--out PAGE.html]
    butterfly status RUN_DIR
    butterfly repair RUN_DIR
    butterfly compare A.safetensors B.safetensors [--json] [--data NAME] [--model PATH]
                      [--no-align]
    butterfly --version

Exit codes: 0 success, 1 a failed run (including a determinism failure), 2 a bad config or
command line, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); finished work is kept in
both. Errors print one sentence; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from butterfly.config import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from butterfly.config import RunConfig
    from butterfly.sweep.session import Execution

EXIT_FAILED = 1
EXIT_USAGE = 2


EXAMPLES = {
    "run": """examples:
  butterfly run                                    the default sweep (MNIST-1D), into runs/default
  butterfly run table1-warmup10x                   a preset at cpu scale (butterfly presets)
  butterfly run table1-standard --scale full       the paper's setting (CIFAR-10 on a GPU)
  butterfly run my.yaml --set recipe.lr=0.05 --set 'seeds=[0,1]' --out runs/lr005
  butterfly run my.yaml --executor ray --address 10.0.0.5:6379""",
    "threshold": """examples:
  butterfly threshold                              σ*(t) of the default recipe, for every t
  butterfly threshold table1-warmup10x --eps 0.02  another recipe, another ε
  butterfly threshold --over t --sigma 1e-3        t*(σ): from when on is σ = 1e-3 harmless?""",
    "config": """examples:
  butterfly config                                 every key of the default sweep, as YAML
  butterfly config table1-adamw --scale full       a preset's resolved config
  butterfly config --set recipe.lr=0.05 > my.yaml  then edit my.yaml and: butterfly run my.yaml""",
    "presets": """examples:
  butterfly presets                                the list, with runtimes and data
  butterfly presets table1-standard --show > my.yaml   a preset as an editable file""",
    "report": """examples:
  butterfly report runs/default                    runs/default/report.html and figures/
  butterfly report runs/table1-* --out table1.html the runs side by side, with their differences""",
    "status": """examples:
  butterfly status runs/default""",
    "repair": """examples:
  butterfly repair runs/default                    after an error naming a damaged results.db""",
    "compare": """examples:
  butterfly compare runs/default/checkpoints/seed0/t0000000/original.safetensors \\
                    runs/default/checkpoints/seed0/t0000000/batch-s0.01-f1-d0.safetensors""",
}


def _parser() -> argparse.ArgumentParser:
    from butterfly import __version__
    from butterfly.config import ThresholdConfig, default_of

    p = argparse.ArgumentParser(
        prog="butterfly",
        description="Spawn-and-perturb experiments: how far do identically trained networks "
        "diverge after a tiny perturbation at step t?",
        epilog="commands: run, threshold, config, presets, report, status, repair, compare; "
        "`butterfly COMMAND --help` shows each one's options and examples",
    )
    p.add_argument("--version", action="version", version=f"butterfly {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help, epilog=EXAMPLES.get(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        c.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        return c

    def config_args(c: argparse.ArgumentParser, default_scale: str = "cpu") -> None:
        c.add_argument("config", nargs="?", help="YAML file or preset name (default: the "
                       "default sweep)")  # fmt: skip
        c.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config value, e.g. --set recipe.lr=0.05 --set 'seeds=[0,1]'",
        )  # fmt: skip
        c.add_argument("--scale", default=default_scale, choices=["cpu", "full"],
                       help="for a preset: cpu (minutes here) or full (the paper's setting)")

    r = command("run", "run (or resume) a sweep; no CONFIG = the default sweep")
    config_args(r)
    r.add_argument("--out", default=None, help="run folder (default: runs/<name>)")
    r.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    r.add_argument("--quiet", action="store_true", help="print only the final table")
    r.add_argument(
        "--executor", choices=["local", "ray", "slurm"], default="local",
        help="local worker processes (default), Ray tasks, or SLURM array tasks (runtime.slurm)",
    )  # fmt: skip
    r.add_argument("--detach", action="store_true",
                   help="slurm: submit and exit; the same command later collects what finished "
                   "and submits what is missing")  # fmt: skip
    r.add_argument("--address", default=None, help="Ray cluster address (default: start one)")
    r.add_argument(
        "--force-new", action="store_true",
        help="if --out holds a run with another config, start a fresh folder OUT-N instead",
    )  # fmt: skip
    r.add_argument("--dry-run", action="store_true",
                   help="print the plan and a projected wall time from a few timed steps; "
                   "write and train nothing")  # fmt: skip
    th = command("threshold", "find the edge of stability: σ*(t), the smallest σ whose barrier "
                 "reaches ε (or, --over t, t*(σ)), by adaptive rounds of populations")  # fmt: skip
    config_args(th)
    search = ThresholdConfig.model_fields  # the defaults shown are the config's own

    def default(name: str) -> str:
        return f"{search[name].description} (default {default_of(ThresholdConfig, name)})"

    th.add_argument("--over", choices=["sigma", "t"], default=None, help=default("over"))
    th.add_argument("--metric", default=None, help=default("metric"))
    th.add_argument("--eps", type=float, default=None, help=default("eps"))
    th.add_argument("--relative", action="store_true", help=search["relative"].description)
    th.add_argument("--sigma", type=float, default=None, help=search["sigma"].description)
    th.add_argument("--resolution", type=float, default=None, help=default("resolution"))
    th.add_argument("--out", default=None, help="run folder (default: runs/<name>-threshold)")
    th.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    th.add_argument("--quiet", action="store_true", help="print only the results")
    th.add_argument("--executor", choices=["local", "ray", "slurm"], default="local")
    th.add_argument("--address", default=None, help="Ray cluster address")
    cf = command("config", "print the resolved config (every default included) as YAML")
    config_args(cf)
    pr = command("presets", "list the ready-to-run presets of the paper's experiments")
    pr.add_argument("name", nargs="?", help="one preset (with --show: print it as YAML)")
    pr.add_argument("--show", action="store_true", help="print the preset as an editable file")
    rp = command("report", "figures and report.html for one or more run folders")
    rp.add_argument("run_dirs", nargs="+", help="run folders (several: compared side by side)")
    rp.add_argument("--out", default=None, help="page to write (default RUN_DIR/report.html)")
    st = command("status", "summarise a run folder: units done, running, failed")
    st.add_argument("run_dir", help="a run folder")
    rr = command("repair", "rebuild a damaged results.db from what can be read and the "
                 "checkpoints")  # fmt: skip
    rr.add_argument("run_dir", help="a run folder")
    c = command("compare", "every divergence measure between two checkpoints")
    c.add_argument("a", help="checkpoint of the first network (.safetensors)")
    c.add_argument("b", help="checkpoint of the second network")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--data", default=None, help="data set to evaluate on (default: A's own, if "
                   "it is built in; a loader of your own by import path, if you trust it)")
    c.add_argument("--model", default=None, metavar="PACKAGE.MODULE:MAKE",
                   help="the model of checkpoints made from your own code (a checkpoint is "
                   "data: butterfly never imports what its metadata names)")
    c.add_argument("--no-align", action="store_true", help="skip weight and activation matching")
    return p


def check_overrides(overrides: list[str], config: str | None) -> None:
    """``--set recipe.steps 300`` (a space for the ``=``) reads 300 as the config file: say so."""
    for item in overrides:
        if "=" not in item:
            hint = f" (did you mean --set {item}={config}?)" if config is not None else ""
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'{hint}")


def cmd_run(args: argparse.Namespace) -> int:
    from butterfly.config import load_config

    check_overrides(args.overrides, args.config)
    cfg = load_config(args.config, args.overrides, args.scale)
    execution = execution_of(args)
    if args.dry_run:
        return dry_run(cfg, execution)
    from butterfly.report import build_report, format_table  # matplotlib: after the checks
    from butterfly.report.summary import finetune_table
    from butterfly.sweep.pipelines import run_pipeline
    from butterfly.sweep.rundir import CSV, STORE
    from butterfly.sweep.store import pipeline_runs

    out = Path(args.out) if args.out else Path("runs") / cfg.name
    outcome = run_pipeline(cfg, out, execution)
    out = outcome.run_dir
    df = outcome.results
    page = build_report([out])
    if cfg.threshold is not None:
        print_thresholds(out)
    elif "pretrain_steps" in df.columns:
        zero = next((s.label for s in pipeline_runs(out) or [] if s.steps == 0), None)
        print("mean train-loss barrier by pre-training steps"
              + (f" (0 = {zero})" if zero else "") + ", kind, t/T:")  # fmt: skip
        print(finetune_table(df).to_string(float_format=lambda v: f"{v:.4g}"))
    else:
        print(format_table(df))
    print()
    where = f"{STORE} of each from-step* folder" if "pretrain_steps" in df else STORE
    print(
        f"{len(df)} rows -> {out} ({where}, table results), {out / CSV}; "
        f"report {page} (figures in {out / 'figures'})"
    )
    print(
        f"wall {outcome.wall_s:.1f} s; {outcome.units_run} units run, {outcome.units_skipped} "
        f"resumed; {outcome.steps} member-steps executed (minimum for this grid: "
        f"{outcome.minimum_steps})"
    )
    if outcome.units_pending:
        print(f"{outcome.units_pending} units are still with SLURM: run the same command again "
              f"to collect them (butterfly status {out} shows where they are)")  # fmt: skip
        if df.empty:
            return 0
    return _control_verdict(df)


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from butterfly.comparison import compare_checkpoints
    from butterfly.config import EvalConfig, build_config

    data = None
    if args.data:
        data = build_config({"data": {"name": args.data}}).data
    ev = None
    if args.no_align:
        ev = EvalConfig(weight_matching=False, activation_matching=False)
    result = compare_checkpoints(args.a, args.b, data, ev, model=args.model)
    for w in result.get("warnings", []):
        print(f"butterfly: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    width = max(len(k) for k in result)
    for k, v in result.items():
        if k == "warnings":
            continue
        text = f"{v:.6g}" if isinstance(v, float) else str(v)
        print(f"{k:<{width}s}  {text}")
    return 0


def execution_of(args: argparse.Namespace) -> Execution:
    """How the command runs (never what it computes), from its options."""
    from butterfly.sweep.session import Execution

    return Execution(workers=args.workers, quiet=args.quiet, executor=args.executor,
                     address=args.address, force_new=getattr(args, "force_new", False),
                     detach=getattr(args, "detach", False))  # fmt: skip


PREVIEW_ROWS = 2048  # examples of each split a dry run reads from a file-based data set


def dry_run(cfg: RunConfig, execution: Execution) -> int:
    from butterfly.experiment.resolve import resolve
    from butterfly.sweep.estimate import project, the_plan
    from butterfly.sweep.session import resolve_workers

    if cfg.pretrain is not None or cfg.threshold is not None:
        raise ConfigError("--dry-run projects plain sweeps; this config is a pipeline "
                          "(pretrain or threshold): project its sweeps one by one")  # fmt: skip
    resolved = resolve(cfg, preview=PREVIEW_ROWS)  # a plan reads at most a prefix of the data
    for line in resolved.notes:
        print(line)
    for w in resolved.warnings:
        print(f"note: {w}")
    print(the_plan(resolved), flush=True)  # the plan first; then a few steps are timed
    projection = project(resolved, resolve_workers(resolved, execution.workers))
    print("\n".join(projection.timing_lines()))
    if resolved.census:
        print(resolved.census)
    return 0


def print_thresholds(run_dir: Path) -> None:
    """The threshold table of a search's folder (of each sweep, for a fine-tuning folder)."""
    from butterfly.sweep.pipelines.threshold import threshold_table
    from butterfly.sweep.rundir import store_path
    from butterfly.sweep.store import Store, pipeline_runs

    subs = pipeline_runs(run_dir)
    for label, folder in ([("", run_dir)] if subs is None else
                          [(f"{sub.label}: ", sub.folder) for sub in subs]):  # fmt: skip
        with Store(store_path(folder)) as st:
            table = st.thresholds()
        print(label + threshold_table(table))


def cmd_threshold(args: argparse.Namespace) -> int:
    from butterfly.config import load_raw
    from butterfly.report import build_report
    from butterfly.sweep.pipelines import run_pipeline
    from butterfly.sweep.pipelines.threshold import search_config

    check_overrides(args.overrides, args.config)
    options = {"over": args.over, "metric": args.metric, "eps": args.eps, "sigma": args.sigma,
               "resolution": args.resolution, "relative": True if args.relative else None}  # fmt: skip
    cfg, folder = search_config(load_raw(args.config, args.scale), options, args.overrides)
    execution = execution_of(args)
    outcome = run_pipeline(cfg, Path(args.out) if args.out else Path("runs") / folder, execution)
    page = build_report([outcome.run_dir])
    print_thresholds(outcome.run_dir)
    print(f"\n{len(outcome.results)} rows, {outcome.units_run} populations run "
          f"({outcome.units_skipped} resumed), {outcome.steps} member-steps, wall "
          f"{outcome.wall_s:.1f} s -> {outcome.run_dir}; report {page}")  # fmt: skip
    return _control_verdict(outcome.results)


def _control_verdict(df: pd.DataFrame) -> int:
    from butterfly.experiment.verdict import verdict

    exact, text = verdict(df)
    print(text, file=sys.stdout if exact else sys.stderr)
    return 0 if exact else EXIT_FAILED


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from butterfly.config import load_config

    check_overrides(args.overrides, args.config)
    cfg = load_config(args.config, args.overrides, args.scale)
    print(f"# resolved config; run it with: butterfly run FILE (butterfly {version()})")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def version() -> str:
    from butterfly import __version__

    return __version__


def cmd_presets(args: argparse.Namespace) -> int:
    import yaml

    from butterfly.config import list_presets, read_document, resolve_path, unknown_preset

    if args.name:
        path = resolve_path(args.name)
        if not path.is_file():
            raise unknown_preset(args.name)
        doc = read_document(path)
        if args.show:
            print(f"# preset {path.stem} (extends resolved); edit and run: butterfly run FILE "
                  "[--scale cpu|full]")  # fmt: skip
            print(yaml.safe_dump(doc, sort_keys=False, width=100), end="")
            return 0
        presets = [(path.stem, doc)]
    else:
        if args.show:
            raise ConfigError("--show needs a preset name: butterfly presets NAME --show")
        presets = list_presets()
    for name, doc in presets:
        print(f"{name}")
        print(f"    {doc.get('description', '')}")
        for scale in ("cpu", "full"):
            if scale in doc:
                d = doc[scale]
                print(
                    f"    {scale:4s}: {d.get('expected_runtime', '?')}; data: {d.get('data', '?')}"
                )
    print("\nrun one with: butterfly run NAME [--scale cpu|full]; copy one out with: "
          "butterfly presets NAME --show > my.yaml")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from butterfly.report import build_report

    page = build_report([Path(r) for r in args.run_dirs], Path(args.out) if args.out else None)
    print(f"report: {page}")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from butterfly.sweep.repair import repair

    text, ok = repair(Path(args.run_dir))
    print(text)
    return 0 if ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from butterfly.sweep.status import run_status

    text, ok = run_status(Path(args.run_dir))
    print(text)
    return 0 if ok else EXIT_FAILED


def describe(err: BaseException) -> str:
    """One sentence for an error a user can fix."""
    import errno

    if isinstance(err, PermissionError):
        where = err.filename or "the output folder"
        return f"cannot write to {where} (permission denied); choose another --out"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = err.filename or "the run folder"
        return f"out of disk space writing {where}; free some space or choose another --out"
    if isinstance(err, OSError) and err.errno == errno.EROFS:
        where = err.filename or "the run folder"
        return f"cannot write to {where}: the file system is read-only; choose another --out"
    if isinstance(err, sqlite3.OperationalError) and "readonly" in str(err):
        return "cannot write to the run's results.db: it is read-only; choose another --out"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: finished work is kept, the run folder is unlocked."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _dispatch(args, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


COMMANDS = {
    "run": cmd_run,
    "threshold": cmd_threshold,
    "config": cmd_config,
    "presets": cmd_presets,
    "report": cmd_report,
    "status": cmd_status,
    "repair": cmd_repair,
    "compare": cmd_compare,
}


def _dispatch(args: argparse.Namespace, debug: bool) -> int:
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        if debug:
            raise
        print(f"butterfly: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        runs = args.command in ("run", "threshold") and not getattr(args, "dry_run", False)
        then = ("finished units are saved, run the same command to resume" if runs
                else "nothing was written")  # fmt: skip
        print(f"butterfly: {how}; {then}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
    except Exception as err:
        if debug:
            for text in getattr(err, "tracebacks", []):  # a failed unit: where it failed
                print(f"butterfly: failed in {text}", file=sys.stderr)
            raise
        print(f"butterfly: error: {describe(err)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
