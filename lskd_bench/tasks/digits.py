"""The embedded default task: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

The images ship inside the scikit-learn wheel (``sklearn/datasets/data/digits.csv.gz``), so the task runs
offline. The split is a fixed stratified 75 % / 25 % train / val split. Teacher: a 3-block CNN
(94 k parameters); student: a 2-block CNN (1.4 k parameters).
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError, UsageError
from ..hierarchy import groups_to_parents
from ..models import ClassifierNet
from ..schema import Field, Section
from . import TASKS
from .base import InMemoryDataset, Task, TaskData

# Digits grouped by stroke shape, the task's own "semantic" hierarchy: classes in one group are the
# visually similar ones (the analysis picks similar classes within a group, dissimilar ones across).
DIGIT_GROUPS = {
    "loops": ["0", "6", "8", "9"],
    "straight": ["1", "4", "7"],
    "open_curves": ["2", "3", "5"],
}


def _conv_block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


def cnn(widths: tuple[int, ...], num_classes: int) -> ClassifierNet:
    layers: list[nn.Module] = []
    cin = 1
    for i, w in enumerate(widths):
        layers += _conv_block(cin, w, pool=i < len(widths) - 1)
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    net = ClassifierNet(nn.Sequential(*layers), cin, num_classes)
    relus = [i for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]  # each block's output (lskd_bench.outputs)
    net.feature_stages = {f"stage{k + 1}": f"backbone.{i}" for k, i in enumerate(relus)}
    return net


ARCHS = {"cnn_wide": (32, 64, 128), "cnn_tiny": (8, 16)}


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64, targets (1797,) int): scikit-learn's ``load_digits()`` ``images`` and
    ``target``, read from the file it ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the class a row)
    the way it reads it, without importing scikit-learn (~1 s of every process that loads the data; equality with
    ``load_digits`` is tested)."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise DataError("task digits reads scikit-learn's digits data: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, mode="rt", encoding="utf-8") as f:
            data = np.loadtxt(f, delimiter=",")
    except OSError as exc:
        raise DataError(f"cannot read scikit-learn's digits data {path}: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 65:
        raise DataError(f"{path}: expected rows of 64 pixels and a class, got shape {data.shape}")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _split(cfg: dict[str, Any]):
    """(train x, train y, val x, val y) of the configured split."""
    return _load_split(float(cfg["data"]["val_fraction"]), int(cfg["data"]["split_seed"]))


@lru_cache(maxsize=1)
def _load_split(val_fraction: float, split_seed: int):
    images, target = read_digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.37  # ~zero mean / unit variance over the data set
    y = torch.tensor(target, dtype=torch.long)
    rng = np.random.default_rng(split_seed)
    val_idx = []
    for c in range(10):
        idx = np.flatnonzero(target == c)
        rng.shuffle(idx)
        val_idx.extend(idx[: round(len(idx) * val_fraction)].tolist())
    is_val = np.zeros(len(y), dtype=bool)
    is_val[val_idx] = True
    tr, va = torch.from_numpy(~is_val), torch.from_numpy(is_val)
    return x[tr], y[tr], x[va], y[va]


@TASKS.register("digits")
class DigitsTask(Task):
    name = "digits"
    recipe = "digits"
    projection_classes = ("3", "5", "8")
    description = "embedded default: sklearn 8x8 digits, cnn_wide -> cnn_tiny, 3 seeds, offline, ~1 min on 2 CPU cores"
    data_schema = Section(
        {
            "val_fraction": Field(
                float,
                0.25,
                "share of each class held out for validation",
                min=0.0,
                max=1.0,
                min_exclusive=True,
                max_exclusive=True,
            ),
            "split_seed": Field(int, 0, "seed of the fixed stratified train/val split", min=0),
        }
    )

    def validate(self, cfg: dict[str, Any]) -> None:
        for role in ("teacher", "student"):
            arch = cfg[role]["arch"]
            if arch not in ARCHS:
                raise UsageError(f"unknown {role} arch {arch!r} for task digits (known: {', '.join(sorted(ARCHS))})")

    def load_data(self, cfg: dict[str, Any], cache_dir=None) -> TaskData:
        xtr, ytr, xva, yva = _split(cfg)
        return TaskData(
            train=InMemoryDataset(xtr, ytr),
            val=InMemoryDataset(xva, yva),
            num_classes=10,
            class_names=[str(i) for i in range(10)],
        )

    def probe_shape(self, cfg: dict[str, Any]) -> tuple[int, ...]:
        return (1, 8, 8)

    def train_samples(self, cfg: dict[str, Any]) -> int:
        return len(_split(cfg)[1])

    def build_model(self, arch: str, data: TaskData, cfg: dict[str, Any], hp: dict[str, Any]) -> ClassifierNet:
        return cnn(ARCHS[arch], data.num_classes)

    def class_hierarchy(self, class_names: list[str]) -> dict[str, str]:
        return groups_to_parents(DIGIT_GROUPS)
