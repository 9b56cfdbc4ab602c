"""Evaluation metrics, and how a task declares the metrics it reports (``MetricSpec``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class MetricSpec:
    """One metric a task reports (``Task.metrics``): its key in the metrics dict, its label in tables and
    plots, its direction, its number format, and whether a leaderboard cell shows it."""

    name: str
    label: str
    higher_is_better: bool = True
    format: str = ".2f"
    shown: bool = True  # shown in the leaderboard's cells (every metric is a CSV column)

    def better(self, a: float, b: float) -> bool:
        """Is ``a`` strictly better than ``b``?"""
        return a > b if self.higher_is_better else a < b

    def best(self, values: Sequence[float]) -> float:
        return max(values) if self.higher_is_better else min(values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricSpec:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


TOPK = (MetricSpec("top1", "top-1 accuracy (%)"), MetricSpec("top5", "top-5 accuracy (%)"))


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of rows whose target is among the k highest logits, for each k (k capped at K)."""
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices
    hits = top.eq(targets.unsqueeze(-1))
    return {k: int(hits[:, : min(k, kmax)].any(dim=-1).sum()) for k in ks}


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent, e.g. ``{"top1": 75.0, "top5": 100.0}``."""
    n = max(int(targets.numel()), 1)
    return {f"top{k}": 100.0 * c / n for k, c in topk_correct(logits, targets, ks).items()}
