"""Run a sweep: plan it, execute parents and population units, commit results, check the control.

Executors: in-process (``workers = 1``), a pool of worker processes (default: one per core,
``runtime.threads`` intra-op threads each) or Ray (``executor = "ray"``). Workers return rows;
the driver alone writes the store, committing each finished unit in one transaction before it
waits for the next. A failing unit is recorded and the others go on; the sweep then ends with
an error naming the failures, and running it again retries only what is not finished.
"""

from __future__ import annotations

import ast
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from butterfly.config import STORED, ConfigError, RunConfig
from butterfly.data import DataError, Dataset, load_dataset
from butterfly.data.user import STORED_FILE, recall, save_stored
from butterfly.experiment import check_control, configure_torch
from butterfly.experiment.measure import Comparer, original_diverged
from butterfly.experiment.setup import environment, loss_function, resolve_device, resolve_epochs
from butterfly.imports import ImportPathError, is_local
from butterfly.metrics.evaluate import Bound, LossFn
from butterfly.models import build_model
from butterfly.sweep import rundir
from butterfly.sweep.executors import Executor, check_executor, gpu_count, make_executor
from butterfly.sweep.lock import RunLock
from butterfly.sweep.plan import Unit, minimum_steps, plan
from butterfly.sweep.progress import Progress
from butterfly.sweep.store import Store
from butterfly.sweep.tasks import UnitResult, run_parent, run_unit


class DeterminismError(RuntimeError):
    """The sigma = 0 control diverged from the original: training is not bit-exact."""


@dataclass
class SweepOutcome:
    run_dir: Path
    results: pd.DataFrame
    wall_s: float
    steps: int
    minimum_steps: int
    units_run: int
    units_skipped: int
    control_ok: bool


def resolve_workers(cfg: RunConfig, workers: int | None) -> int:
    """Worker processes: ``workers``, else ``runtime.workers``, else one per GPU with
    ``runtime.gpus``, else one per CPU core (on CUDA without ``gpus``: one process)."""
    n = cfg.runtime.workers if workers is None else workers
    if n > 0:
        return n
    gpus = gpu_count(cfg)
    if gpus:
        return gpus
    if resolve_device(cfg.runtime.device).startswith("cuda"):
        return 1  # one process drives the one GPU; several would only share it
    return os.cpu_count() or 1


def store_data(cfg: RunConfig, run_dir: Path) -> None:
    """Write data given from Python into the run folder once (workers and resumes read it)."""
    data = recall(cfg.data.fingerprint)
    path = run_dir / (cfg.data.path or STORED_FILE)
    if data is not None:
        save_stored(data, path)
    elif not path.is_file():
        raise ConfigError(f"the run's data file {path} is missing: pass the data again from Python")


