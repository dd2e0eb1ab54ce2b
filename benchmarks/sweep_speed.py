"""Sweep speed: butterfly's planner + populations + workers against the naive design, side by side.

The naive design is that of the paper's own code: every (seed, t, sigma, kind) cell trains two
fresh networks from initialisation in lockstep (2T steps), perturbing one copy at step t; one
cell at a time, in one process, with ``torch.nn`` modules and ``torch.optim``. Both designs use
the same data, batches, recipe, perturbations and metrics (L2, train-loss and test-error
barriers), and both carry a sigma = 0 control per seed whose divergence must be exactly 0.

    python benchmarks/sweep_speed.py            # the default sweep grid (20-35 minutes)
    python benchmarks/sweep_speed.py --quick    # a small grid (under 2 minutes)

It measures this machine's single-thread sgemm peak at the start and the end of the run and
prints the sweep's achieved training GFLOP/s per core as a fraction of the higher; the naive
design runs twice, in one process and with as many processes side by side as butterfly has
workers (equal resources); butterfly's sweep runs three times (before, between and after the
naive runs) and its median is compared, so a machine whose speed drifts during the long naive
runs biases neither side; the load average is printed before and after.

Also prints population-training throughput (samples/s, all members counted) against a single
model on the same batch, for population sizes 1-32.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from butterfly.config import RunConfig, build_config
from butterfly.data import BatchStream, independent_batch, load_dataset
from butterfly.experiment.perturb import eligible, gaussian_direction, make_mask, scale_direction
from butterfly.metrics import alphas, curve_barrier, evaluate, interpolate, l2_distance
from butterfly.models import build_model, param_info
from butterfly.sweep import SweepOutcome, run_sweep
from butterfly.train import Population, PopulationTrainer, lr_at
from butterfly.train.population import clone
from butterfly.train.recipe import init_state

# Both designs compute the same per-child quantities (L2, train-loss and test-error barriers);
# butterfly's extra measures (alignment, CKA, trajectories, ...) are switched off for the race.
SAME_METRICS = {
    "eval": {
        "weight_matching": False, "activation_matching": False, "cka": False, "ensemble": False,
        "trajectory_points": 0, "proxy_fractions": [],
    },
}  # fmt: skip
QUICK = {
    "seeds": [0],
    "recipe": {"steps": 600},
    "perturb": {"times": [0.0, 0.5], "sigmas": [1e-3, 1e-1]},
}


# ---- the naive design ----------------------------------------------------------------------


def _optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    r = cfg.recipe
    if r.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay
        )
    return torch.optim.AdamW(
        model.parameters(), lr=r.lr, betas=r.betas, eps=r.eps, weight_decay=r.weight_decay
    )


def naive_cell(cfg: RunConfig, data, seed: int, t: int, kind: str | None, sigma: float) -> dict:
    """Two fresh networks trained in lockstep from step 0 to T; copy b is perturbed at t."""
    T = cfg.recipe.steps
    nets = [build_model(cfg.model, data.input_shape, data.n_classes, seed) for _ in range(2)]
    opts = [_optimizer(cfg, n) for n in nets]
    stream = BatchStream(len(data.y_train), cfg.recipe.batch_size, seed)
    info = param_info(nets[0])
    for step in range(T):
        if step == t and kind is not None:
            _perturb_naive(cfg, data, nets[1], info, seed, t, kind, sigma)
        idx = stream.indices(step)
        x, y = data.x_train[idx], data.y_train[idx]
        lr = lr_at(cfg.recipe, step)
        for net, opt in zip(nets, opts, strict=True):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    a, b = ({k: v.detach() for k, v in n.named_parameters()} for n in nets)
    ws = alphas(cfg.eval.alphas)
    path = [evaluate(nets[0], interpolate(a, b, w), data.x_train, data.y_train) for w in ws]
    test = [evaluate(nets[0], interpolate(a, b, w), data.x_test, data.y_test) for w in ws]
    return {
        "l2": l2_distance(a, b),
        "barrier_train_loss": curve_barrier([e.loss for e in path], ws),
        "barrier_test_error": curve_barrier([e.error for e in test], ws),
        "steps": 2 * T,
    }


def _perturb_naive(cfg, data, net, info, seed, t, kind, sigma) -> None:
    names = eligible(info, cfg.perturb.mask)
    params = dict(net.named_parameters())
    shapes = {n: params[n].shape for n in names}
    mask = make_mask(shapes, names, 1.0, seed, t, 0, cfg.perturb.mask)
    if kind == "gaussian":
        direction = gaussian_direction(shapes, info, names, seed, t, 0)
    else:
        idx = independent_batch(len(data.y_train), cfg.recipe.batch_size, seed, t, 0)
        probe = copy.deepcopy(net)
        torch.nn.functional.cross_entropy(probe(data.x_train[idx]), data.y_train[idx]).backward()
        direction = {n: dict(probe.named_parameters())[n].grad.detach() for n in names}
    pert = scale_direction(direction, mask, info, cfg.perturb.normalize)
    with torch.no_grad():
        for n, e in pert.eps.items():
            params[n].add_(e, alpha=sigma)


def _cells(cfg: RunConfig) -> list[tuple[int, int, str | None, float]]:
    """Every cell of the grid: a control per seed, then (seed, t, kind, sigma)."""
    out: list[tuple[int, int, str | None, float]] = []
    for seed in cfg.seeds:
        out.append((seed, 0, None, 0.0))
        for t in cfg.perturbation_steps():
            for kind in cfg.perturb.kinds:
                for sigma in cfg.perturb.sigmas:
                    out.append((seed, t, kind, sigma))
    return out


_POOL_CFG: RunConfig | None = None


def _pool_cell(cell: tuple[int, int, str | None, float]) -> dict:
    torch.set_num_threads(1)
    assert _POOL_CFG is not None
    seed, t, kind, sigma = cell
    r = naive_cell(_POOL_CFG, load_dataset(_POOL_CFG.data), seed, t, kind, sigma)
    return {"seed": seed, "t": t, "control": int(kind is None), "kind": kind, **r}


def run_naive(cfg: RunConfig, processes: int = 1) -> dict:
    """The naive design, one cell at a time in this process, or ``processes`` cells side by
    side (one process each, as a user's loop of single-cell jobs would run them)."""
    global _POOL_CFG
    data = load_dataset(cfg.data)
    start = time.perf_counter()
    if processes > 1:
        import multiprocessing as mp

        _POOL_CFG = cfg
        with mp.get_context("fork").Pool(processes) as pool:
            rows = pool.map(_pool_cell, _cells(cfg), chunksize=1)
    else:
        rows = [{"seed": seed, "t": t, "control": int(kind is None), "kind": kind,
                 **naive_cell(cfg, data, seed, t, kind, sigma)}
                for seed, t, kind, sigma in _cells(cfg)]  # fmt: skip
    steps = sum(r["steps"] for r in rows)
    return {"wall_s": time.perf_counter() - start, "steps": steps, "rows": rows}


# ---- how close to the machine ------------------------------------------------------------------


def sgemm_peak(n: int = 1024, repeats: int = 7) -> float:
    """This machine's single-thread float32 matrix-product rate (GFLOP/s, median of
    ``repeats``) on an n x n product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def training_flops(cfg: RunConfig) -> float:
    """FLOPs of one member-step of training: about 6 x multiply-adds-weights x batch (2 for the
    forward pass, 4 for the backward pass), counting the model's weight matrices."""
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.n_classes, 0)
    weights = sum(p.numel() for p in model.parameters() if p.dim() > 1)
    return 6.0 * weights * cfg.recipe.batch_size


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


