"""What feature distillation costs, as ratios measured side by side in one run (issue 25, item 12).

    python benchmarks/bench_feature_kd.py                 # all three parts
    python benchmarks/bench_feature_kd.py --part steps    # or: fused, memory

1. ``steps``: each feature method's student step (teacher forward with the outputs it needs, student forward,
   loss, backward, SGD step) divided by KD's, on CIFAR-100's resnet32x4 -> resnet8x4 at batch 64; the methods are
   timed in interleaved rounds and each ratio is the median over rounds of (method / KD in the same round).
2. ``fused``: a logit-only fused group (digits: KD at 4 temperatures + the baseline under one teacher, one epoch)
   trained with this checkout and with ``--against`` (default: the commit before the feature-KD contract),
   alternating in fresh processes; ratio = old seconds / new seconds (>= 0.97: no slower than before).
3. ``memory``: per method, the teacher outputs kept per batch of 64 (bytes), and the parameters and buffers
   the method owns for CIFAR-100's 50,000 training samples (CRD's memory bank).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BEFORE = "5fb4762"  # main before the feature-KD contract (issue 25)


def _models():
    from lskd_bench.cifar_models import build_cifar_model

    torch.manual_seed(0)
    return build_cifar_model("resnet32x4", 100).eval(), build_cifar_model("resnet8x4", 100)


def _method(name: str, teacher, student, x, num_samples: int = 50_000):
    """(method, student tap, teacher view) set up as the runner does."""
    from lskd_bench.config import full_schema
    from lskd_bench.methods import build_method, method_class
    from lskd_bench.outputs import describe
    from lskd_bench.runners.probe import TeacherView, probe_outputs, setup_method
    from lskd_bench.tasks import get_task

    schema = full_schema(get_task("cifar100"))
    cfg = schema.check({}, "defaults")
    m = build_method(name, cfg)
    tap = None
    layout = describe(teacher, x)
    if method_class(name).needs.features:
        view = TeacherView(teacher, layout, x[:2], probe_outputs(teacher, layout, list(m.needs.teacher), x[:2]))
        tap = setup_method(m, student, view, num_samples, 100)
    return m, tap, layout


def bench_steps(names: list[str], rounds: int, steps: int) -> None:
    from lskd_bench.methods import LossContext, total_loss
    from lskd_bench.outputs import Outputs, Tap

    teacher, _ = _models()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=g)
    y = torch.randint(0, 100, (64,), generator=g)
    idx = torch.randperm(50_000, generator=g)[:64]
    runs = {}
    for name in ["kd", *names]:
        _, student = _models()
        m, tap, layout = _method(name, teacher, student, x)
        opt = torch.optim.SGD(
            [*student.parameters(), *(m.parameters() if isinstance(m, torch.nn.Module) else [])], lr=0.01, momentum=0.9
        )
        runs[name] = (m, tap, layout, student, opt)

    def one(name: str) -> float:
        m, tap, layout, student, opt = runs[name]
        t0 = time.perf_counter()
        for _ in range(steps):
            if set(m.needs.teacher) == {"logits"}:
                with torch.inference_mode():
                    t = Outputs(logits=teacher(x).clone())
            else:
                with torch.no_grad(), Tap(teacher, layout, m.needs.teacher) as tt:
                    logits = teacher(x)
                t = Outputs({**tt.out, "logits": logits})
            student.train()
            with tap if tap is not None else _null():
                s_logits = student(x)
            s = Outputs(logits=s_logits, **(tap.out if tap is not None else {}))
            ctx = LossContext(
                T=4.0 if m.uses_temperature else None, epochs=240, indices=idx if m.needs.indices else None
            )
            loss = total_loss(m.compute(s, y, t, ctx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps

    for name in runs:  # warm-up
        one(name)
    ratios: dict[str, list[float]] = {n: [] for n in names}
    secs: dict[str, list[float]] = {n: [] for n in runs}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        got = {n: one(n) for n in order}
        for n, v in got.items():
            secs[n].append(v)
        for n in names:
            ratios[n].append(got[n] / got["kd"])
        print(f"round {r + 1}/{rounds}: " + " ".join(f"{n} {got[n] / got['kd']:.2f}" for n in names), flush=True)
    print(
        f"\nstudent step / KD's step, resnet32x4 -> resnet8x4, batch 64, {torch.get_num_threads()} threads, "
        f"median of {rounds} rounds of {steps} steps (KD: {statistics.median(secs['kd']) * 1e3:.0f} ms a step here)"
    )
    print("| method | step / KD step |\n|---|---|")
    for n in names:
        print(f"| {n} | {statistics.median(ratios[n]):.2f} |")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return None


FUSED_SCRIPT = r"""
import sys, tempfile, time, torch
from pathlib import Path
from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.train import load_model, train_group
from lskd_bench.tasks import get_task
torch.set_num_threads(1)
cfg = resolve_config("digits", {}, {"grid": {"alphas": [0.1], "temperatures": [1.0, 2.0, 3.0, 64.0], "seeds": [0]},
                                    "teacher": {"epochs": 1}, "student": {"epochs": int(sys.argv[1])},
                                    "analysis": {"export": False}})
