"""One GPU, a grid of small units: ``--per-gpu K`` (K units share the GPU) vs one unit at a time, side by side.

    python benchmarks/bench_per_gpu.py [--task digits] [--per-gpu 4] [--gpu 0] [--rounds 1]

Trains the default grid of the task from scratch twice per round, in fresh run directories, through the
subprocess executor on one GPU: once with ``--per-gpu 1`` and once with ``--per-gpu K`` (the order alternates
between rounds). Prints each wall time and the ratio (one at a time / packed), and checks both runs reached
the same cells. Without CUDA the ids are labels and both runs train on the CPU (a smoke test, not a figure).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lskd_bench.runners import store


def run(task: str, out: Path, gpu: str, per_gpu: int) -> float:
    cmd = [
        sys.executable,
        "-m",
        "lskd_bench",
        "run",
        "--task",
        task,
        "--out",
        str(out),
        "--gpus",
        gpu,
        "--per-gpu",
        str(per_gpu),
        "--no-progress",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="digits")
    ap.add_argument("--per-gpu", type=int, default=4)
    ap.add_argument("--gpu", default="0")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name(int(args.gpu)) if cuda else 'CPU (no CUDA: smoke test only)'}")
    ratios = []
    for r in range(args.rounds):
        order = [1, args.per_gpu] if r % 2 == 0 else [args.per_gpu, 1]
        secs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for k in order:
                out = Path(tmp) / f"per_gpu_{k}"
                secs[k] = run(args.task, out, args.gpu, k)
                cells = sorted(res["cell"]["name"] for res in store.iter_results(out))
                print(f"round {r + 1}: --per-gpu {k}: {secs[k]:.1f} s wall, {len(cells)} cells")
            ratios.append(secs[1] / secs[args.per_gpu])
        print(f"round {r + 1}: one at a time / --per-gpu {args.per_gpu} = {ratios[-1]:.2f}x")
    print(f"wall-time ratio (one unit at a time / {args.per_gpu} per GPU): " + ", ".join(f"{x:.2f}x" for x in ratios))


if __name__ == "__main__":
    main()