# ---- throughput ----------------------------------------------------------------------------


def throughput(cfg: RunConfig, sizes: list[int], steps: int) -> list[tuple[str, int, float]]:
    """Samples per second (all members counted) of population training, per mode and size."""
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.n_classes, 0)
    stream = BatchStream(len(data.y_train), cfg.recipe.batch_size, 0)
    B = cfg.recipe.batch_size
    params = {k: v.detach() for k, v in model.named_parameters()}
    out = []
    # the reference: one nn.Module with torch.optim, as in the naive design
    net = copy.deepcopy(model)
    opt = _optimizer(cfg, net)
    for rep in range(2):
        start = time.perf_counter()
        for s in range(steps):
            idx = stream.indices(s)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        if rep:
            out.append(("single nn.Module", 1, steps * B / (time.perf_counter() - start)))
    modes = ["batched", "vmap", "loop"] if cfg.model.name == "mlp" else ["vmap", "loop"]
    for mode in modes:
        trainer = PopulationTrainer(model, data, stream, cfg.recipe, mode)
        for P in sizes:
            if mode == "loop" and P > 8:
                continue
            members = [clone(params) for _ in range(P)]
            pop = Population.from_members(
                [str(i) for i in range(P)], members, [init_state(cfg.recipe, m) for m in members], 0
            )
            trainer.train(pop, 3)  # warm-up
            start = time.perf_counter()
            trainer.train(pop, 3 + steps)
            out.append((mode, P, steps * B * P / (time.perf_counter() - start)))
    return out


