"""``lskd-bench report``: one self-contained HTML page of a run directory (no server, no network).

The page holds what the other commands write, produced by the same functions: a table of every cell
(``report.cells``: its state as ``runners.status``, grid values, primary metric at the selected epoch;
filterable and sortable), the leaderboard tables with the paper's numbers and deltas (``leaderboard``), per task
the alpha x T heatmap of the students' mean metric, the methods' comparison with its tests and the metric
against T (``leaderboard.compare``), the training curves (``analysis.curves``, overlaid per task and method) and
the environment block. Their markdown is turned into HTML tables here (``report.markup``).

Charts are interactive (``report.charts``: plotly.js, hover, zoom, T on a log axis) where the ``report`` extra
(``plotly``) is installed, with the library's JavaScript inline; without it they are the static PNGs of
``report.figures`` (and the page says so in one line). CSS, the page's own JavaScript, the chart data and the
images are inline too, and a Content-Security-Policy forbids the page any request: it fetches nothing.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__, store
from ..analysis.curves import group_results, plot_curves
from ..errors import UsageError
from ..leaderboard import collect, environment_md, to_markdown
from ..leaderboard.compare import Comparison, compare
from . import cells, charts
from .figures import heatmap_png, img
from .markup import CSS, TABLE_JS, Slugs, filter_bar, html_table, json_script, markdown_html, text

__all__ = ["Slugs", "build_report", "html_table", "markdown_html", "write_report"]

# the page may load nothing: inline scripts and styles, data: images; no fetch, frame, font or form target
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "font-src 'none'; connect-src 'none'; frame-src 'none'; form-action 'none'; base-uri 'none'"
)
STATIC_NOTE = (
    "Static figures: the interactive charts (hover, zoom, log-scale T) need the report extra "
    "(pip install 'lskd-bench[report]')."
)
PAGE_IDS = ("status", "cells-table", "leaderboard", "curves", "environment", "problems", "chart-data")


class Charts:
    """The interactive charts of one page: each ``add`` returns the element that plotly draws into."""

    def __init__(self, ids: Slugs):
        self.ids, self.specs = ids, []

    def add(self, kind: str, name: str, figure: dict[str, Any], wide: bool = False) -> str:
        cid = self.ids(f"chart-{kind}", name)
        self.specs.append({"id": cid, **figure})
        return f'<div class="chart{" wide" if wide else ""}" id="{text(cid)}" data-kind="{text(kind)}"></div>'

    def script(self) -> str:
        return json_script({"charts": self.specs, "config": charts.CONFIG}, "chart-data")


# ------------------------------------------------------------------------------------------ sections
def _cells_section(rows: list[list[Any]], states: list[str]) -> str:
    counts: dict[str, int] = {}
    for s in states:
        counts[s] = counts.get(s, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    table = html_table(
        cells.HEAD, rows, classes=[f"state-{s}" for s in states], class_col=cells.STATE_COL, table_id="cells-table"
    )
    return f"<p>{text(summary)}</p>" + filter_bar("cells-table", cells.HEAD, rows, cells.FILTERS) + table


def _task_sections(
    runs: Path, rows: list[dict[str, Any]], work: Path, ids: Slugs, live: Charts | None
) -> list[tuple[str, str]]:
    """Per task with KD students: its heatmap, the comparison of its methods with the tests, the metric vs T."""
    out = []
    for task in sorted({r["task"] for r in rows if r["role"] == "student"}):
        methods = sorted({r["method"] for r in rows if r["task"] == task and r["role"] == "student"})
        baseline = "kd" if "kd" in methods else methods[0]
        primary = next(r["primary"] for r in rows if r["task"] == task)
        parts = []
        try:
            cmp = Comparison(rows, task, primary, baseline)
            heading = f"<h3>{text(task)}: α × T ({text(primary)})</h3>"
            if live is not None:
                maps = charts.heatmap_figures(cmp)
                if maps:
                    divs = "".join(live.add("heatmap", f"{task}-{m}", fig) for m, fig in maps)
                    parts.append(heading + f'<div class="charts">{divs}</div>')
            else:
                png = heatmap_png(cmp)
                if png is not None:
                    parts.append(heading + img(png, f"{task} alpha x T heatmap"))
            prefix = work / f"compare_{ids('work', task)}"
            md, paths = compare(runs, prefix, baseline=baseline, task=task, plot=live is None)
            parts.append(markdown_html(md.split("\nEnvironment:\n", 1)[0]))  # the environment has its own section
            if live is not None:
                fig = charts.vs_t_figure(cmp)
                if fig is not None:
                    parts.append(live.add("vs-t", task, fig, wide=True))
            else:
                parts += [img(p.read_bytes(), f"{task}: {primary} vs T") for p in paths if p.suffix == ".png"]
        except UsageError as exc:
            parts.append(f'<p class="err">{text(str(exc))}</p>')
        out.append((task, "\n".join(parts)))
    return out


def _curves_section(runs: Path, work: Path, live: Charts | None) -> str:
    try:
        if live is None:
            paths = plot_curves(runs, work / "curves")
            return "\n".join(
                f"<h3>{text(p.parent.name)}: {text(p.stem)}</h3>" + img(p.read_bytes(), p.stem) for p in paths
            )
        parts = []
        for task, groups in sorted(group_results(runs).items()):
            for key, results in charts.curve_groups(groups).items():
                fig = charts.curves_figure(task, key, results)
                parts.append(live.add("curves", f"{task}-{'-'.join(map(str, key))}", fig, wide=True))
        return "\n".join(parts)
    except UsageError as exc:
        return f'<p class="err">{text(str(exc))}</p>'


def build_report(runs: Path, interactive: bool | None = None) -> str:
    """The page's HTML; ``interactive``: plotly charts (None: where plotly is installed; False: static PNGs)."""
    runs = Path(runs)
    problems: list[str] = []
    rows = collect(runs, "selected", problems)
    cell_rows, states = cells.cell_rows(runs)
    if not rows and not cell_rows:
        raise UsageError(f"no cells under {runs}")
    lib = charts.plotly_js() if interactive is not False else None
    if interactive and lib is None:
        raise UsageError("interactive charts need plotly: pip install 'lskd-bench[report]'")
    ids = Slugs(reserved=PAGE_IDS)  # ids from data: slugs, unique, never one of the page's own
    live = Charts(ids) if lib is not None else None
    sections: list[tuple[str, str, str]] = [("status", "Cells", _cells_section(cell_rows, states))]
    with tempfile.TemporaryDirectory(prefix="lskd-report-") as tmp:
        work = Path(tmp)
        if rows:
            sections.append(("leaderboard", "Leaderboard", markdown_html(to_markdown(rows))))
            for task, body in _task_sections(runs, rows, work, ids, live):
                sections.append((ids("compare", task), f"{task}: methods and α × T", body))
            sections.append(("curves", "Training curves", _curves_section(runs, work, live)))
            sections.append(("environment", "Environment", markdown_html(environment_md(rows))))
    if problems:
        items = "".join(f"<li>{text(p)}</li>" for p in problems)
        sections.append(("problems", "Unreadable results", f"<ul>{items}</ul>"))
    nav = " ".join(f'<a href="#{text(sid)}">{text(title)}</a>' for sid, title, _ in sections)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = "\n".join(
        f'<section id="{text(sid)}"><h2>{text(title)}</h2>\n{content}\n</section>' for sid, title, content in sections
    )
    hint = "click a column header to sort a table" + (", hover a chart for values, drag to zoom" if live else "")
    missing = interactive is None and lib is None and rows  # static because plotly is missing, not asked for
    note = f'<p class="note">{text(STATIC_NOTE)}</p>\n' if missing else ""
    scripts = f"<script>{TABLE_JS}</script>\n"
    if live is not None:
        scripts += f"{live.script()}\n<script>{lib}</script>\n<script>{charts.CHARTS_JS}</script>\n"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{text(CSP)}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lskd-bench report: {text(str(runs))}</title><style>{CSS}</style></head>\n<body>\n"
        f'<h1>lskd-bench report</h1><p class="meta">{text(str(runs.resolve()))} · {len(rows)} finished '
        f"cells · written {stamp} by lskd-bench {__version__} · {hint}</p>\n{note}"
        f"<nav>{nav}</nav>\n{body}\n{scripts}</body></html>\n"
    )


def write_report(runs: Path, out: Path | str, follow: bool = True, interactive: bool | None = None) -> tuple[str, int]:
    """Write the page (``build_report``) to the output file ``out`` (``store.write_output``: ``-`` is stdout);
    return how it was written (``store.output_kind``) and its size in bytes."""
    data = build_report(runs, interactive).encode("utf-8")
    return store.write_output(out, lambda f: f.write(data), follow=follow), len(data)
