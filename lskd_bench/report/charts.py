"""The page's interactive charts: plotly.js figures (hover, zoom, legend toggles), described here as plain data.

The library is the ``plotly.min.js`` bundled in the ``plotly`` wheel (the ``report`` extra), inlined into the
page, so the page still fetches nothing; ``plotly_js`` is None where it is not installed and the page falls back
to static PNGs. Every string from a run directory that a figure shows (task, method and architecture names) goes
through ``label``: plotly reads a small HTML subset in its text (``<b>``, ``<a href>``...), so ``&``, ``<`` and
``>`` are entities it shows as characters. The figures themselves reach the page as JSON (``markup.json_script``).
"""

from __future__ import annotations

import html
import importlib.resources
import importlib.util
import math
import statistics
from collections import defaultdict
from functools import cache
from typing import Any

from ..analysis.curves import metric_title
from ..leaderboard import config_order, config_text
from ..leaderboard.compare import NO_T, Comparison
from ..tasks import result_metrics

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
CONFIG = {  # plotly's options for every chart: no logo link, no "edit in Chart Studio", no MathJax
    "displaylogo": False,
    "responsive": True,
    "typesetMath": False,
    "showLink": False,
    "showSendToCloud": False,
    "showEditInChartStudio": False,
}

# draws every chart described in the JSON element #chart-data (a list of {id, data, layout})
CHARTS_JS = """
(function () {
  var el = document.getElementById("chart-data");
  if (!el || typeof Plotly === "undefined") { return; }
  var spec = JSON.parse(el.textContent);
  spec.charts.forEach(function (c) { Plotly.newPlot(c.id, c.data, c.layout, spec.config); });
})();
"""


@cache
def plotly_js() -> str | None:
    """plotly.js from the installed ``plotly`` package (``plotly/package_data/plotly.min.js``), or None."""
    if importlib.util.find_spec("plotly") is None:
        return None
    path = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def label(value: Any) -> str:
    """A string from data as plotly text: shown as written, never read as plotly's HTML subset."""
    return html.escape(str(value), quote=False)


