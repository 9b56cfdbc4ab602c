"""Evaluation metrics, and how a task declares the metrics it reports (``MetricSpec``).

Metrics computed over the evaluated split's batches are ``Metric`` classes in one registry (``METRICS``, the
entry-point group ``lskd_bench.metrics``, like tasks, methods, executors and loggers): top-1 and top-5 are
built in; a package adds one without a task of its own. A task reports its own metrics (``Task.metrics``) and
the registered ones it declares (``Task.extra_metrics``) or a run asks for (the ``metrics`` config key).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .registry import Registry


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


class Metric:
    """A registered metric: one instance per evaluation, fed every evaluated batch (``update``) with what the
    classification evaluation produces, the batch's logits (N, K) in float32 and integer targets (N,), then
    ``compute()``d into one number. ``spec``: its name (the registry's), label, direction and format. The
    value is a function of the evaluated split alone (never of the batch size or order of batches); the tensors
    are shared with the other metrics (read them, never modify them in place)."""

    spec: ClassVar[MetricSpec]

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


METRICS: Registry[type[Metric]] = Registry("metric", "lskd_bench.metrics")


class _TopK(Metric):
    k: ClassVar[int]

    def __init__(self) -> None:
        self.correct, self.n = 0, 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.correct += topk_correct(logits, targets, (self.k,))[self.k]
        self.n += int(targets.numel())

    def compute(self) -> float:
        return 100.0 * self.correct / max(self.n, 1)


@METRICS.register("top1")
class Top1(_TopK):
    spec, k = TOPK[0], 1


@METRICS.register("top5")
class Top5(_TopK):
    spec, k = TOPK[1], 5