task = get_task("digits"); data = task.load_data(cfg); cells = plan_cells(cfg)
teacher = next(c for c in cells if c.role == "teacher"); students = [c for c in cells if c.role != "teacher"]
with tempfile.TemporaryDirectory() as tmp:
    base = Path(tmp)
    train_group(task, [teacher], cfg, data, [teacher.dir(base)], progress=False)
    tm = load_model(task, teacher.arch, data, cfg, teacher.dir(base) / store.MODEL, torch.device("cpu"))
    t0 = time.perf_counter()
    out = train_group(task, students, cfg, data, [c.dir(base) for c in students], teacher=tm, progress=False)
    dt = time.perf_counter() - t0
    assert all(o.error is None for o in out)
    print(f"SECONDS {dt:.4f} " + " ".join(f"{o.result['metrics']['top1']:.4f}" for o in out))
"""


def bench_fused(against: str, rounds: int, epochs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), against], check=True, capture_output=True
        )
        try:
            times: dict[str, list[float]] = {"old": [], "new": []}
            metrics = {}
            for r in range(rounds):
                for label in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    root = old if label == "old" else REPO
                    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
                    p = subprocess.run(
                        [sys.executable, "-c", FUSED_SCRIPT, str(epochs)],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("SECONDS"))
                    times[label].append(float(line.split()[1]))
                    metrics[label] = line.split()[2:]
                print(
                    f"round {r + 1}/{rounds}: old {times['old'][-1]:.2f} s, new {times['new'][-1]:.2f} s, "
                    f"old/new {times['old'][-1] / times['new'][-1]:.3f}",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)
    ratio = statistics.median(o / n for o, n in zip(times["old"], times["new"]))
    print(
        f"\nlogit-only fused group (digits, 5 students, {epochs} epochs, 1 thread), {against} vs this checkout: "
        f"median ratio old/new {ratio:.3f} ({'no slower' if ratio >= 0.97 else 'SLOWER'}); "
        f"same final metrics: {'yes' if metrics['old'] == metrics['new'] else 'NO'}"
    )


def bench_memory(names: list[str]) -> None:
    from lskd_bench.outputs import Tap

    teacher, _ = _models()
    x = torch.randn(64, 3, 32, 32)
    print("| method | teacher outputs kept per batch of 64 | method parameters + buffers (50,000 samples) |")
    print("|---|---|---|")
    for name in ["kd", *names]:
        _, student = _models()
        m, _, layout = _method(name, teacher, student, x)
        with torch.no_grad(), Tap(teacher, layout, m.needs.teacher) as tt:
            logits = teacher(x)
        kept = sum(v.numel() * v.element_size() for v in tt.out.values())
        kept += logits.numel() * logits.element_size() if "logits" in m.needs.teacher else 0
        own = 0
        if isinstance(m, torch.nn.Module):
            own = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
        print(f"| {name} | {kept / 2**20:.2f} MiB | {own / 2**20:.2f} MiB |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("steps", "fused", "memory", "all"), default="all")
    ap.add_argument("--methods", default="", help="comma-separated (default: every feature method and crd+kd)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--against", default=BEFORE)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    from lskd_bench.methods import METHODS, FeatureMethod

    names = [n for n in args.methods.split(",") if n] or [
        n for n, c in METHODS.items() if issubclass(c, FeatureMethod)
    ] + (["crd+kd"] if "crd" in METHODS else [])
    print(f"bench_feature_kd: torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if args.part in ("memory", "all"):
        bench_memory(names)
    if args.part in ("steps", "all"):
        bench_steps(names, args.rounds, args.steps)
    if args.part in ("fused", "all"):
        bench_fused(args.against, args.rounds, args.epochs)


if __name__ == "__main__":
    main()