def number(value: Any) -> float | None:
    """A value from a result file as a JSON number: None where it is not a finite number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _axis(title: str, **kw: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "automargin": True, **kw}


def _layout(title: str, **kw: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "hovermode": "closest",
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "legend": {"font": {"size": 11}},
        **kw,
    }


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def vs_t_figure(cmp: Comparison) -> dict[str, Any] | None:
    """The task's metric against T on a log axis: one line per (method, alpha), mean ± std over seeds (error
    bars); methods without T, the no-KD student and the teachers as horizontal lines. None without a T."""
    temps = sorted({t for (_, _, t) in cmp.values if t != NO_T})
    if not temps:
        return None
    span = [temps[0], temps[-1]] if len(temps) > 1 else [temps[0] / 1.5, temps[0] * 1.5]
    data: list[dict[str, Any]] = []
    colour = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(cmp.alphas)}
    for i, row in enumerate(cmp.rows):  # a method, or each config it ran where configs differ (never averaged)
        m = cmp.label(row)
        for a in cmp.alphas:
            pts = sorted((t, v) for (rr, aa, t), v in cmp.values.items() if rr == row and aa == a and t != NO_T)
            name = label(f"{m}, α = {a:g}")
            if pts:
                stats = [_ms(v) for _, v in pts]
                data.append({
                    "type": "scatter", "mode": "lines+markers", "name": name, "legendgroup": label(m),
                    "x": [t for t, _ in pts], "y": [s[0] for s in stats],
                    "error_y": {"type": "data", "array": [s[1] for s in stats], "visible": True},
                    "text": [f"n = {len(v)}" for _, v in pts],
                    "line": {"color": colour[a], "dash": DASHES[i % len(DASHES)]},
                })  # fmt: skip
            elif cmp.values.get((row, a, NO_T)):
                mean, _ = _ms(cmp.values[(row, a, NO_T)])
                data.append({
                    "type": "scatter", "mode": "lines", "name": name + " (no T)", "legendgroup": label(m),
                    "x": span, "y": [mean, mean], "line": {"color": colour[a], "dash": "dash", "width": 1},
                })  # fmt: skip
    refs = [
        (f"teacher, α = {a:g}" + (f" ({config_text(cfg)})" if cfg else ""), values, colour[a], "legendonly")
        for (cfg, a), values in sorted(cmp.teacher.items(), key=lambda kv: (kv[0][1], config_order(kv[0][0])))
        if values
    ]
    refs += [
        ("no KD" + (f" ({config_text(cfg)})" if cfg else ""), values, "black", True)
        for cfg, values in sorted(cmp.no_kd.items(), key=lambda kv: config_order(kv[0]))
        if values
    ]
    for name, values, col, visible in refs:
        mean, _ = _ms(values)
        data.append({
            "type": "scatter", "mode": "lines", "name": label(name), "x": span, "y": [mean, mean],
            "line": {"color": col, "dash": "dot", "width": 1}, "visible": visible,
        })  # fmt: skip
    title = label(f"{cmp.task}: {cmp.metric} vs T (mean ± std over seeds)")
    layout = _layout(
        title,
        xaxis=_axis("T (log scale)", type="log", tickvals=temps, ticktext=[f"{t:g}" for t in temps]),
        yaxis=_axis(label(cmp.metric)),
    )
    return {"data": data, "layout": layout}


def heatmap_figures(cmp: Comparison) -> list[tuple[str, dict[str, Any]]]:
    """Per method with a T axis (per config it ran, where configs differ): (its label, the alpha x T heatmap of its
    students' mean metric over seeds), one colour scale for all (the metric's direction: the better, the
    brighter)."""
    by_row = [(row, c) for row, c in cmp.cells_by_row() if c["T"] != NO_T]
    cells = [c for _, c in by_row]
    if not cells:
        return []
    alphas = sorted({c["alpha"] for c in cells})
    temps = sorted({c["T"] for c in cells})
    lo, hi = min(c["mean"] for c in cells), max(c["mean"] for c in cells)
    out = []
    for row in cmp.rows:  # a method, or each config it ran where configs differ (never averaged)
        m = cmp.label(row)
        mine = {(c["alpha"], c["T"]): c for r, c in by_row if r == row}
        if not mine:
            continue
        z = [[mine[(a, t)]["mean"] if (a, t) in mine else None for t in temps] for a in alphas]
        n = [[mine[(a, t)]["n"] if (a, t) in mine else 0 for t in temps] for a in alphas]
        trace = {
            "type": "heatmap", "x": [f"{t:g}" for t in temps], "y": [f"{a:g}" for a in alphas], "z": z,
            "customdata": n, "zmin": lo, "zmax": hi, "colorscale": "Viridis",
            "reversescale": not cmp.spec.higher_is_better, "texttemplate": "%{z:.2f}",
            "hovertemplate": "T = %{x}<br>α = %{y}<br>mean = %{z:.3f}<br>n = %{customdata}<extra></extra>",
        }  # fmt: skip
        layout = _layout(
            label(f"{m}: student {cmp.metric}, mean over seeds"),
            xaxis=_axis("T", type="category"),
            yaxis=_axis("teacher α", type="category"),
        )
        out.append((m, {"data": [trace], "layout": layout}))
    return out


def curve_groups(groups: dict[tuple, list[dict[str, Any]]]) -> dict[tuple, list[dict[str, Any]]]:
    """``analysis.curves.group_results``' groups of one task merged over seeds: the teachers of one architecture;
    the students of one (student arch, teacher arch, method) with the no-KD students of that arch."""
    merged: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for key, results in groups.items():
        if key[0] == "students":
            key = key[:4]
        elif key[0] == "baseline":
            key = key[:2]
        for r in results:
            merged[key][r["cell_dir"]] = r
    return {k: list(v.values()) for k, v in sorted(merged.items(), key=lambda kv: tuple(map(str, kv[0])))}


def group_label(task: str, key: tuple) -> str:
    if key[0] == "teachers":
        return f"{task}: teachers ({key[1]}), one line per α × seed"
    if key[0] == "baseline":
        return f"{task}: no-KD students ({key[1]}), one line per seed"
    _, arch, t_arch, method = key
    return f"{task}: {method} students {t_arch} → {arch}, one line per α × T × seed (black: no KD)"


def curves_figure(task: str, key: tuple, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Training loss (left) and the primary metric at each evaluated epoch (right) of every cell of a group,
    overlaid: colour the teacher's alpha, dash T, black the no-KD students."""
    metric = results[0].get("primary_metric") or result_metrics(results[0])[0].name

    def order(r: dict[str, Any]) -> tuple:
        c = r["cell"]
        return (c["role"] != "baseline", str(c.get("alpha")), number(c.get("T")) or 0.0, str(c.get("seed")))

    results = sorted(results, key=order)
    alphas = sorted({str(r["cell"].get("alpha")) for r in results})
    temps = sorted({number(r["cell"].get("T")) for r in results} - {None})
    data: list[dict[str, Any]] = []
    losses: list[float] = []
    for r in results:
        c = r["cell"]
        if c["role"] == "baseline":
            name, line = f"no KD, seed {c['seed']}", {"color": "black", "width": 2.5}
        else:
            t = number(c.get("T"))
            name = f"α = {c['alpha']}" + ("" if t is None else f", T = {t:g}") + f", seed {c['seed']}"
            line = {
                "color": PALETTE[alphas.index(str(c.get("alpha"))) % len(PALETTE)],
                "dash": DASHES[temps.index(t) % len(DASHES)] if t is not None else "solid",
                "width": 1.6,
            }
        hist = [h for h in r.get("history") or [] if isinstance(h, dict)]
        loss = [(number(h.get("epoch")), number(h.get("loss"))) for h in hist]
        losses += [v for _, v in loss if v is not None]
        ev = [h for h in hist if isinstance(h.get("eval"), dict) and metric in h["eval"]]
        common = {"type": "scatter", "name": label(name), "legendgroup": label(name), "line": line}
        data.append({**common, "mode": "lines", "x": [e for e, _ in loss], "y": [v for _, v in loss],
                     "showlegend": False, "xaxis": "x", "yaxis": "y"})  # fmt: skip
        data.append({**common, "mode": "lines+markers" if len(ev) < 15 else "lines",
                     "x": [number(h.get("epoch")) for h in ev], "y": [number(h["eval"][metric]) for h in ev],
                     "xaxis": "x2", "yaxis": "y2"})  # fmt: skip
    log_loss = bool(losses) and min(losses) > 0 and max(losses) / min(losses) > 30  # T²-scaled KD losses
    layout = _layout(
        label(group_label(task, key)),
        xaxis=_axis("epoch", domain=[0, 0.45]),
        yaxis=_axis("training loss (own objective)", type="log" if log_loss else "linear"),
        xaxis2=_axis("epoch", domain=[0.55, 1], anchor="y2"),
        yaxis2=_axis(label(metric_title(results[0], metric)), anchor="x2"),
    )
    return {"data": data, "layout": layout}
