"""The epoch boundary with DataLoader workers: loading epoch e+1 while epoch e finishes (the runner's read-ahead)
against opening each epoch's loader when it starts (before), side by side in one run, alternating.

    python benchmarks/bench_epoch_boundary.py                   # CUB-like: 5 steps an epoch, 2 workers
    python benchmarks/bench_epoch_boundary.py --per-class 8 --epochs 6 --num-workers 4

A CUB_200_2011 folder of generated JPEGs (the CUB recipe's augmentation: crop, rotation, grayscale, colour
jitter) trains one ResNet-18 on the CPU. Printed per mode (median over --repeats): the wait for the first
batch of each epoch after the first (opening the loader included: the epoch-boundary stall), all data
waits, and the run's wall time; then after/before ratios. The script checks that both modes give the same
weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.train import FusedGroup, train_group
from lskd_bench.tasks import get_task


def make_cub(root: Path, classes: int, per_class: int, val: int, size: int) -> Path:
    """The official CUB_200_2011 layout (images/, images.txt, image_class_labels.txt, train_test_split.txt,
    classes.txt) with noise JPEGs of ``size`` x ``size + size // 4`` pixels."""
    from PIL import Image

    d = root / "CUB_200_2011"
    rng = np.random.default_rng(0)
    rows: dict[str, list[str]] = {
        "images.txt": [],
        "image_class_labels.txt": [],
        "train_test_split.txt": [],
        "classes.txt": [],
    }
    k = 0
    for c in range(1, classes + 1):
        name = f"{c:03d}.Bird_{c}"
        rows["classes.txt"].append(f"{c} {name}")
        for is_train, n in ((1, per_class), (0, val)):
            for _ in range(n):
                k += 1
                rel = f"{name}/Bird_{k:05d}.jpg"
                (d / "images" / name).mkdir(parents=True, exist_ok=True)
                img = rng.integers(0, 255, size=(size, size + size // 4, 3), dtype=np.uint8)
                img[..., c % 3] //= 2
                Image.fromarray(img).save(d / "images" / rel, quality=90)
                rows["images.txt"].append(f"{k} {rel}")
                rows["image_class_labels.txt"].append(f"{k} {c}")
                rows["train_test_split.txt"].append(f"{k} {is_train}")
    for fname, lines in rows.items():
        (d / fname).write_text("\n".join(lines) + "\n")
    return root


def one_run(task, cfg, data, cell, out: Path, read_ahead: bool) -> tuple[float, float, float, dict]:
    FusedGroup.read_ahead = read_ahead
    profile: dict[str, float] = {}
    marks: dict[tuple[int, int], float] = {}
    steps = len(data.train) // cfg["teacher"]["batch_size"]

    def on_step(epoch, i):
        if i in (0, steps - 1):
            marks[(epoch, i)] = profile.get("data", 0.0)

    t0 = time.perf_counter()
    (o,) = train_group(task, [cell], cfg, data, [out], progress=False, on_step=on_step, profile=profile)
    wall = time.perf_counter() - t0
    assert o.error is None, o.error
    epochs = cfg["teacher"]["epochs"]
    boundary = sum(marks[(e, 0)] - marks[(e - 1, steps - 1)] for e in range(1, epochs))
    return boundary, profile["data"], wall, torch.load(out / store.MODEL, weights_only=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=4, help="training images per class (default 4: 5 steps of 8)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--jpeg-size", type=int, default=320)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        print(
            f"writing a CUB-like folder: {args.classes} classes x {args.per_class} training JPEGs "
            f"({args.jpeg_size} px)...",
            flush=True,
        )
        root = make_cub(base / "cub", args.classes, args.per_class, 1, args.jpeg_size)
        role = {"arch": "resnet18", "epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.001}
        cfg = resolve_config("cub200", {}, {
            "data": {"root": str(root), "image_size": args.image_size, "eval_resize": args.image_size + 8,
                     "decode": "cpu"},
            "num_workers": args.num_workers, "eval_batch_size": 32, "device": "cpu",
            "grid": {"alphas": [0.1], "temperatures": [1.0]}, "teacher": role, "analysis": {"export": False},
        })  # fmt: skip
        task = get_task("cub200")
        data = task.load_data(cfg)
        cell = next(c for c in plan_cells(cfg) if c.role == "teacher")
        steps = len(data.train) // args.batch_size
        print(
            f"{args.epochs} epochs of {steps} steps, batch {args.batch_size}, {args.num_workers} workers, "
            f"{args.repeats} runs per mode, alternating",
            flush=True,
        )
        rows: dict[str, list[tuple[float, float, float]]] = {"before": [], "read-ahead": []}
        weights = {}
        for r in range(args.repeats):
            for mode in ("before", "read-ahead"):
                b, d, w, weights[mode] = one_run(task, cfg, data, cell, base / f"{mode}-{r}", mode == "read-ahead")
                rows[mode].append((b, d, w))
                print(
                    f"  run {r + 1} {mode:>10}: boundary wait {b:6.3f} s, all data waits {d:6.3f} s, wall {w:6.2f} s",
                    flush=True,
                )
        same = all(torch.equal(weights["before"][k], weights["read-ahead"][k]) for k in weights["before"])
        med = {m: [statistics.median(x[j] for x in v) for j in range(3)] for m, v in rows.items()}
        print(f"\n{'mode':>10} | boundary wait (s) | data waits (s) | wall (s)")
        for m, (b, d, w) in med.items():
            print(f"{m:>10} | {b:17.3f} | {d:14.3f} | {w:8.2f}")
        (b0, d0, w0), (b1, d1, w1) = med["before"], med["read-ahead"]
        print(f"{'ratio':>10} | {b1 / b0:17.2f} | {d1 / d0:14.2f} | {w1 / w0:8.2f}   (read-ahead / before)")
        print("same weights in both modes:", "yes" if same else "NO")


if __name__ == "__main__":
    main()
