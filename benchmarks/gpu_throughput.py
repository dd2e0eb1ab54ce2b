"""Population training throughput on the available device (CUDA if present, else CPU).

    python benchmarks/gpu_throughput.py [--device cuda|cpu] [--sizes 1,2,4,8,10,16,32]
                                        [--steps N] [--model resnet20|mlp|both]

For ResNet-20 (CIFAR-10 shapes: 3x32x32 inputs, 10 classes, batch 128) and the MLP of the
default sweep (MNIST-1D shapes, batch 128), it times:

* a plain single-model ``torch.nn`` training loop (``nn.Module`` + ``torch.optim.SGD`` with
  momentum, the same batch every step), the baseline;
* butterfly's population trainer for population sizes P (the mode ``auto`` picks: vmap for
  ResNet-20, the hand-batched MLP for the MLP), every member on the same batch.

It prints member-steps per second, the speed-up over the plain loop, and the achieved TFLOP/s
(training FLOPs counted as 3x the forward FLOPs, the forward counted by torch's FLOP counter).
Timings are medians of ``--repeats`` runs of ``--steps`` steps after warm-up, with the device
synchronised around each run. On a CPU, ResNet-20 is slow: the default there is fewer steps
and sizes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from butterfly.config import RecipeConfig, build_config
from butterfly.data import BatchStream, Dataset
from butterfly.experiment.setup import configure_torch
from butterfly.models import build_model
from butterfly.train import Population, PopulationTrainer
from butterfly.train.population import Lane
from butterfly.train.recipe import init_state


def synthetic(shape: tuple[int, ...], n: int, classes: int, device: str) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return Dataset("bench", x, y, x[:256], y[:256], classes).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def time_it(fn, device: str, repeats: int) -> float:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def plain_loop(model: nn.Module, data: Dataset, steps: int, device: str, repeats: int) -> float:
    """Seconds per step of a plain nn.Module + torch.optim training loop."""
    m = model.to(device).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x, y = data.x_train[:128], data.y_train[:128]

    def run() -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()

    run()  # warm-up
    return time_it(run, device, repeats) / steps


def population(model: nn.Module, data: Dataset, P: int, steps: int, device: str,
               repeats: int) -> float:  # fmt: skip
    """Seconds per step of butterfly's population trainer with P members."""
    recipe = RecipeConfig(lr=0.01, steps=10**6, batch_size=128, warmup=0.0, schedule="constant")
    trainer = PopulationTrainer(model.to(device), data, BatchStream(len(data.y_train), 128, 0),
                                recipe, "auto")  # fmt: skip
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    params = [{k: v.clone() for k, v in init.items()} for _ in range(P)]
    pop = Population.from_members([str(i) for i in range(P)], params,
                                  [init_state(recipe, p) for p in params], 0)  # fmt: skip
    end = [0]

    def run() -> None:
        end[0] += steps
        trainer.train_lanes([Lane(pop, end[0])])

    run()  # warm-up (and vmap compilation of the graph)
    return time_it(run, device, repeats) / steps


def bench(name: str, device: str, sizes: list[int], steps: int, repeats: int) -> None:
    if name == "resnet20":
        shape, classes = (3, 32, 32), 10
        cfg = build_config({"model": {"name": "resnet", "width": 32, "depth": 20}})
    else:
        shape, classes = (1, 40), 10
        cfg = build_config({})
    data = synthetic(shape, 1024, classes, device)
    model = build_model(cfg.model, shape, classes, 0)
    flops = 3 * forward_flops(model, data.x_train[:128].cpu())  # forward + backward per step
    base = plain_loop(build_model(cfg.model, shape, classes, 0), data, steps, device, repeats)
    print(f"\n{name} on {device}: batch 128, {flops / 1e9:.3f} GFLOP per member-step")
    print(f"  plain nn.Module loop      : {1 / base:9.1f} member-steps/s  "
          f"{flops / base / 1e12:7.3f} TFLOP/s  (1.00x)")  # fmt: skip
    for P in sizes:
        s = population(build_model(cfg.model, shape, classes, 0), data, P, steps, device, repeats)
        rate = P / s
        print(f"  population P = {P:3d}       : {rate:9.1f} member-steps/s  "
              f"{flops * rate / 1e12:7.3f} TFLOP/s  ({rate * base:5.2f}x)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default=None, help="population sizes, comma-separated")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", choices=["resnet20", "mlp", "both"], default="both")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    configure_torch(1 if not gpu else torch.get_num_threads())
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, cuDNN "
             f"{torch.backends.cudnn.version()})" if gpu else ", 1 thread"))  # fmt: skip
    for name in (["resnet20", "mlp"] if args.model == "both" else [args.model]):
        heavy = name == "resnet20" and not gpu
        sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else (
            [1, 2, 4, 10] if heavy else [1, 2, 4, 8, 10, 16, 32])  # fmt: skip
        steps = args.steps or (2 if heavy else 20)
        bench(name, args.device, sizes, steps, args.repeats)


if __name__ == "__main__":
    main()
