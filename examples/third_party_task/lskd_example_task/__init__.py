"""A third-party task for lskd-bench: Gaussian blobs (4 classes in 16 dimensions, overlapping), made from a seed.

Its recipe is ``blobs.yaml`` beside this module (``recipe = "blobs"``: lskd-bench reads it from this package's
resources); it reports the ``ece`` metric of this package (``calibration.py``) besides top-1/top-5.
"""

from __future__ import annotations

import torch
from torch import nn

from lskd_bench.schema import Field, Section
from lskd_bench.tasks import ClassifierNet, InMemoryDataset, Task, TaskData

ARCHS = {"mlp_wide": (64, 64), "mlp_tiny": (8,)}
DIM, CLASSES = 16, 4


class BlobsTask(Task):
    name = "blobs"
    description = "example plugin: 4 overlapping Gaussian blobs in 16-D, mlp_wide -> mlp_tiny"
    recipe = "blobs"  # blobs.yaml, next to this module
    extra_metrics = ("ece",)  # a registered metric (this package's entry point), after top-1/top-5
    data_schema = Section(
        {
            "samples": Field(int, 400, "training samples per class", min=1),
            "seed": Field(int, 0, "seed the blobs are drawn from", min=0),
        }
    )

    def load_data(self, cfg, cache_dir=None) -> TaskData:
        g = torch.Generator().manual_seed(cfg["data"]["seed"])
        centres = torch.randn(CLASSES, DIM, generator=g)
        n = cfg["data"]["samples"]
        y = torch.arange(CLASSES).repeat_interleave(n + n // 4)
        x = centres[y] + 1.5 * torch.randn(len(y), DIM, generator=g)
        test = torch.arange(len(y)) % (n + n // 4) >= n  # the last quarter of each class
        return TaskData(
            train=InMemoryDataset(x[~test], y[~test]),
            val=InMemoryDataset(x[test], y[test]),
            num_classes=CLASSES,
            class_names=[f"blob{i}" for i in range(CLASSES)],
        )

    def build_model(self, arch, data, cfg, hp) -> ClassifierNet:
        layers, width = [], DIM
        for w in ARCHS[arch]:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        return ClassifierNet(nn.Sequential(*layers), width, data.num_classes)
