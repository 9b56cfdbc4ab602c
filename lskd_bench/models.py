"""Model factory for image tasks: torchvision and timm architectures by name, split into the
backbone (penultimate features) and the linear head that ``ClassifierNet`` expects.

Weights are never downloaded (``pretrained`` is off); ``load_init_checkpoint`` reads local files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UsageError
from .tasks.base import ClassifierNet

# arch name -> (library, constructor name)
ARCHS = {
    "resnet18": ("torchvision", "resnet18"),
    "resnet34": ("torchvision", "resnet34"),
    "resnet50": ("torchvision", "resnet50"),
    "convnext_tiny": ("torchvision", "convnext_tiny"),
    "efficientnet_b0": ("timm", "efficientnet_b0"),
    "mobilenetv2_100": ("timm", "mobilenetv2_100"),
    "mobilenet_v1": ("lskd_bench", "MobileNetV1"),  # mdistiller's ImageNet MobileNet-V1 (cifar_models.py)
}


def build_image_model(arch: str, num_classes: int) -> nn.Module:
    if arch not in ARCHS:
        raise UsageError(f"unknown arch {arch!r} (known: {', '.join(sorted(ARCHS))})")
    lib, name = ARCHS[arch]
    if lib == "lskd_bench":
        from . import cifar_models

        return getattr(cifar_models, name)(num_classes)
    if lib == "timm":
        import timm

        backbone = timm.create_model(name, pretrained=False, num_classes=0)  # forward -> pooled features
        return ClassifierNet(backbone, backbone.num_features, num_classes)
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if hasattr(net, "fc"):  # ResNets
        dim = net.fc.in_features
        net.fc = nn.Identity()
    else:  # ConvNeXt: classifier = LayerNorm2d, Flatten, Linear
        dim = net.classifier[-1].in_features
        net.classifier[-1] = nn.Identity()
    return ClassifierNet(net, dim, num_classes)


def _unwrap(obj: Any) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UsageError("checkpoint holds no state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def init_path(template: str, alpha: float) -> Path:
    """The checkpoint a cell starts from: ``{alpha}`` in the path becomes the cell's teacher alpha (``0``,
    ``0.1``), so each CUB teacher can start from the ImageNet teacher of its own alpha; a glob pattern must
    match exactly one file (e.g. ``runs/imagenet/teacher_resnet50_a{alpha}_s0-*/model.pt``)."""
    import glob

    text = str(template).replace("{alpha}", f"{float(alpha):g}")
    if any(ch in text for ch in "*?["):
        hits = sorted(glob.glob(text))
        if len(hits) != 1:
            raise UsageError(f"init checkpoint pattern {text} matches {len(hits)} files (it must match one)")
        text = hits[0]
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"init checkpoint {path} does not exist")
    return path


def load_init_checkpoint(model: nn.Module, path: str | Path, strict: bool = False) -> int:
    """Load local weights into ``model``: lskd-bench's own format, or the library's (torchvision/timm)
    format, whose tensors map onto the backbone, or a ``{"model": state_dict}`` training checkpoint (the
    shared CIFAR teachers). Tensors whose shape differs (a 1000-class head on a 200-class task) are skipped,
    unless ``strict`` (a trained teacher): then every tensor of the model must come from the checkpoint.
    Returns how many tensors were loaded."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"cannot read checkpoint {path}: {exc}") from None
    sd = _unwrap(raw)
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        # the library's classifier (torchvision fc / classifier.N, timm classifier) is ClassifierNet's head
        head = f"head.{k.rsplit('.', 1)[-1]}" if k.split(".")[0] in ("fc", "classifier") else None
        for cand in (k, f"backbone.{k}", *([head] if head else [])):
            if cand in own and own[cand].shape == v.shape:
                mapped[cand] = v
                break
    if not mapped:
        raise UsageError(f"checkpoint {path} has no tensor matching the model")
    missing = [k for k in own if k not in mapped]
    if strict and missing:
        raise UsageError(f"checkpoint {path} lacks {len(missing)} of the model's {len(own)} tensors (e.g. {missing[0]}"
                         f"{', shape ' + str(tuple(sd[missing[0]].shape)) + ' there' if missing[0] in sd else ''}): "
                         "is it a checkpoint of this architecture and number of classes?")
    model.load_state_dict(mapped, strict=False)
    return len(mapped)
