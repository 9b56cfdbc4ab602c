"""Fused vs one-after-the-other training of the 5 students of one teacher (4 KD temperatures + the no-KD
baseline): wall seconds of each, their ratio, and where the step time goes (data loading + augmentation,
teacher forward, student steps). The teacher is trained first and not timed.

    python benchmarks/bench_fusion.py                       # both workloads below
    python benchmarks/bench_fusion.py --workload digits     # the embedded task, default recipe
    python benchmarks/bench_fusion.py --workload imagenet --image-size 64 --epochs 1
        # resnet50 -> resnet18 on a generated ImageFolder (real JPEG decoding and augmentation), 10 classes;
        # on CUDA add --device cuda --image-size 224 --channels-last (bf16 autocast)

Both modes train the same cells from the same teacher; the script checks that each student's final metrics
are identical in the two modes and says so.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.train import load_model, resolve_device, train_group
from lskd_bench.tasks import get_task


def make_imagefolder(root: Path, classes: int, per_class: int, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(2, per_class // 4))):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 255, size=(size + 32, size + 48, 3), dtype=np.uint8)
                img[..., c % 3] //= 2
                Image.fromarray(img).save(d / f"{i}.JPEG", quality=90)
    return root


def run(task_name: str, overrides: dict, label: str) -> None:
    cfg = resolve_config(task_name, {}, overrides)
    task = get_task(task_name)
    device = resolve_device(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    students = [c for c in cells if c.role != "teacher"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = task.load_data(cfg, cache_dir=base / "cache")
        print(f"[{label}] training the teacher (not timed)...", flush=True)
        (o,) = train_group(task, [teacher], cfg, data, [teacher.dir(base / "seq")], progress=False)
        assert o.error is None, o.error
        tmodel = load_model(task, teacher.arch, data, cfg, teacher.dir(base / "seq") / store.MODEL, device)
        timings, profiles, metrics = {}, {}, {}
        for mode in ("sequential", "fused"):
            out = base / mode
            prof: dict[str, float] = {}
            print(f"[{label}] {mode}: {len(students)} students...", flush=True)
            t0 = time.perf_counter()
            units = [[c] for c in students] if mode == "sequential" else [students]
            for unit in units:
                res = train_group(
                    task, unit, cfg, data, [c.dir(out) for c in unit], teacher=tmodel, progress=False, profile=prof
                )
                for c, r in zip(unit, res):
                    assert r.error is None, r.error
                    metrics[(mode, c.name)] = r.result["metrics"]
            timings[mode] = time.perf_counter() - t0
            profiles[mode] = prof
        same = all(metrics[("sequential", c.name)] == metrics[("fused", c.name)] for c in students)
    print(
        f"\n[{label}] {len(students)} students "
        f"({', '.join(c.name.split('_s')[0].replace('student_kd_', '') for c in students)})"
    )
    print(f"{'mode':<12} {'wall s':>8} {'data':>7} {'teacher':>8} {'students':>9}   (share of the timed step loop)")
    for mode in ("sequential", "fused"):
        p = profiles[mode]
        tot = sum(p.values()) or 1.0
        print(
            f"{mode:<12} {timings[mode]:8.1f} {p.get('data', 0) / tot:7.0%} {p.get('teacher', 0) / tot:8.0%} "
            f"{p.get('students', 0) / tot:9.0%}"
        )
    print(
        f"speed-up fused / sequential: {timings['sequential'] / timings['fused']:.2f}x; "
        f"students' final metrics identical in both modes: {'yes' if same else 'NO'}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=("digits", "imagenet", "both"), default="both")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    print(
        f"bench_fusion: torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}",
        flush=True,
    )
    grid = {"alphas": [0.1], "temperatures": [1.0, 2.0, 3.0, 64.0], "seeds": [0]}
    if args.workload in ("digits", "both"):
        run("digits", {"grid": grid, "device": args.device}, "digits")
    if args.workload in ("imagenet", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            print(
                f"[imagenet] writing {args.classes} x {args.per_class} JPEGs "
                f"({args.image_size + 32}x{args.image_size + 48})...",
                flush=True,
            )
            root = make_imagefolder(Path(tmp) / "inet", args.classes, args.per_class, args.image_size)
            role = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.01, "warmup_epochs": 0}
            run("imagenet", {
                "data": {"root": str(root), "image_size": args.image_size},
                "grid": grid, "teacher": dict(role), "student": dict(role), "num_workers": args.num_workers,
                "device": args.device, "channels_last": args.channels_last,
                "analysis": {"export": False},
            }, "imagenet r50->r18")  # fmt: skip


if __name__ == "__main__":
    main()
