"""Image decoding and augmentation on the device (``data.decode: gpu``).

The CPU pipeline (``data.decode: cpu``) decodes each file with PIL and augments it with torchvision's PIL
transforms inside the loader workers. On a GPU that is the bottleneck, so this pipeline splits the work:

- loader workers only read each file's bytes, read the image size from its header (PIL, no decoding) and
  draw the sample's augmentation parameters with torchvision's own ``get_params`` functions, from the same
  per-sample RNG seeded by (seed, epoch, index) (``tasks.loading.GuardedDataset``) and in the same order as the
  CPU pipeline's ``Compose``: crop boxes, flips, angles, grayscale draws and jitter factors are identical;
- the main process decodes the batch with ``torchvision.io.decode_jpeg`` on the device (nvJPEG on CUDA; on
  the CPU it runs libjpeg-turbo, which is how the tests exercise this code) and applies those parameters with
  tensor operations: crop + antialiased bilinear resize, flip, rotation, grayscale, brightness/contrast,
  normalisation; evaluation resizes the shorter side and centre-crops.

An image ``decode_jpeg`` refuses (a PNG saved as .JPEG, CMYK on nvJPEG, a truncated file...) is decoded by
PIL from its file for that sample; one PIL cannot read either is a bad sample with PIL's message, exactly as
the CPU pipeline reports it (``data.on_bad_sample``: stop naming the file, or skip it).
Pixel values differ slightly from the PIL pipeline (different JPEG decoder builds and resampling kernels);
``tests/tasks/test_device_images.py`` bounds the difference on the fixtures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .loading import BadSample

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def decode_mode(cfg: dict[str, Any]) -> str:
    """``data.decode`` resolved: ``auto`` is ``gpu`` when training runs on CUDA, ``cpu`` otherwise."""
    mode = str(cfg["data"]["decode"])
    if mode != "auto":
        return mode
    dev = str(cfg["device"])
    on_cuda = dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available())
    return "gpu" if on_cuda else "cpu"


def decode_device(cfg: dict[str, Any]) -> torch.device:
    """Where batches are decoded: the training device on CUDA (the current device at decode time when the
    config names no index, i.e. each DDP process's own GPU), else the CPU."""
    dev = str(cfg["device"])
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(dev) if dev.startswith("cuda") else torch.device("cpu")


@dataclass(frozen=True)
class Aug:
    """One training sample's augmentation, drawn in the worker. ``box`` is RandomResizedCrop's
    (top, left, height, width) in source pixels; ``jitter`` the (op, factor) pairs of ColorJitter in the
    order it applies them (op 0 brightness, 1 contrast)."""

    box: tuple[int, int, int, int]
    flip: bool
    angle: float
    gray: bool
    jitter: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Encoded:
    """One sample as a loader worker returns it: the file's bytes, its augmentation (None: evaluation)."""

    data: torch.Tensor  # uint8, 1-D
    aug: Aug | None
    label: int
    path: str


@dataclass
class EncodedBatch:
    data: list[torch.Tensor]
    augs: list[Aug | None]
    labels: torch.Tensor
    paths: list[str]

    def pin_memory(self) -> EncodedBatch:  # DataLoader(pin_memory=True) calls this in its pinning thread
        return EncodedBatch([d.pin_memory() for d in self.data], self.augs, self.labels.pin_memory(), self.paths)


def pil_rgb(path) -> Any:
    """A path -> RGB PIL image (CUBDataset's decoder; ImageFolder's ``loader`` opens the file first)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class EncodedImages(Dataset):
    """``samples`` ((path, label) pairs, as ImageFolder and CUBDataset hold them) served as ``Encoded``
    items; ``d`` is the data section (crop scale/ratio, CUB rotation, grayscale, jitter, sizes); ``loader``
    the CPU pipeline's decoder (path -> RGB PIL image), used for the images decode_jpeg refuses so that a bad
    file fails with the very error the CPU pipeline gives."""

    def __init__(
        self,
        samples: Sequence[tuple[Any, int]],
        classes: list[str],
        d: dict[str, Any],
        train: bool,
        device: torch.device | None = None,
        loader: Callable[[Any], Any] = pil_rgb,
    ):
        self.device, self.loader = device if device is not None else torch.device("cpu"), loader
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.targets = [y for _, y in self.samples]
        self.classes = list(classes)
        self.d, self.train = dict(d), train
        self.size = int(d["image_size"])
        self.eval_resize = int(d["eval_resize"] or round(self.size / 0.875))
        self._jitter = None
        b, c = d["color_jitter"]
        if train and (b or c):
            from torchvision import transforms as T

            self._jitter = T.ColorJitter(brightness=b, contrast=c)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Encoded:
        from PIL import Image

        path, y = self.samples[i]
        raw = path.read_bytes()
        try:
            header = Image.open(io.BytesIO(raw))  # reads the header only: size, mode
        except Exception:
            header = self.loader(path)
        with header:
            aug = self.draw(header) if self.train else None
        return Encoded(torch.frombuffer(bytearray(raw), dtype=torch.uint8), aug, y, str(path))

    def draw(self, img) -> Aug:
        """The CPU pipeline's random draws, in its order (``vision.transforms``), from the global RNG that
        ``GuardedDataset`` seeded: RandomResizedCrop, RandomHorizontalFlip, RandomRotation, RandomGrayscale,
        ColorJitter."""
        from torchvision import transforms as T

        d = self.d
        box = T.RandomResizedCrop.get_params(img, list(d["crop_scale"]), list(d["crop_ratio"]))
        flip = bool(torch.rand(1) < 0.5)
        angle = 0.0
        if d["rotation"]:
            angle = T.RandomRotation.get_params([-float(d["rotation"]), float(d["rotation"])])
        gray = bool(d["grayscale"]) and bool(torch.rand(1) < float(d["grayscale"]))
        jitter: tuple[tuple[int, float], ...] = ()
        if self._jitter is not None:
            cj = self._jitter
            order, b, c, _, _ = cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
            factors = {0: b, 1: c}
            jitter = tuple(
                (int(k), float(factors[int(k)])) for k in order if int(k) in factors and factors[int(k)] is not None
            )
        return Aug(tuple(int(v) for v in box), flip, float(angle), gray, jitter)

    # -- batches --------------------------------------------------------------------------------------
    @staticmethod
    def collate(items: list[Encoded]) -> EncodedBatch:
        return EncodedBatch(
            [s.data for s in items],
            [s.aug for s in items],
            torch.tensor([s.label for s in items]),
            [s.path for s in items],
        )

    def finish_batch(self, batch: EncodedBatch, device: torch.device) -> tuple[tuple | None, list[BadSample]]:
        """Decode and augment on ``device`` (``self.device`` with its index resolved by the caller): ((x, y) or
        None if no sample survived, the bad samples)."""
        imgs, bad = decode_images(batch.data, batch.paths, device, self.loader)
        keep = [k for k, im in enumerate(imgs) if im is not None]
        if not keep:
            return None, bad
        imgs = [imgs[k] for k in keep]
        if self.train:
            x = augment(imgs, [batch.augs[k] for k in keep], self.size)
        else:
            x = eval_crop(imgs, self.eval_resize, self.size)
        y = batch.labels if len(keep) == len(batch.data) else batch.labels[keep]
        return (normalise(x), y), bad


def decode_images(
    data: list[torch.Tensor], paths: list[str], device: torch.device, loader: Callable[[Any], Any] = pil_rgb
):
    """uint8 (3, H, W) images on ``device`` (None for a sample nothing can decode) and the bad samples.
    One ``decode_jpeg`` call for the batch (nvJPEG's batched decoder on CUDA); if it refuses, one call per
    image, and PIL for the images it refuses."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        # torchvision's CUDA decoder allocates its outputs on this (the caller's) stream but has nvJPEG write them
        # from its own stream without waiting for this one (and nvJPEG's hardware engine ignores stream order):
        # a block the previous batch's augmentation freed here, its kernels still queued, would be overwritten
        # under them (pytorch/vision#9606, meta-pytorch/torchcodec#1634). Let this stream's work finish first.
        torch.cuda.current_stream(device).synchronize()
    try:
        out: list = list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        out = []
        for t in data:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
    bad = []
    for k, im in enumerate(out):
        if im is None:
            try:
                out[k] = pil_to_tensor(loader(paths[k])).to(
                    device, non_blocking=True
                )  # from the file: the CPU path's error
            except Exception as exc:
                bad.append(BadSample(paths[k], f"{type(exc).__name__}: {exc}"))
    return out, bad


def pil_to_tensor(img) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor as p2t

    return p2t(img)


def _resize(img: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Antialiased bilinear resize of one (3, H, W) float image (PIL's resampling, as torchvision's)."""
    return torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[
        0
    ]


def augment(imgs: list[torch.Tensor], augs: list[Aug], size: int) -> torch.Tensor:
    """(N, 3, size, size) float in [0, 255]: crop + resize per image, then flip, rotation, grayscale and
    brightness/contrast batched with per-sample parameters."""
    dev = imgs[0].device
    x = torch.empty(len(imgs), 3, size, size, device=dev)
    for k, (im, a) in enumerate(zip(imgs, augs)):
        t, left, h, w = a.box
        x[k] = _resize(im[:, t : t + h, left : left + w].float(), [size, size])
    x.clamp_(0, 255).round_()  # each step rounds to whole grey levels, as the PIL pipeline's 8-bit images do
    if any(a.flip for a in augs):  # decided on the host: no device synchronisation
        flip = _on(dev, [a.flip for a in augs])
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if any(a.angle for a in augs):
        x = rotate(x, [a.angle for a in augs]).round_()
    if any(a.gray for a in augs):
        gray = _on(dev, [a.gray for a in augs])
        x = torch.where(gray[:, None, None, None], _gray(x).round_().expand_as(x), x)
    steps = max((len(a.jitter) for a in augs), default=0)
    for step in range(steps):  # each sample's ops in its own order; factor 1 leaves a sample unchanged
        for op in (0, 1):
            f = [a.jitter[step][1] if len(a.jitter) > step and a.jitter[step][0] == op else 1.0 for a in augs]
            if all(v == 1.0 for v in f):
                continue
            fac = _on(dev, f)[:, None, None, None]
            if op == 0:  # PIL ImageEnhance.Brightness: blend with black
                x = (x * fac).clamp_(0, 255).floor_()  # PIL's Image.blend truncates
            else:  # PIL ImageEnhance.Contrast: blend with the rounded mean of the grayscale image
                mean = torch.floor(_gray(x).round().mean(dim=(1, 2, 3), keepdim=True) + 0.5)
                x = (mean + fac * (x - mean)).clamp_(0, 255).floor_()
    return x


def rotate(x: torch.Tensor, degrees: list[float]) -> torch.Tensor:
    """Rotate each square image of ``x`` counter-clockwise by its angle about its centre, as PIL's
    ``Image.rotate(angle, BILINEAR)`` does (RandomRotation on the CPU pipeline): bilinear with the edge pixels
    repeated for a point inside the source, black for a point outside it (within 1 grey level of PIL on the
    tests' images; torchvision's tensor rotate blends the border with black instead)."""
    n, _, h, w = x.shape
    r = _on(x.device, [math.radians(a) for a in degrees])
    c, s, z = torch.cos(r), torch.sin(r), torch.zeros_like(r)
    theta = torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1)  # (N, 2, 3), normalised coords
    grid = torch.nn.functional.affine_grid(theta, [n, 3, h, w], align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    u, v = ((grid[..., 0] + 1) * w - 1) / 2, ((grid[..., 1] + 1) * h - 1) / 2  # source pixel coordinates
    inside = (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
    return out * inside[:, None].to(out.dtype)


def _on(device: torch.device, values: list) -> torch.Tensor:
    """A small host list as a tensor on ``device``, copied without blocking (pinned on CUDA)."""
    t = torch.tensor(values)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (PIL's convert("L")), (N, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def eval_crop(imgs: list[torch.Tensor], resize: int, size: int) -> torch.Tensor:
    """Resize the shorter side to ``resize`` (torchvision's rounding), centre-crop ``size``."""
    from torchvision.transforms.functional import center_crop

    x = torch.empty(len(imgs), 3, size, size, device=imgs[0].device)
    for k, im in enumerate(imgs):
        h, w = im.shape[-2:]
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(resize * long / short)
        hw = [new_long, resize] if w <= h else [resize, new_long]
        if [h, w] != hw:
            im = _resize(im.float(), hw)
        x[k] = center_crop(im.float(), [size, size])
    return x.clamp_(0, 255).round_()


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 255] -> ToTensor + Normalize(MEAN, STD)."""
    mean = _on(x.device, [m * 255 for m in MEAN])[None, :, None, None]
    std = _on(x.device, [s * 255 for s in STD])[None, :, None, None]
    return (x - mean) / std
