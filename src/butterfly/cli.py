"""The ``butterfly`` command line, thin over the Python API.

    butterfly run [CONFIG.yaml] [--set key=value ...] [--out DIR] [--workers N] [--quiet]
                  [--executor local|ray] [--address ADDR] [--force-new] [--scale cpu|full]
    butterfly threshold [CONFIG.yaml] [--over sigma|t] [--eps E] [--metric M] [--sigma S]
    butterfly config [CONFIG.yaml] [--set key=value ...] [--scale cpu|full]
    butterfly presets [NAME [--show]]
    butterfly report RUN_DIR [RUN_DIR ...] [--out PAGE.html]
    butterfly status RUN_DIR
    butterfly repair RUN_DIR
    butterfly compare A.safetensors B.safetensors [--json] [--data NAME] [--no-align]
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

from butterfly.config import ConfigError

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
        "--executor", choices=["local", "ray"], default="local",
        help="local worker processes (default) or Ray tasks",
    )  # fmt: skip
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
    th.add_argument("--over", choices=["sigma", "t"], default=None,
                    help="search σ*(t) for every t (default) or t*(σ) for one σ")
    th.add_argument("--metric", default=None, help="the result column (default "
                    "barrier_train_loss)")  # fmt: skip
    th.add_argument("--eps", type=float, default=None, help="ε (default 0.01)")
    th.add_argument("--relative", action="store_true",
                    help="ε relative to the original's final train loss")
    th.add_argument("--sigma", type=float, default=None, help="--over t: the size σ")
    th.add_argument("--resolution", type=float, default=None,
                    help="stop when the bracket is this narrow (default 1.25)")
    th.add_argument("--out", default=None, help="run folder (default: runs/<name>-threshold)")
    th.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    th.add_argument("--quiet", action="store_true", help="print only the results")
    th.add_argument("--executor", choices=["local", "ray"], default="local")
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
    c.add_argument("--data", default=None, help="data set to evaluate on (default: A's own)")
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
    from butterfly.report import build_report, format_table
    from butterfly.report.summary import finetune_table
    from butterfly.sweep.pipelines import run_pipeline
    from butterfly.sweep.store import pipeline_runs

    check_overrides(args.overrides, args.config)
    cfg = load_config(args.config, args.overrides, args.scale)
    if args.workers is not None and args.workers < 0:
        raise ConfigError("--workers must be >= 0 (0 = one per core)")
    if args.dry_run:
        return dry_run(cfg, args.workers)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    outcome = run_pipeline(
        cfg, out, workers=args.workers, quiet=args.quiet, executor=args.executor,
        address=args.address, force_new=args.force_new,
    )  # fmt: skip
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
    where = "results.db of each from-step* folder" if "pretrain_steps" in df else "results.db"
    print(
        f"{len(df)} rows -> {out} ({where}, table results), {out / 'results.csv'}; "
        f"report {page} (figures in {out / 'figures'})"
    )
    print(
        f"wall {outcome.wall_s:.1f} s; {outcome.units_run} units run, {outcome.units_skipped} "
        f"resumed; {outcome.steps} member-steps executed (minimum for this grid: "
        f"{outcome.minimum_steps})"
    )
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
    result = compare_checkpoints(args.a, args.b, data, ev)
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


def dry_run(cfg: object, workers: int | None) -> int:
    from butterfly.sweep.estimate import project
    from butterfly.sweep.runner import preflight, resolve_workers

    if cfg.pretrain is not None or cfg.threshold is not None:  # type: ignore[attr-defined]
        raise ConfigError("--dry-run projects plain sweeps; this config is a pipeline "
                          "(pretrain or threshold): project its sweeps one by one")  # fmt: skip
    for w in preflight(cfg):  # type: ignore[arg-type]
        print(f"note: {w}")
    projection = project(cfg, resolve_workers(cfg, workers))  # type: ignore[arg-type]
    print("\n".join(projection.lines()))
    return 0


def print_thresholds(run_dir: Path) -> None:
    """The threshold table of a search's folder (of each sweep, for a fine-tuning folder)."""
    from butterfly.sweep.pipelines.threshold import threshold_table
    from butterfly.sweep.store import Store, pipeline_runs

    subs = pipeline_runs(run_dir)
    for label, folder in ([("", run_dir)] if subs is None else
                          [(f"{sub.label}: ", sub.folder) for sub in subs]):  # fmt: skip
        with Store(folder / "results.db") as st:
            table = st.thresholds()
        print(label + threshold_table(table))


def cmd_threshold(args: argparse.Namespace) -> int:
    from butterfly.config import build_config, deep_merge, load_raw
    from butterfly.report import build_report
    from butterfly.sweep.pipelines import run_pipeline
    from butterfly.sweep.pipelines.threshold import LEAN_EVAL

    check_overrides(args.overrides, args.config)
    raw = load_raw(args.config, args.scale)
    named = "name" in raw
    raw = deep_merge({"eval": LEAN_EVAL, "threshold": {}}, raw)
    options = {"over": args.over, "metric": args.metric, "eps": args.eps, "sigma": args.sigma,
               "resolution": args.resolution, "relative": True if args.relative else None}  # fmt: skip
    raw["threshold"] = {**raw["threshold"], **{k: v for k, v in options.items() if v is not None}}
    if not named:
        raw["name"] = "threshold"
    cfg = build_config(raw, args.overrides)
    if args.workers is not None and args.workers < 0:
        raise ConfigError("--workers must be >= 0 (0 = one per core)")
    out = Path(args.out) if args.out else Path("runs") / (cfg.name if not named else
                                                          f"{cfg.name}-threshold")  # fmt: skip
    outcome = run_pipeline(cfg, out, workers=args.workers, quiet=args.quiet,
                           executor=args.executor, address=args.address)  # fmt: skip
    page = build_report([outcome.run_dir])
    print_thresholds(outcome.run_dir)
    print(f"\n{len(outcome.results)} rows, {outcome.units_run} populations run "
          f"({outcome.units_skipped} resumed), {outcome.steps} member-steps, wall "
          f"{outcome.wall_s:.1f} s -> {outcome.run_dir}; report {page}")  # fmt: skip
    return _control_verdict(outcome.results)


def _control_verdict(df: object) -> int:
    from butterfly.experiment import check_control

    problems = check_control(df)  # type: ignore[arg-type]
    n_ctrl = int((df["control"] == 1).sum())  # type: ignore[index]
    if problems:
        print(f"DETERMINISM FAILURE: the sigma = 0 control differs from the original in "
              f"{len(problems)} of {n_ctrl} populations:", file=sys.stderr)  # fmt: skip
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_FAILED
    print(f"determinism check: all {n_ctrl} sigma = 0 controls have l2 = 0.0 and barrier = 0.0 "
          "exactly")  # fmt: skip
    return 0


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


def _dispatch(args: argparse.Namespace, debug: bool) -> int:
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "config":
            return cmd_config(args)
        if args.command == "threshold":
            return cmd_threshold(args)
        if args.command == "presets":
            return cmd_presets(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "repair":
            return cmd_repair(args)
    except ConfigError as err:
        if debug:
            raise
        print(f"butterfly: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(
            f"butterfly: {how}; finished units are saved, run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
    except Exception as err:
        if debug:
            raise
        print(f"butterfly: error: {describe(err)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
