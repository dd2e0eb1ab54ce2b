"""Where a population step of the default sweep spends its time: per-op counts and times.

One population of the default sweep (the MNIST-1D MLP, P members sharing every batch, SGD with
momentum) is trained for a few hundred steps under ``torch.profiler``; the table lists every
ATen op per step (calls, self time). The same run times the hand-batched gradient side by side
with the formulations it replaced, and checks that all give bit-identical gradients:

* fresh buffers: every intermediate allocated anew each step (relu's backward out of place),
  as before the step's intermediates were kept in buffers;
* mask product: relu's backward as a product with a float-converted bool mask, which was a
  third of the step before it became one fused kernel.

    python benchmarks/step_profile.py            # P = 49: the default sweep's mean population
    python benchmarks/step_profile.py --members 10
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


class FreshBuffersMLP(BatchedMLP):
    """The formulation before the step's buffers were kept: every intermediate allocated anew,
    relu's backward out of place."""

    @torch.no_grad()
    def grad_and_loss(
        self, params: Tensors, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[Tensors, torch.Tensor]:
        P = params[self.layers[0][0]].shape[0]
        B = x.shape[0]
        acts = [x.flatten(1).expand(P, -1, -1)]
        for i, (w, b) in enumerate(self.layers):
            z = torch.baddbmm(params[b].unsqueeze(1), acts[-1], params[w].transpose(1, 2))
            if i < len(self.layers) - 1:
                acts.append(z.relu_())
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
                g = torch.ops.aten.threshold_backward(torch.bmm(g, params[w]), acts[i], 0.0)
        return grads, losses


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
    ap.add_argument("--members", type=int, default=49, help="population size P")
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

    # the formulations of the gradient, side by side, alternating
    x, y = trainer.batch(0)
    impls = {"kept buffers (now)": BatchedMLP(model), "fresh buffers": FreshBuffersMLP(model),
             "mask product": MaskProductMLP(model)}  # fmt: skip
    ref_g, ref_l = impls["kept buffers (now)"].grad_and_loss(pop.params, x, y)
    same = True
    for impl in impls.values():
        g, loss = impl.grad_and_loss(pop.params, x, y)
        same = same and torch.equal(loss, ref_l) and all(torch.equal(g[k], ref_g[k]) for k in g)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(9):
        for name, impl in impls.items():
            start = time.perf_counter()
            for _ in range(50):
                impl.grad_and_loss(pop.params, x, y)
            times[name].append((time.perf_counter() - start) / 50)
    base = statistics.median(times["mask product"])
    print("gradient and loss of the population (median of 9 alternating repeats; speed-up "
          "against the mask product):")  # fmt: skip
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
