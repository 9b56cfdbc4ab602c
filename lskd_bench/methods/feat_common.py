"""What the feature methods share: pairing stages of two networks and resizing maps to each other."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..outputs import head_module


def paired(s: list[torch.Tensor], t: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stage i of the student with stage i of the teacher, for the stages both have (RepDistiller zips
    ``feat_s[1:-1]`` and ``feat_t[1:-1]``, which its pairs give the same length)."""
    if not s or not t:
        raise UsageError("a stage-wise method needs stages in both networks (lskd_bench.outputs found none)")
    return list(zip(s, t))


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two maps at the smaller one's spatial size (adaptive average pooling of the larger, as RepDistiller's
    AT, FSP and NST do when the sizes differ)."""
    ha, hb = a.shape[2], b.shape[2]
    if ha > hb:
        a = F.adaptive_avg_pool2d(a, (hb, b.shape[3]))
    elif hb > ha:
        b = F.adaptive_avg_pool2d(b, (ha, a.shape[3]))
    return a, b


def pool_matrix_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of matrices ``(N, R, C)`` at the smaller row and column counts (adaptive average pooling of
    the larger; for FSP matrices of maps with different channel counts this equals the FSP matrix of the maps
    with their channels average-pooled in groups, as the matrix is bilinear in the two maps)."""
    rows, cols = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])

    def fit(m: torch.Tensor) -> torch.Tensor:
        return m if m.shape[1:] == (rows, cols) else F.adaptive_avg_pool2d(m.unsqueeze(1), (rows, cols)).squeeze(1)

    return fit(a), fit(b)


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The model's top-level modules except its classifier head (``outputs.head_module``): RepDistiller's
    ``model.get_feat_modules()`` (every layer up to the last stage), what AB and FSP's init stage train."""
    head = head_module(model)
    return [m for m in model.children() if not any(sub is head for sub in m.modules())]


def set_trainable(modules: list[nn.Module], on: bool) -> None:
    """``requires_grad`` of every parameter of ``modules`` (parts trained by an init stage only)."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(on)
