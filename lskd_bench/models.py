"""Model factory for image tasks: torchvision and timm architectures by name, split into the
backbone (penultimate features) and the linear head that ``ClassifierNet`` expects.

Weights are never downloaded (``pretrained`` is off); ``load_init_checkpoint`` reads local files.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import cifar_models
from .errors import UsageError


class ClassifierNet(nn.Module):
    """A backbone producing penultimate features and a linear head: what the analysis reads."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# arch name -> (library, constructor name); any other timm or torchvision classifier by ``timm:NAME`` /
# ``torchvision:NAME`` (e.g. ``timm:resnet26d``, ``torchvision:regnet_y_400mf``)
ARCHS = {
    "resnet18": ("torchvision", "resnet18"),
    "resnet34": ("torchvision", "resnet34"),
    "resnet50": ("torchvision", "resnet50"),
    "convnext_tiny": ("torchvision", "convnext_tiny"),
    "efficientnet_b0": ("timm", "efficientnet_b0"),
    "mobilenetv2_100": ("timm", "mobilenetv2_100"),
    "mobilenet_v1": ("lskd_bench", "MobileNetV1"),  # mdistiller's ImageNet MobileNet-V1 (cifar_models.py)
}
LIBRARIES = ("timm", "torchvision")

# where the named stages of torchvision's families are (lskd_bench.outputs; mdistiller's ImageNet ResNet ``feats``:
# the stem before the max-pool, then each layer); other torchvision models are probed
TORCHVISION_STAGES = {
    "ResNet": {"stage0": "relu", **{f"stage{i}": f"layer{i}" for i in range(1, 5)}},
    "ConvNeXt": {f"stage{i}": f"features.{2 * i - 1}" for i in range(1, 5)},
}


def resolve_arch(arch: str) -> tuple[str, str]:
    """(library, constructor name) of ``arch``: a name of the table above or ``library:name``."""
    if arch in ARCHS:
        return ARCHS[arch]
    lib, sep, name = arch.partition(":")
    if sep and lib in LIBRARIES and name:
        return lib, name
    raise UsageError(
        f"unknown arch {arch!r} (known: {', '.join(sorted(ARCHS))}, or timm:NAME / torchvision:NAME "
        "for any classifier of those libraries)"
    )


def is_library_arch(arch: str) -> bool:
    return arch.partition(":")[0] in LIBRARIES and ":" in arch


def check_library_arch(arch: str) -> None:
    """A ``timm:NAME`` / ``torchvision:NAME`` arch names a classifier of that library (UsageError otherwise)."""
    lib, name = resolve_arch(arch)
    if lib == "timm":
        import timm

        if not timm.is_model(name):
            raise UsageError(f"timm has no model {name!r} (timm.list_models() lists them, e.g. resnet26d)")
    else:
        import torchvision

        if name not in torchvision.models.list_models(torchvision.models):
            raise UsageError(
                f"torchvision has no classification model {name!r} (torchvision.models.list_models() "
                "lists them, e.g. regnet_y_400mf)"
            )


def _torchvision_net(name: str) -> nn.Module:
    import torchvision  # heavy: imported only when a torchvision architecture is built

    check_library_arch(f"torchvision:{name}")
    return torchvision.models.get_model(name, weights=None)


def _timm_net(name: str) -> nn.Module:
    import timm  # heavy: imported only when a timm architecture is built

    check_library_arch(f"timm:{name}")
    return timm.create_model(name, pretrained=False, num_classes=0)  # forward -> pooled features


def _strip_classifier(net: nn.Module) -> tuple[nn.Module, int]:
    """A torchvision classifier with its last linear layer replaced by identity, and that layer's input size."""
    for attr in ("fc", "head", "classifier", "heads"):
        layer = getattr(net, attr, None)
        if isinstance(layer, nn.Linear):
            setattr(net, attr, nn.Identity())
            return net, layer.in_features
        if isinstance(layer, nn.Sequential) and isinstance(layer[-1], nn.Linear):
            dim = layer[-1].in_features
            layer[-1] = nn.Identity()
            return net, dim
    raise UsageError(f"cannot find the final linear layer of torchvision's {type(net).__name__}")


def build_image_model(arch: str, num_classes: int) -> nn.Module:
    lib, name = resolve_arch(arch)
    if lib == "lskd_bench":
        return getattr(cifar_models, name)(num_classes)
    if lib == "timm":
        backbone = _timm_net(name)
        # what its forward returns: the pre-logits width where the model has a hidden head layer (MobileNetV3's
        # 1x1 conv_head: 1024, where num_features is 288), else num_features
        dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        return ClassifierNet(backbone, dim, num_classes)
    net, dim = _strip_classifier(_torchvision_net(name))
    model = ClassifierNet(net, dim, num_classes)
    table = TORCHVISION_STAGES.get(type(net).__name__)
    if table is not None:
        model.feature_stages = {k: f"backbone.{v}" for k, v in table.items()}
    return model


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


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` of local weights (tensors only); anything else is a one-line UsageError naming the file."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        text = str(exc).strip()
        if "WeightsUnpickler error:" in text:  # keep the finding, not torch's advice to load it unsafely
            text = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        first = text.splitlines()[0] if text else type(exc).__name__
        raise UsageError(
            f"{path} is not a PyTorch checkpoint of weights ({type(exc).__name__}: {first[:200]})"
        ) from None


def load_init_checkpoint(model: nn.Module, path: str | Path, strict: bool = False) -> int:
    """Load local weights into ``model``: lskd-bench's own format, or the library's (torchvision/timm)
    format, whose tensors map onto the backbone, or a ``{"model": state_dict}`` training checkpoint (the
    shared CIFAR teachers). Tensors whose shape differs (a 1000-class head on a 200-class task) are skipped,
    unless ``strict`` (a trained teacher): then every tensor of the model must come from the checkpoint.
    Returns how many tensors were loaded."""
    path = Path(path)
    sd = _unwrap(read_checkpoint(path))
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
        raise UsageError(
            f"checkpoint {path} lacks {len(missing)} of the model's {len(own)} tensors (e.g. {missing[0]}"
            f"{', shape ' + str(tuple(sd[missing[0]].shape)) + ' there' if missing[0] in sd else ''}): "
            "is it a checkpoint of this architecture and number of classes?"
        )
    model.load_state_dict(mapped, strict=False)
    return len(mapped)