def unguarded_main() -> bool:
    """Whether the main program is a script whose top level would run again in every spawned
    worker process (no ``if __name__ == "__main__":`` test anywhere in it)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not Path(path).is_file():
        return False
    try:
        tree = ast.parse(Path(path).read_text())
    except (SyntaxError, UnicodeDecodeError, OSError):
        return False
    for node in ast.walk(tree):
        left = getattr(node, "left", None) if isinstance(node, ast.Compare) else None
        if isinstance(left, ast.Name) and left.id == "__name__":
            return False
    return True


def log(msg: str, quiet: bool) -> None:
    """A progress message on stderr (the sweep's and the pipelines' one voice)."""
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


class SweepFailed(RuntimeError):
    """Some units failed; finished units are saved."""


def preflight(cfg: RunConfig, run_dir: Path | None = None) -> list[str]:
    """Checks that need the data set and the model, done before anything is written or
    trained; raises ConfigError (one sentence, exit 2) or returns warnings (measures that
    will be left empty, and why)."""
    try:
        data = load_dataset(cfg.data, cfg.tokenizer_path(), run_dir)
    except DataError as err:
        raise ConfigError(str(err)) from None
    n = len(data.y_train)
    if cfg.recipe.batch_size > n:
        raise ConfigError(
            f"recipe.batch_size = {cfg.recipe.batch_size} exceeds the {n} training examples of "
            f"'{cfg.data.name}'"
        )
    if cfg.eval.lyapunov and cfg.recipe.optimizer != "sgd":
        raise ConfigError(
            f"eval.lyapunov follows the SGD training map; recipe.optimizer = "
            f"{cfg.recipe.optimizer} is not supported (set eval.lyapunov: false)"
        )
    pb = cfg.perturb.batch_size
    if pb is not None and pb > n and "batch" in cfg.perturb.kinds:
        raise ConfigError(
            f"perturb.batch_size = {pb} exceeds the {n} training examples of '{cfg.data.name}'"
        )
    dev = resolve_device(cfg.runtime.device)
    if cfg.runtime.gpus is not None and not dev.startswith("cuda"):
        raise ConfigError(
            f"runtime.gpus = {cfg.runtime.gpus} needs CUDA, but runtime.device = "
            f"{cfg.runtime.device} runs on {dev}"
        )
    if isinstance(cfg.runtime.gpus, int) and ":" in cfg.runtime.device:
        raise ConfigError("runtime.gpus picks each worker's GPU: use runtime.device = cuda")
    if dev.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(dev.split(":")[1]) if ":" in dev else 0
        wanted = max(index + 1, gpu_count(cfg))
        if wanted > count or count == 0:
            raise ConfigError(
                f"runtime.device = {dev} (runtime.gpus = {cfg.runtime.gpus}), but this machine "
                f"has {count} CUDA device"
                f"{'' if count == 1 else 's'} (torch {torch.__version__}); use cpu or auto"
            )
    try:
        loss_fn = loss_function(cfg)
    except ImportPathError as err:
        raise ConfigError(str(err)) from None
    try:
        model = build_model(cfg.model, data.input_shape, data.n_classes, cfg.seeds[0])
    except ValueError as err:  # HFUnavailable, a bad init_from checkpoint, a shape mismatch
        if not cfg.model.builtin or cfg.model.name == "hf" or cfg.model.init_from:
            raise ConfigError(str(err)) from None
        raise ConfigError(
            f"model '{cfg.model.name}' cannot take '{cfg.data.name}' inputs: {err}"
        ) from None
    check_model(model, data, loss_fn, cfg.model.name, causal=cfg.data.causal)
    cmp = Comparer(model, data, cfg.eval, cfg.seeds[0], loss_fn)
    ev = cfg.eval
    warnings = []
    wanted = {
        "alignment": ev.weight_matching or ev.activation_matching or bool(ev.proxy_fractions),
        "cka": ev.cka,
        "ensemble": ev.ensemble,
    }
    names = {"alignment": "weight matching, activation matching and the permutation proxy",
             "cka": "CKA", "ensemble": "the ensemble accuracy"}  # fmt: skip
    for key, why in cmp.skipped.items():
        if wanted.get(key):
            warnings.append(f"{names[key]} will be left empty: {why}")
    return warnings


def check_model(
    model: nn.Module, data: Dataset, loss_fn: LossFn | None, name: str, causal: bool = False
) -> None:
    """What the trainer needs of a model, checked on two training examples. ``causal``: the
    data are a causal language model's token targets (the only integer targets of more than
    one axis that the built-in loss reads, as next-token targets)."""
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            raise ConfigError(
                f"model '{name}' has BatchNorm running statistics ('{mname}'), which training "
                "would update outside the parameters butterfly tracks per member; use LayerNorm "
                "or GroupNorm, or BatchNorm with track_running_stats=False"
            )
    x, y = data.x_train[:2], data.y_train[:2]
    try:
        with torch.no_grad():
            if loss_fn is None:
                out = model(x)
            else:
                loss = loss_fn(Bound(model, dict(model.named_parameters())), (x, y))
    except Exception as err:
        raise ConfigError(
            f"model '{name}' fails on two training examples of shape {tuple(x.shape[1:])}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    if loss_fn is not None:
        if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
            raise ConfigError("recipe.loss must return a scalar tensor (the batch's mean loss)")
        return
    if data.n_classes < 2:
        raise ConfigError(
            f"data '{data.name}' has no class labels (float targets): cross-entropy needs them; "
            "give a loss function (recipe.loss, or loss_fn= in Python)"
        )
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if y.dim() > 1 and not y.is_floating_point() and not causal:
        raise ConfigError(
            f"data '{data.name}' has integer targets of shape {tuple(y.shape[1:])} per example: "
            "the built-in cross-entropy reads one class per example (or next-token targets of "
            "the causal-LM data sets gsm8k and arithmetic); for per-token labels give a loss "
            "function (recipe.loss, or loss_fn= in Python)"
        )
    if causal:  # token targets: next-token scores over a vocabulary at least the tokenizer's
        # (a model may pad its embedding beyond the tokenizer, as OLMo and Pythia do)
        ok = isinstance(out, torch.Tensor) and out.dim() == 3
        if not (ok and shape[:2] == tuple(y.shape) and shape[2] >= data.n_classes):
            raise ConfigError(
                f"model '{name}' outputs {shape} for 2 examples, but next-token cross-entropy on "
                f"'{data.name}' needs {(*y.shape, data.n_classes)} (or a wider vocabulary): a "
                "score per token and vocabulary entry"
            )
        return
    if shape != (2, data.n_classes):
        raise ConfigError(
            f"model '{name}' outputs {shape} for 2 examples, but cross-entropy on "
            f"'{data.name}' needs (2, {data.n_classes}): one score per class"
        )


def must_run_here(cfg: RunConfig) -> list[str]:
    """The config's objects that only this process can find (defined in a notebook, a lambda,
    a nested function): the work then runs in this process."""
    named = (cfg.model.name, cfg.data.name, cfg.recipe.loss)
    return [n for n in named if is_local(n)]


def run_sweep(
    cfg: RunConfig,
    run_dir: str | Path,
    workers: int | None = None,
    quiet: bool = False,
    on_unit: Callable[[UnitResult], None] | None = None,
    executor: str = "local",
    address: str | None = None,
    force_new: bool = False,
    progress: bool | None = None,
) -> SweepOutcome:
    """Run (or resume) the sweep of ``cfg`` in ``run_dir`` and return its results.

    ``force_new``: if ``run_dir`` holds a run with another config, use a fresh ``run_dir-N``.
    ``progress``: draw live progress on stderr (default: only when stderr is a terminal).
    """
    run_dir = Path(run_dir)
    cfg = resolve_epochs(cfg, run_dir)
    if cfg.pretrain is not None or cfg.threshold is not None:
        raise ConfigError(
            "a config with a pretrain or threshold section is a pipeline: run it with "
            "butterfly.sweep.pipelines.run_pipeline (what `butterfly run` does)"
        )
    if force_new and rundir.config_differs(cfg, run_dir):
        run_dir = rundir.fresh_run_dir(run_dir)
        log(f"config differs from the existing run: starting a fresh run in {run_dir}", quiet)
    start = time.perf_counter()
    for w in preflight(cfg, run_dir):
        log(f"note: {w}", quiet)
    check_executor(executor, address)
    local = must_run_here(cfg)
    if local and executor == "ray":
        raise ConfigError(
            f"{', '.join(local)} {'exists' if len(local) == 1 else 'exist'} only in this Python "
            "process, so Ray workers cannot find it: define it in an importable module"
        )
    with RunLock(run_dir):
        rundir.prepare_run_dir(cfg, run_dir)
        if cfg.data.name == STORED:
            store_data(cfg, run_dir)
        configure_torch(cfg.runtime.threads, cfg.runtime.tf32)
        units = plan(cfg)
        n_workers = resolve_workers(cfg, workers)
        if n_workers > 1 and executor == "local" and (local or unguarded_main()):
            verb = "exists" if len(local) == 1 else "exist"
            why = (f"{', '.join(local)} {verb} only in this process" if local else
                   "the script has no `if __name__ == \"__main__\":` guard, which worker "
                   "processes need")  # fmt: skip
            log(f"note: running in this process, not {n_workers} workers: {why}", quiet)
            n_workers = 1
        store = Store(run_dir / rundir.STORE)
        try:
            store.set_meta("config", cfg.to_dict())
            store.set_meta(
                "environment", {**environment(cfg), "workers": n_workers, "executor": executor}
            )
            done = store.finished_units()
            todo = [u for u in units if (u.seed, u.t) not in done]
            skipped = len(units) - len(todo)
            if skipped:
                log(f"resuming: {skipped} of {len(units)} units already finished", quiet)
            T = cfg.recipe.steps
            live = progress if progress is not None else (not quiet and sys.stderr.isatty())
            work = sum(max(T, cfg.child_end(u.t)) - u.t for u in todo)
            bar = Progress(len(units), skipped, work, T, enabled=live, erase=sys.stderr.isatty())
            steps = 0

            def commit(res: UnitResult) -> None:
                nonlocal steps
                store.commit_unit(
                    res.seed, res.t, res.rows, res.trajectory, res.proxy, res.population,
                    res.steps, res.wall_s, time.time(), res.training,
                )  # fmt: skip
                steps += res.steps
                bar.unit_done(res.seed, res.t, max(T, cfg.child_end(res.t)) - res.t)
                if not bar.enabled:
                    log(
                        f"[{bar.done}/{len(units)}] seed {res.seed} t={res.t}: "
                        f"{res.population} members, {res.steps} member-steps, {res.wall_s:.1f} s",
                        quiet,
                    )
                if on_unit is not None:
                    on_unit(res)

            failures: list[str] = []

            def fail(seed: int, t: int | None, err: BaseException) -> None:
                store.record_failure(seed, t, f"{type(err).__name__}: {err}", time.time())
                where = f"seed {seed}" + (f" t={t}" if t is not None else " (parent)")
                failures.append(f"{where}: {err}")
                log(f"FAILED {where}: {type(err).__name__}: {err}", quiet)

            if todo:
                log(
                    f"sweep '{cfg.name}': {len(units)} units ({len(cfg.seeds)} seeds x "
                    f"{len(cfg.perturbation_steps())} times), population {len(units[0].members)}, "
                    f"{n_workers} worker{'s' if n_workers > 1 else ''} ({executor}) -> {run_dir}",
                    quiet,
                )
                pool = make_executor(executor, cfg, n_workers, address, bar.enabled)
                interrupted = True
                try:
                    # (not `steps += schedule(...)`: commit() adds to steps while it runs)
                    parent_steps = schedule(cfg, todo, run_dir, pool, commit, fail, bar)
                    steps += parent_steps
                    interrupted = False
                finally:
                    pool.shutdown(abort=interrupted)  # Ctrl-C, SIGTERM: stop the workers now
                    bar.close()
            df = store.results()
        finally:
            store.close()
        df.to_csv(run_dir / rundir.CSV, index=False)
    if failures:
        raise SweepFailed(
            f"{len(failures)} unit{'s' if len(failures) > 1 else ''} failed (first: "
            f"{failures[0]}); finished units are saved in {run_dir}, run the same command to retry"
        )
    problems = check_control(df)
    n_div = original_diverged(df)
    if n_div:
        log(f"note: the original diverged (non-finite loss or weights) in {n_div} of "
            f"{len(units)} populations; their rows say so (status); lower recipe.lr", quiet)  # fmt: skip
    return SweepOutcome(
        run_dir, df, time.perf_counter() - start, steps, minimum_steps(cfg), len(todo), skipped,
        not problems,
    )  # fmt: skip


def _by_seed(units: list[Unit]) -> dict[int, list[Unit]]:
    out: dict[int, list[Unit]] = {}
    for u in units:
        out.setdefault(u.seed, []).append(u)
    return out


RETRIES = 3  # a task whose worker process died is run again this many times at most


def schedule(
    cfg: RunConfig,
    todo: list[Unit],
    run_dir: Path,
    pool: Executor,
    commit: Callable[[UnitResult], None],
    fail: Callable[[int, int | None, BaseException], None],
    bar: Progress,
) -> int:
    """Parents first (one task per seed); each parent's units are queued when it finishes,
    earliest t (longest) first. Returns the parents' steps (units' steps are counted by
    ``commit``).

    A worker process that dies (killed, out of memory) breaks the whole local pool: the pool is
    started again and every task that was in flight is submitted again, each at most
    :data:`RETRIES` times, so one lost worker costs a rerun of its unit, not a failed sweep.
    """
    by_seed = _by_seed(todo)
    steps = 0
    Task = tuple[str, int, int | None, Unit | None]
    pending: dict[Future, Task] = {}
    tries: dict[tuple[int, int | None], int] = {}

    def submit(task: Task) -> None:
        what, seed, _, unit = task
        if what == "parent":
            fut = pool.submit(run_parent, cfg, seed, run_dir)
        else:
            fut = pool.submit(run_unit, cfg, unit, run_dir, pool.reporter)
        pending[fut] = task

    for seed in by_seed:
        submit(("parent", seed, None, None))
    ready: list[Unit] = []
    limit = 2 * pool.slots
    try:
        while pending or ready:
            while ready and len(pending) < limit:
                u = ready.pop(0)
                submit(("unit", u.seed, u.t, u))
            if not pending:
                continue
            finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            pool.drain(bar)
            broken = [f for f in finished if isinstance(f.exception(), BrokenProcessPool)]
            if broken:
                lost = list(pending.values())  # a broken pool fails everything in flight
                pending.clear()
                pool.restart()
                for task in lost:
                    key = (task[1], task[2])
                    tries[key] = tries.get(key, 0) + 1
                    if tries[key] > RETRIES:
                        fail(task[1], task[2], RuntimeError(
                            f"its worker process died {RETRIES + 1} times (killed, or out of "
                            "memory?)"))  # fmt: skip
                    else:
                        submit(task)
                continue
            for fut in finished:
                what, seed, t, _ = pending.pop(fut)
                err = fut.exception()
                if err is not None:
                    if isinstance(err, KeyboardInterrupt):
                        raise err
                    fail(seed, t, err)
                    continue
                res = fut.result()
                if what == "parent":
                    steps += res["steps"]
                    ready.extend(by_seed[seed])
                    ready.sort(key=lambda u: u.t)
                else:
                    commit(res)
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    return steps