# ---- evaluation ------------------------------------------------------------------------------


def path_evaluation(cfg: RunConfig, repeats: int) -> tuple[float, float]:
    """Seconds per barrier (11 points, train + test) per point and as one vectorised batch."""
    from butterfly.experiment.comparer import Comparer

    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.n_classes, 0)
    a = {k: v.detach() for k, v in model.named_parameters()}
    b = {k: v + 0.01 * torch.randn_like(v) for k, v in a.items()}
    out = []
    for batched in (False, True):
        cmp = Comparer(model, data, cfg.eval.model_copy(update={"batched_path": batched}))
        ea, eb = cmp.endpoint(a), cmp.endpoint(b)
        cmp.barriers(a, b, ea, eb)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            cmp.barriers(a, b, ea, eb)
            times.append(time.perf_counter() - start)
        out.append(statistics.median(times))
    return out[0], out[1]


# ---- main ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a small grid, under 2 minutes")
    ap.add_argument("--workers", type=int, default=0, help="butterfly's workers (0 = cores)")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = build_config({**(QUICK if args.quick else {}), **SAME_METRICS})
    grid = (
        f"{len(cfg.seeds)} seeds x {len(cfg.perturbation_steps())} times x "
        f"{len(cfg.perturb.sigmas)} sigmas x {len(cfg.perturb.kinds)} kinds, T = {cfg.recipe.steps}"
    )
    print(
        f"grid: {grid}; torch {torch.__version__}, {os.cpu_count()} cores, 1 intra-op thread/process"
    )
    load_dataset(cfg.data)  # warm the data cache outside the timings
    load_before = load()
    workers = args.workers or os.cpu_count() or 1
    peak = sgemm_peak()
    print(f"load average before: {load_before}; single-thread sgemm peak {peak:.1f} GFLOP/s")

    def butterfly() -> tuple[SweepOutcome, float]:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            out = run_sweep(cfg, Path(tmp) / "run", workers=workers, quiet=True)
            wall = time.perf_counter() - start
        print(f"butterfly: {wall:8.1f} s wall, {out.steps} member-steps, {workers} workers")
        return out, wall

    # butterfly's sweep runs before, between and after the naive runs, and its median is
    # compared: a machine whose speed drifts during the long naive runs biases neither side
    ours, first = butterfly()
    walls = [first]
    naive = run_naive(cfg)
    print(f"naive    : {naive['wall_s']:8.1f} s wall, {naive['steps']} member-steps, 1 process")
    walls.append(butterfly()[1])
    wide = run_naive(cfg, workers) if workers > 1 else naive
    print(f"naive    : {wide['wall_s']:8.1f} s wall, {workers} processes side by side")
    walls.append(butterfly()[1])
    ours_wall = statistics.median(walls)
    peak_after = sgemm_peak()
    print(f"butterfly's median of {len(walls)} runs: {ours_wall:.1f} s "
          f"({', '.join(f'{w:.1f}' for w in walls)}); sgemm peak at the end {peak_after:.1f} "
          f"GFLOP/s (start {peak:.1f}; the fractions below use the higher)")  # fmt: skip
    peak = max(peak, peak_after)

    minimum = ours.minimum_steps
    df = ours.results
    ours_ctrl = df[df.control == 1][["l2", "barrier_train_loss"]].abs().to_numpy().max()
    naive_ctrl = max(
        max(r["l2"], abs(r["barrier_train_loss"])) for r in naive["rows"] if r["control"]
    )
    print()
    print(f"{'':24s}{'naive':>14s}{'butterfly':>14s}")
    print(f"{'wall time (s)':24s}{naive['wall_s']:14.1f}{ours_wall:14.1f}")
    print(f"{'member-steps executed':24s}{naive['steps']:14d}{ours.steps:14d}")
    print(f"{'steps / minimum':24s}{naive['steps'] / minimum:14.4f}{ours.steps / minimum:14.4f}")
    print(f"{'control divergence':24s}{naive_ctrl:14.3g}{ours_ctrl:14.3g}")
    print(
        f"speed-up (naive wall / butterfly wall): {naive['wall_s'] / ours_wall:.2f}x against one "
        f"naive process, {wide['wall_s'] / ours_wall:.2f}x at equal resources ({workers} naive "
        f"processes against {workers} workers); minimum member-steps for this grid: {minimum}"
    )
    flops = training_flops(cfg)
    achieved = flops * ours.steps / ours_wall / workers / 1e9
    print(
        f"training arithmetic: {flops / 1e6:.2f} MFLOP per member-step, {flops * ours.steps / 1e12:.2f} "
        f"TFLOP for the sweep; butterfly achieves {achieved:.1f} GFLOP/s per core = "
        f"{achieved / peak:.2f} of the sgemm peak (the sweep's FLOP limit on {workers} cores: "
        f"{flops * minimum / (peak * 1e9 * workers):.1f} s at the minimum member-steps)"
    )

    # same per-child semantics: mean barrier per t in both designs
    print("\nmean train-loss barrier per t (both designs, children only):")
    kids = df[df.control == 0]
    for t in cfg.perturbation_steps():
        nv = [r["barrier_train_loss"] for r in naive["rows"] if not r["control"] and r["t"] == t]
        print(
            f"  t = {t:5d}: naive {statistics.mean(nv):10.4g}   butterfly "
            f"{kids[kids.t == t].barrier_train_loss.mean():10.4g}"
        )

    per_point, batched = path_evaluation(cfg, 5 if args.quick else 15)
    print(
        f"\nbarrier evaluation (11 points, train + test sets), median: per point "
        f"{per_point * 1e3:.1f} ms, one batch {batched * 1e3:.1f} ms ({per_point / batched:.2f}x)"
    )

    if not args.skip_throughput:
        print("\npopulation training throughput (samples/s, all members, 1 thread):")
        ref = None
        for mode, P, sps in throughput(cfg, [1, 2, 4, 8, 16, 32], 40 if args.quick else 150):
            ref = ref or sps
            print(f"  {mode:18s} P = {P:2d}: {sps:12.0f}  ({sps / ref:5.2f}x single model)")
    print(f"\nload average after: {load()} (before: {load_before})")
    wide_ctrl = max(max(r["l2"], abs(r["barrier_train_loss"])) for r in wide["rows"] if r["control"])
    ok = (naive_ctrl == 0.0 and wide_ctrl == 0.0 and ours_ctrl == 0.0 and ours.control_ok
          and not math.isnan(ours_ctrl))  # fmt: skip
    if not ok:
        print("DETERMINISM FAILURE: a control diverged", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
