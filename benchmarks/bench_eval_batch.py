"""The CPU's evaluation batch (``eval_batch_size`` null: chosen per device, issue 36 item 3): the task's evaluation
(``Task._classify``, what every epoch runs) of a few models at the chosen batch, at 32 (RepDistiller's) and at 256
(the CUDA default and the former default everywhere), rounds alternated; per model the chosen batch, the seconds of
each and the ratios 256 / chosen and 32 / chosen (> 1: the chosen batch is faster), the medians over the rounds.

    python benchmarks/bench_eval_batch.py [--images 1024] [--rounds 3] [--threads 2] [--models resnet8x4,...]

Inputs are random (speed does not depend on them); the models untrained. Other engineers may use the machine: the
load ``uptime`` showed is printed before and after, and the figures are indicative.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import torch

SIZES = {"cnn_tiny": ("digits", (1, 8, 8))}  # other models: CIFAR-100's, 3 x 32 x 32


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime not available"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="cnn_tiny,resnet8x4,resnet32x4,wrn_40_2")
    args = ap.parse_args()
    print(f"load before: {_uptime()}", flush=True)

    from lskd_bench.config import resolve_layers
    from lskd_bench.tasks import InMemoryDataset, TaskData, get_task
    from lskd_bench.tasks.base import eval_batch_size

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    runs = {}
    for arch in args.models.split(","):
        task_name, shape = SIZES.get(arch, ("cifar100", (3, 32, 32)))
        task = get_task(task_name)
        cfg = resolve_layers(task, [(task.recipe_source(), task.default_config())]).cfg  # no data root needed
        cfg = {**cfg, "num_workers": 0}
        g = torch.Generator().manual_seed(0)
        n_cls = 10 if task_name == "digits" else 100
        test = InMemoryDataset(torch.randn(args.images, *shape, generator=g), torch.randint(0, n_cls, (args.images,)))
        data = TaskData(train=[], val=test, num_classes=n_cls, class_names=[str(i) for i in range(n_cls)])
        torch.manual_seed(0)
        model = task.build_model(arch, data, cfg, cfg["student"]).eval()
        chosen = eval_batch_size(model, test, cfg, cpu)
        runs[arch] = (task, data, cfg, model, {"chosen": chosen, "32": 32, "256": 256})

    def seconds(arch: str, batch: int) -> float:
        task, data, cfg, model, _ = runs[arch]
        t = time.perf_counter()
        task._classify(model, data, {**cfg, "eval_batch_size": batch}, cpu)
        return time.perf_counter() - t

    secs = {a: {k: [] for k in ("chosen", "32", "256")} for a in runs}
    for r in range(args.rounds):
        for arch, (*_, batches) in runs.items():
            order = list(batches) if r % 2 == 0 else list(reversed(batches))
            got = {k: seconds(arch, batches[k]) for k in order}
            for k, v in got.items():
                secs[arch][k].append(v)
            print(
                f"round {r + 1}/{args.rounds} {arch}: "
                + ", ".join(f"{k} ({batches[k]}) {v:.2f} s" for k, v in got.items()),
                flush=True,
            )
    print(f"load after: {_uptime()}")
    print(f"\nCPU evaluation of {args.images} images, {args.threads} threads, medians of {args.rounds} rounds")
    print(
        "| model | chosen batch | chosen s | 32 s | 256 s | 32 / chosen | 256 / chosen |\n|---|---|---|---|---|---|---|"
    )
    for arch, (*_, batches) in runs.items():
        med = {k: statistics.median(v) for k, v in secs[arch].items()}
        print(
            f"| {arch} | {batches['chosen']} | {med['chosen']:.2f} | {med['32']:.2f} | {med['256']:.2f} | "
            f"{med['32'] / med['chosen']:.2f} | {med['256'] / med['chosen']:.2f} |"
        )


if __name__ == "__main__":
    main()
