"""Where a population step of the default sweep spends its time: per-op counts and times.

One population of the default sweep (the MNIST-1D MLP, P members sharing every batch, SGD with
momentum) is trained for a few hundred steps under ``torch.profiler``; the table lists every
ATen op per step (calls, self time). The same run times the hand-batched gradient side by side
with the formulation it replaced (relu's backward as a product with a float-converted bool
mask, which was a third of the step) and checks that both give bit-identical gradients.

    python benchmarks/step_profile.py            # P = 10 (a default-sweep population)
    python benchmarks/step_profile.py --members 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from butterfly.config import build_config
from butterfly.data import BatchStream, load_dataset
from butterfly.models import build_model
from butterfly.train import Population, PopulationTrainer
from butterfly.train.batched_mlp import BatchedMLP
from butterfly.train.population import clone
from butterfly.train.recipe import init_state

Tensors = dict[str, torch.Tensor]


class MaskProductMLP(BatchedMLP):
    """The previous formulation: relu's backward as ``g * (z > 0)`` (bool mask converted to
    float, one more pass over the activations), pre-activations kept for it."""

    @torch.no_grad()
    def grad_and_loss(
        self, params: Tensors, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[Tensors, torch.Tensor]:
        P = params[self.layers[0][0]].shape[0]
        B = x.shape[0]
        acts = [x.flatten(1).expand(P, -1, -1)]
        pre: list[torch.Tensor] = []
        for i, (w, b) in enumerate(self.layers):
            z = torch.baddbmm(params[b].unsqueeze(1), acts[-1], params[w].transpose(1, 2))
            if i < len(self.layers) - 1:
                pre.append(z)
                acts.append(torch.relu(z))
            else:
                logits = z
        logp = torch.log_softmax(logits, dim=-1)
        idx = y.view(1, B, 1).expand(P, B, 1)
        losses = -logp.gather(-1, idx).squeeze(-1).mean(-1)
        g = logp.exp()
        g.scatter_add_(-1, idx, torch.full((P, B, 1), -1.0, dtype=g.dtype))
        g.div_(B)
        grads: Tensors = {}
        for i in range(len(self.layers) - 1, -1, -1):
            w, b = self.layers[i]
            grads[w] = torch.bmm(g.transpose(1, 2), acts[i])
            grads[b] = g.sum(1)
            if i > 0:
                g = torch.bmm(g, params[w]) * (pre[i - 1] > 0)
        return grads, losses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=10, help="population size P")
    ap.add_argument("--steps", type=int, default=200, help="steps per timing repeat")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = build_config({})
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.n_classes, 0)
    stream = BatchStream(len(data.y_train), cfg.recipe.batch_size, 0)
    trainer = PopulationTrainer(model, data, stream, cfg.recipe)
    P = args.members
    p0 = {k: v.detach() for k, v in model.named_parameters()}
    members = [{k: v + 1e-3 * i * torch.randn_like(v) for k, v in p0.items()} for i in range(P)]
    pop = Population.from_members([str(i) for i in range(P)], [clone(m) for m in members],
                                  [init_state(trainer.update, m) for m in members], 0)
    one, five, _ = os.getloadavg()
    print(f"torch {torch.__version__}, 1 thread, P = {P}, batch {cfg.recipe.batch_size}, "
          f"load average {one:.2f} (1 min) {five:.2f} (5 min)")

    # the two formulations of the gradient, side by side, alternating
    x, y = trainer.batch(0)
    new, old = BatchedMLP(model), MaskProductMLP(model)
    g_new, l_new = new.grad_and_loss(pop.params, x, y)
    g_old, l_old = old.grad_and_loss(pop.params, x, y)
    same = torch.equal(l_new, l_old) and all(torch.equal(g_new[k], g_old[k]) for k in g_new)
    times: dict[str, list[float]] = {"fused relu backward": [], "mask product (before)": []}
    for _ in range(9):
        for name, impl in (("fused relu backward", new), ("mask product (before)", old)):
            start = time.perf_counter()
            for _ in range(50):
                impl.grad_and_loss(pop.params, x, y)
            times[name].append((time.perf_counter() - start) / 50)
    base = statistics.median(times["mask product (before)"])
    print("gradient and loss of the population (median of 9 alternating repeats):")
    for name, ts in times.items():
        print(f"  {name:24s} {statistics.median(ts) * 1e6:8.0f} us   "
              f"{base / statistics.median(ts):5.2f}x")
    print(f"  bit-identical gradients and losses: {same}")

    # the whole step (gradient, divergence flag, optimizer), timed and profiled
    trainer.train(pop, 20)
    step_times = []
    for _ in range(5):
        start = time.perf_counter()
        trainer.train(pop, pop.step + args.steps)
        step_times.append((time.perf_counter() - start) / args.steps)
    step = statistics.median(step_times)
    weights = sum(v.numel() for v in p0.values() if v.dim() > 1)
    flops = 6.0 * weights * cfg.recipe.batch_size * P
    print(f"population step: {step * 1e3:.3f} ms ({step / P * 1e6:.1f} us per member-step, "
          f"{flops / step / 1e9:.1f} GFLOP/s of training arithmetic)")
    n = 100
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train(pop, pop.step + n)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"\nATen ops per step (profiled over {n} steps; self time, share of all op time):")
    print(f"  {'op':28s}{'calls':>7s}{'us':>9s}{'share':>8s}")
    for e in rows:
        if e.self_cpu_time_total / total < 0.005:
            continue
        print(f"  {e.key:28s}{e.count / n:7.1f}{e.self_cpu_time_total / n:9.1f}"
              f"{e.self_cpu_time_total / total:8.1%}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
