"""CIFAR-100 training augmentation: lskd-bench's batched crop/flip/normalise (task cifar100) vs torchvision's
per-image transforms (RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize on PIL images, what
mdistiller's data loader runs), on random uint8 images; images/s of each and the ratio, measured side by side.

    python benchmarks/bench_cifar_aug.py [--images 4096] [--batch-size 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from PIL import Image
    from torchvision import transforms as T

    from lskd_bench.tasks.cifar import MEAN, PAD, STD, AugmentedBatch, CIFAR100Task, augment_params

    device = torch.device(args.device)
    raw = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    xp = torch.nn.functional.pad(raw, (PAD, PAD, PAD, PAD))
    task, cfg = CIFAR100Task(), {"channels_last": False}
    batches = [torch.arange(i, min(i + args.batch_size, args.images)) for i in range(0, args.images, args.batch_size)]

    def ours() -> None:
        for idx in batches:
            task.to_device(AugmentedBatch((xp[idx], augment_params(idx, 0, 0), idx)), device, cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()

    pil = [Image.fromarray(raw[i].permute(1, 2, 0).numpy()) for i in range(args.images)]
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])

    def torchvision_per_image() -> None:
        for idx in batches:
            torch.stack([tf(pil[i]) for i in idx.tolist()]).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = {}
    for name, fn in (("lskd-bench batched", ours), ("torchvision per image", torchvision_per_image)):
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        results[name] = args.images / (time.perf_counter() - t0)
        print(f"{name:<24} {results[name]:>12,.0f} images/s ({args.device})")
    print(f"ratio: {results['lskd-bench batched'] / results['torchvision per image']:.1f}x")


if __name__ == "__main__":
    main()
