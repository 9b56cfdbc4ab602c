"""What the feature methods share: pairing stages of two networks and resizing maps to each other."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UsageError


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
