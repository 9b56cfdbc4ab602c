"""Penultimate features for the analysis commands (``analyze``, ``visualize``): ``features.npz`` of a cell.

Nothing computes them while a grid trains (``analysis.export`` false, the default): the first ``analyze`` or
``visualize`` that reads a cell computes them from its final weights (``model.pt``, the last epoch, as the export
at the end of training did) and caches the file in the cell's directory (``runners.inference.cell_features``).
``analysis.export: true`` writes them at the end of training instead, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import store
from ..outputs import Layout, Tap
from ..tasks import TaskData, iterate_batches
from ..tasks.base import autocast, eval_batch_size, on_bad_sample


@torch.inference_mode()
def penultimate(model: nn.Module, ds, cfg: dict[str, Any], device: torch.device, indices=None) -> np.ndarray:
    """The named output ``embedding`` (the head's input) of every sample of ``ds``."""
    model.eval()
    feats = []
    batch = eval_batch_size(model, ds, cfg, device)
    for x, _ in iterate_batches(
        ds, batch, indices=indices, num_workers=cfg["num_workers"], on_bad_sample=on_bad_sample(cfg)
    ):
        with autocast(device, cfg), Tap(model, Layout(), ["embedding"]) as tap:
            model(x.to(device))
        feats.append(tap.out["embedding"].float().cpu())
    return torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)


def _per_class_indices(labels: torch.Tensor, cap: int | None) -> torch.Tensor | None:
    if cap is None:
        return None
    keep = []
    for c in labels.unique().tolist():
        keep.append(torch.nonzero(labels == c).flatten()[: int(cap)])
    return torch.cat(keep).sort().values


def export_features(model: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device, path: Path) -> None:
    """Save what the diffusion analysis needs: penultimate features + labels (train and val) and the head."""
    an = cfg["analysis"]
    out: dict[str, np.ndarray] = {}
    for split, key, cap in (("train_eval", "train", an["train_per_class"]), ("val", "val", an["val_per_class"])):
        labels = data.labels(split)
        idx = _per_class_indices(labels, cap)
        out[f"{key}_features"] = penultimate(model, data.split(split), cfg, device, idx)
        out[f"{key}_labels"] = (labels if idx is None else labels[idx]).numpy()
    out["head_weight"] = model.head.weight.detach().float().cpu().numpy()
    out["head_bias"] = model.head.bias.detach().float().cpu().numpy()
    out["class_names"] = np.array(data.class_names)

    def write(f):
        np.savez_compressed(f, **out)

    store.atomic_write(path, write)
