"""``lskd-bench visualize``: penultimate-layer projections in one grid figure (rows: teacher alpha;
columns: the teacher, then its students by T), by the official algorithm (``projection.official_projection``):
the first ``per_class`` exported samples of each class (deterministic transforms), PCA fitted on the training
projections and centroids of each model and reused for its validation points; centroids drawn as stars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import store
from ..errors import UsageError
from ..tasks import get_task
from .projection import official_projection
from .runs import CellRecord, RunIndex, resolve_class

PANEL_INCHES = 3.0
DPI = 100
COLORS = ("#1f77b4", "#d62728", "#2ca02c")


def _first(labels: np.ndarray, classes: Sequence[int], per_class: int | None) -> np.ndarray:
    """The first ``per_class`` samples of each class, in export order (the official code's choice)."""
    return np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in classes])


def panel_points(
    record: CellRecord, classes: Sequence[str], split: str, per_class: int | None, val_per_class: int | None = 50
):
    """(2-D points, their labels, 2-D centroids, class indexes, class names) of one model's panel."""
    f = record.features()
    names = [str(c) for c in f["class_names"]]
    idx = [resolve_class(c, names) for c in classes]
    parts = {}
    for s, n in (("train", per_class), ("val", val_per_class)):
        keep = _first(f[f"{s}_labels"], idx, n)
        parts[s] = (f[f"{s}_features"][keep], f[f"{s}_labels"][keep])
    if "head_bias" not in f:
        raise UsageError(f"{record.dir} exports no head bias (re-train it with this version of lskd-bench)")
    (tr_pts, tr_c), (va_pts, va_c) = official_projection(
        parts["train"], f["head_weight"], f["head_bias"], idx, [parts["val"]]
    )
    pts, cents = (tr_pts, tr_c) if split == "train" else (va_pts, va_c)
    return pts, parts[split][1], cents, idx, [names[i] for i in idx]


def visualize(
    runs: Path,
    classes: Sequence[str],
    out: Path,
    split: str = "train",
    task: str | None = None,
    method: str = "kd",
    seed: int | None = None,
    per_class: int | None = 150,
    val_per_class: int | None = 50,
    problems: list[str] | None = None,
    follow: bool = True,
) -> tuple[Path, tuple[int, int]]:
    """Draw the grid figure to the output file ``out`` (PNG, ``store.write_output``); return the path and its
    (width, height) in pixels."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # names from result.json are text, never mathtext ($)
    import matplotlib.pyplot as plt

    index = RunIndex(runs, task, problems)
    if not classes:
        classes = list(get_task(index.task).projection_classes)
        if not classes:
            raise UsageError(f"task {index.task!r} has no default classes to project: give --classes A,B,C")
    if len(classes) != 3:
        raise UsageError(f"--classes needs exactly 3 classes, got {len(classes)}")
    if split not in ("train", "val"):
        raise UsageError(f"--split must be train or val, got {split!r}")
    students = index.students(method, seed)
    teachers = index.teachers()
    alphas = sorted({float(r.cell["alpha"]) for r in students + teachers})
    temps = sorted({float(r.cell["T"]) for r in students})
    ncols, nrows = 1 + len(temps), len(alphas)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_INCHES * ncols, PANEL_INCHES * nrows), dpi=DPI, squeeze=False)
    for i, alpha in enumerate(alphas):
        panels = [("teacher", index.find(teachers, alpha))] + [
            (f"T = {t:g}", index.find(students, alpha, t)) for t in temps
        ]
        for j, (label, rec) in enumerate(panels):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"α = {alpha:g}, {label}", fontsize=9)
            if rec is None:
                ax.text(0.5, 0.5, "not trained", ha="center", va="center", transform=ax.transAxes)
                continue
            pts, labels, cents, idx, names = panel_points(rec, classes, split, per_class, val_per_class)
            for color, k, name, c in zip(COLORS, idx, names, cents):
                m = labels == k
                ax.scatter(pts[m, 0], pts[m, 1], s=6, c=color, alpha=0.6, label=name, linewidths=0)
                ax.scatter([c[0]], [c[1]], s=80, c=color, marker="*", edgecolors="black", linewidths=0.6)
            if i == 0 and j == 0:
                ax.legend(fontsize=7, loc="best", markerscale=2)
    fig.suptitle(f"{index.task}: penultimate-layer projection ({split})", fontsize=10)
    store.write_output(out, lambda f: fig.savefig(f, dpi=DPI, format="png"), follow=follow)
    plt.close(fig)
    return Path(out), (int(PANEL_INCHES * DPI * ncols), int(PANEL_INCHES * DPI * nrows))
