"""Training throughput on synthetic input: teacher training (label-smoothed CE) vs KD student training
(teacher forward in eval mode under inference_mode + student step), in images/second.

    python benchmarks/bench_throughput.py [--teacher resnet50] [--student resnet18] [--batch-size 32]
        [--image-size 224] [--steps 5] [--warmup 2] [--device auto] [--channels-last] [--compile]

On CUDA it uses bf16 autocast, as the runner does.
"""

from __future__ import annotations

import argparse
import time

import torch

from lskd_bench.methods import kd_loss, ls_cross_entropy
from lskd_bench.models import build_image_model
from lskd_bench.tasks.base import autocast


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, step, steps: int, warmup: int, batch: int, device: torch.device) -> float:
    """Images/second of ``step``; prints a line per step as it goes (a CPU step can take seconds)."""
    for i in range(warmup):
        t0 = time.perf_counter()
        step()
        sync(device)
        print(f"  {name}: warm-up step {i + 1}/{warmup} ({time.perf_counter() - t0:.2f} s)", flush=True)
    t0 = time.perf_counter()
    for i in range(steps):
        t1 = time.perf_counter()
        step()
        sync(device)
        print(f"  {name}: step {i + 1}/{steps} ({time.perf_counter() - t1:.2f} s)", flush=True)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="resnet50")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; batch {args.batch_size}, {args.image_size}px, {args.classes} classes, "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}{', channels_last' if args.channels_last else ''}"
        f"{', compiled' if args.compile else ''}; {args.warmup} warm-up + {args.steps} timed steps each",
        flush=True,
    )
    cfg = {"amp": "bf16"}
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)

    def prepare(arch):
        m = build_image_model(arch, args.classes).to(device).to(memory_format=fmt)
        return m, (torch.compile(m) if args.compile else m)

    teacher, teacher_step = prepare(args.teacher)
    t_opt = torch.optim.SGD(teacher.parameters(), lr=0.01, momentum=0.9)

    def teacher_train():
        with autocast(device, cfg):
            logits = teacher_step(x)
        loss = ls_cross_entropy(logits.float(), y, 0.1)
        t_opt.zero_grad(set_to_none=True)
        loss.backward()
        t_opt.step()

    teacher.train()
    teacher_ips = measure("teacher training", teacher_train, args.steps, args.warmup, args.batch_size, device)

    teacher.eval()
    student, student_step = prepare(args.student)
    s_opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def kd_train():
        with torch.inference_mode(), autocast(device, cfg):
            t_logits = teacher_step(x).float()
        t_logits = t_logits.clone()
        with autocast(device, cfg):
            s_logits = student_step(x)
        loss = kd_loss(s_logits.float(), t_logits, y, T=4.0, lam=0.5)
        s_opt.zero_grad(set_to_none=True)
        loss.backward()
        s_opt.step()

    student.train()
    kd_ips = measure("KD student training", kd_train, args.steps, args.warmup, args.batch_size, device)
    print(f"teacher training ({args.teacher}, LS CE):          {teacher_ips:9.1f} images/s")
    print(f"KD student training ({args.teacher} -> {args.student}): {kd_ips:9.1f} images/s")
    print(f"ratio KD student / teacher training:        {kd_ips / teacher_ips:9.2f}")


if __name__ == "__main__":
    main()
