"""One prepared pass of the CUDA checks (for a lent GPU machine: run it once, read its log).

    python benchmarks/gpu_check.py OUT [--quick]

1. The environment: torch, CUDA, cuDNN, the device.
2. Determinism on CUDA: the default sweep (seed 0; ``--quick``: 600 steps) and a short
   ResNet-20 sweep on CIFAR-10-format files written here (random pixels, 5,000 training
   images), each run twice with ``runtime.device: cuda``: every sigma = 0 control must be
   exactly 0, and the two runs' result tables identical.
3. Throughput: ``benchmarks/gpu_throughput.py`` (ResNet-20 and the MLP, population sizes 1-32
   against a plain single-model loop on the same GPU).

Everything is written under OUT (logs, the run folders' results.csv); the exit status is 1 when
a control is not exactly 0 or the repeated runs differ.
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
TIMING = {"unit_wall_s", "finished"}


def write_cifar10(root: Path, per_batch: int = 1000) -> Path:
    """CIFAR-10's python format: five training batches and a test batch of random pixels."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        d = {b"labels": rng.integers(0, 10, per_batch).tolist(),
             b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)}  # fmt: skip
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(d, protocol=2))
    test = {b"labels": rng.integers(0, 10, per_batch).tolist(),
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)}  # fmt: skip
    (root / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    return root


def sweep(out: Path, name: str, sets: list[str], log: list[str]) -> pd.DataFrame:
    cmd = [sys.executable, "-m", "butterfly.cli", "run", "--quiet", "--out", str(out / name),
           *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.append(f"$ {' '.join(cmd)}\n(exit {done.returncode}, {wall:.1f} s)\n{done.stdout[-3000:]}"
               f"{done.stderr[-3000:]}")  # fmt: skip
    print(log[-1], flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed")
    df = pd.read_csv(out / name / "results.csv")
    return df.drop(columns=[c for c in df.columns if c in TIMING])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    env = (f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
           f"{torch.backends.cudnn.version()}, device {torch.cuda.get_device_name(0)}")  # fmt: skip
    log.append(env)
    print(env, flush=True)
    ok = True
    cifar = write_cifar10(out / "cifar10")
    runs = {
        "default": ["runtime.device=cuda", "seeds=[0]"]
        + (["recipe.steps=600"] if args.quick else []),
        "resnet20": ["runtime.device=cuda", "seeds=[0]", "data.name=cifar10",
                     f"data.path={cifar}", "model.name=resnet", "model.depth=20",
                     "model.width=16", "recipe.steps=400", "recipe.batch_size=128",
                     "perturb.times=[0.0,0.5]", "perturb.sigmas=[0.001,0.1]",
                     "perturb.kinds=[batch]", "eval.weight_matching=false",
                     "eval.activation_matching=false", "eval.proxy_fractions=[]",
                     "eval.max_train_examples=2000", "eval.trajectory_points=0"],
    }
    for name, sets in runs.items():
        a = sweep(out, f"{name}-a", sets, log)
        b = sweep(out, f"{name}-b", sets, log)
        ctrl = a[a.control == 1]
        zero = bool((ctrl.l2 == 0).all() and (ctrl.barrier_train_loss == 0).all())
        same = a.sort_values(list(a.columns[:9])).reset_index(drop=True).equals(
            b.sort_values(list(b.columns[:9])).reset_index(drop=True))  # fmt: skip
        line = (f"{name}: {len(ctrl)} controls exactly 0: {zero}; the two runs identical: {same}; "
                f"{len(a)} rows")  # fmt: skip
        log.append(line)
        print(line, flush=True)
        ok = ok and zero and same
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / "gpu_throughput.py"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    log.append(f"gpu_throughput.py ({time.perf_counter() - start:.0f} s, exit {done.returncode}):\n"
               f"{done.stdout}{done.stderr[-2000:]}")  # fmt: skip
    print(log[-1], flush=True)
    (out / "gpu_check.log").write_text("\n\n".join(log))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
