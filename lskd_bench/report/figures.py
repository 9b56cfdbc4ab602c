"""The page's static figures (PNG, inlined as ``data:`` URIs): the alpha x T heatmap drawn here, and the
figures ``compare`` and ``plot`` draw. The page shows them where plotly (the ``report`` extra) is not
installed."""

from __future__ import annotations

import base64
import io
import math

from ..leaderboard.compare import NO_T, Comparison
from .markup import text


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img(data: bytes, alt: str) -> str:
    return f'<img src="{png_uri(data)}" alt="{text(alt)}">'


def heatmap_png(cmp: Comparison) -> bytes | None:
    """Mean metric over seeds of each (method, alpha, T) student cell (``Comparison.cells_by_row``), one panel per
    method (per config it ran, where configs differ) with a T axis: rows alpha, columns T. None when no method has
    one."""
    by_row = [(row, c) for row, c in cmp.cells_by_row() if c["T"] != NO_T]
    cells = [c for _, c in by_row]
    methods = [row for row in cmp.rows if any(r == row for r, _ in by_row)]  # a method's configs: a panel each
    if not methods:
        return None
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # names from result.json are text, never mathtext ($)
    import matplotlib.pyplot as plt

    alphas = sorted({c["alpha"] for c in cells})
    temps = sorted({c["T"] for c in cells})
    cols = min(3, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.2 + 1.1 * len(temps) * cols, 0.9 + 0.55 * len(alphas) * rows + 0.6), squeeze=False
    )
    values = [c["mean"] for c in cells]
    lo, hi = min(values), max(values)
    reverse = not cmp.spec.higher_is_better
    for ax, m in zip(axes.flat, methods):
        grid = [[math.nan] * len(temps) for _ in alphas]
        for row, c in by_row:
            if row == m:
                grid[alphas.index(c["alpha"])][temps.index(c["T"])] = c["mean"]
        im = ax.imshow(grid, cmap="viridis_r" if reverse else "viridis", vmin=lo, vmax=hi, aspect="auto")
        for r in range(len(alphas)):
            for k, _ in enumerate(temps):
                v = grid[r][k]
                if not math.isnan(v):
                    shade = (v - lo) / (hi - lo) if hi > lo else 0.5
                    light = shade < 0.5 if not reverse else shade > 0.5
                    ax.text(k, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if light else "black")
        ax.set_xticks(range(len(temps)), [f"{t:g}" for t in temps])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("T")
        ax.set_ylabel("teacher α")
        ax.set_title(cmp.label(m), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.suptitle(f"{cmp.task}: student {cmp.metric}, mean over seeds", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
