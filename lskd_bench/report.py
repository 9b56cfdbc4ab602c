"""``lskd-bench report``: one self-contained HTML page of a run directory (no server, no network).

The page holds what the other commands write, produced by the same functions: per-cell status
(``runners.status``), the leaderboard tables with the paper's numbers and deltas (``leaderboard``), per task
the alpha x T heatmap of the students' mean metric and the methods' comparison with its tests
(``leaderboard.compare``), the training curves (``analysis.curves``) and the environment block. Their markdown
is turned into HTML tables here; figures are PNGs inlined as ``data:`` URIs, CSS and the few lines of
JavaScript that sort a table by a clicked column are inline too.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import tempfile
import unicodedata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, store
from .analysis.curves import plot_curves
from .errors import UsageError
from .leaderboard import collect, environment_md, to_markdown
from .leaderboard.compare import NO_T, Comparison, compare
from .runners.status import status_rows

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;
padding:0 24px 48px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:24px 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}h4{font-size:14px;margin:16px 0 6px}
nav a{margin-right:14px}.meta{color:#666}
table{border-collapse:collapse;margin:8px 0 12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f5;cursor:pointer;user-select:none;white-space:nowrap}th.asc::after{content:" \\25B2"}
th.desc::after{content:" \\25BC"}tr:nth-child(even) td{background:#fafafa}
td.state-finished{color:#137333}td.state-failed,td.state-damaged{color:#c5221f;font-weight:600}
td.state-running,td.state-queued{color:#1a73e8}td.state-interrupted,td.state-pending{color:#b06000}
img{max-width:100%;height:auto;border:1px solid #eee;margin:6px 0}pre{white-space:pre-wrap}
.err{color:#c5221f}
"""

# click a header: sort the table's body rows by that column (cells that start with a number by it, the rest as
# text); click again: reverse
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("thead th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      function key(row) {
        var text = row.cells[col] ? row.cells[col].textContent.trim() : "";
        var num = /^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i.exec(text);  // a cell that starts with a number
        return num ? parseFloat(num[0]) : text.toLowerCase();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


# ------------------------------------------------------------------------------------------ escaping
# Every string read from a run directory (task, method, architecture and cell names, env values, error details)
# reaches the page through ``_text`` (element content and attribute values: ``& < > " '`` escaped) or, as an id,
# through ``Slugs`` (``[a-z0-9-]`` only); nothing from data is ever placed in a script, a style or a URL.
def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


_NOT_SLUG = re.compile(r"[^a-z0-9]+")


class Slugs:
    """Element ids from data: ``[a-z0-9-]`` only, and unique on the page (two names that slug alike get ``-2``,
    ``-3``...; the page's own ids are reserved first)."""

    def __init__(self, reserved: tuple[str, ...] = ()):
        self.taken: set[str] = set(reserved)

    def __call__(self, prefix: str, name: Any) -> str:
        ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
        base = f"{prefix}-" + (_NOT_SLUG.sub("-", ascii_name.lower()).strip("-") or "x")
        sid, n = base, 2
        while sid in self.taken:
            sid, n = f"{base}-{n}", n + 1
        self.taken.add(sid)
        return sid


# ------------------------------------------------------------------------------------------ markdown
def _inline(text: str) -> str:
    out = _text(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"(?<![\w])_([^_]+)_(?![\w])", r"<em>\1</em>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_html(md: str) -> str:
    """The markdown the tables are written in (headings, pipe tables, lists, paragraphs) as HTML."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        heading = re.match(r"(#{1,6})\s+(.*)", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
        elif re.match(r"\s*- ", line):
            items = []
            while i < len(lines) and re.match(r"\s*- ", lines[i]):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,6}\s|\s*\||\s*- )", lines[i]):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def _table(block: list[str]) -> str:
    head = _cells(block[0])
    body = [_cells(b) for b in block[1:] if not re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", b)]
    return html_table(head, body, raw=True)


def html_table(head: list[str], rows: list[list[Any]], raw: bool = False, classes: list[str] | None = None) -> str:
    """A sortable table; ``raw``: the cells are markdown (else plain text)."""
    fmt = _inline if raw else _text
    th = "".join(f"<th>{fmt(h)}</th>" for h in head)
    trs = []
    for j, row in enumerate(rows):
        cls = (classes or [None] * len(rows))[j]
        tds = "".join(
            (f'<td class="{_text(cls)}">' if cls and k == 1 else "<td>") + fmt(c) + "</td>" for k, c in enumerate(row)
        )
        trs.append(f"<tr>{tds}</tr>")
    return f'<table class="sortable"><thead><tr>{th}</tr></thead><tbody>{"".join(trs)}</tbody></table>'


# ------------------------------------------------------------------------------------------ figures
def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str) -> str:
    return f'<img src="{_png_uri(data)}" alt="{_text(alt)}">'


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


# ------------------------------------------------------------------------------------------ sections
def _status_section(runs: Path) -> str:
    rows = status_rows(runs)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    body = [[r["cell"], r["state"], r["job"] or "", r["detail"]] for r in rows]
    table = html_table(["cell", "state", "job", "detail"], body, classes=[f"state-{r['state']}" for r in rows])
    return f"<p>{_text(summary)}</p>{table}"


def _task_sections(runs: Path, rows: list[dict[str, Any]], work: Path) -> list[tuple[str, str]]:
    """Per task with KD students: its heatmap, and the comparison of its methods with the tests."""
    out = []
    for task in sorted({r["task"] for r in rows if r["role"] == "student"}):
        methods = sorted({r["method"] for r in rows if r["task"] == task and r["role"] == "student"})
        baseline = "kd" if "kd" in methods else methods[0]
        primary = next(r["primary"] for r in rows if r["task"] == task)
        parts = []
        try:
            png = heatmap_png(Comparison(rows, task, primary, baseline))  # rows' _config: configs apart
            if png is not None:
                parts.append(
                    f"<h3>{_text(task)}: α × T ({_text(primary)})</h3>" + _img(png, f"{task} alpha x T heatmap")
                )
            text, paths = compare(runs, work / f"compare_{task}", baseline=baseline, task=task)
            text = text.split("\nEnvironment:\n", 1)[0]  # the environment has its own section
            parts.append(markdown_html(text))
            for p in paths:
                if p.suffix == ".png":
                    parts.append(_img(p.read_bytes(), f"{task}: {primary} vs T"))
        except UsageError as exc:
            parts.append(f'<p class="err">{_text(str(exc))}</p>')
        out.append((task, "\n".join(parts)))
    return out


def _curves_section(runs: Path, work: Path) -> str:
    try:
        paths = plot_curves(runs, work / "curves")
    except UsageError as exc:
        return f'<p class="err">{_text(str(exc))}</p>'
    parts = []
    for p in paths:
        parts.append(f"<h3>{_text(p.parent.name)}: {_text(p.stem)}</h3>" + _img(p.read_bytes(), p.stem))
    return "\n".join(parts)


PAGE_IDS = ("status", "leaderboard", "curves", "environment", "problems")


def build_report(runs: Path) -> str:
    """The page's HTML."""
    runs = Path(runs)
    problems: list[str] = []
    rows = collect(runs, "selected", problems)
    if not rows and not status_rows(runs):
        raise UsageError(f"no cells under {runs}")
    ids = Slugs(reserved=PAGE_IDS)  # ids from data: slugs, unique, never one of the page's own
    sections: list[tuple[str, str, str]] = [("status", "Cells", _status_section(runs))]
    with tempfile.TemporaryDirectory(prefix="lskd-report-") as tmp:
        work = Path(tmp)
        if rows:
            sections.append(("leaderboard", "Leaderboard", markdown_html(to_markdown(rows))))
            for task, body in _task_sections(runs, rows, work):
                sections.append((ids("compare", task), f"{task}: methods and α × T", body))
            sections.append(("curves", "Training curves", _curves_section(runs, work)))
            sections.append(("environment", "Environment", markdown_html(environment_md(rows))))
    if problems:
        items = "".join(f"<li>{_text(p)}</li>" for p in problems)
        sections.append(("problems", "Unreadable results", f"<ul>{items}</ul>"))
    nav = " ".join(f'<a href="#{_text(sid)}">{_text(title)}</a>' for sid, title, _ in sections)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = "\n".join(
        f'<section id="{_text(sid)}"><h2>{_text(title)}</h2>\n{content}\n</section>' for sid, title, content in sections
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lskd-bench report: {_text(str(runs))}</title><style>{CSS}</style></head>\n<body>\n"
        f'<h1>lskd-bench report</h1><p class="meta">{_text(str(runs.resolve()))} · {len(rows)} finished '
        f"cells · written {stamp} by lskd-bench {__version__} · click a column header to sort a table</p>\n"
        f"<nav>{nav}</nav>\n{body}\n<script>{SORT_JS}</script>\n</body></html>\n"
    )


def write_report(runs: Path, out: Path | str, follow: bool = True) -> tuple[str, int]:
    """Write the page to the output file ``out`` (``store.write_output``: ``-`` is stdout); return how it was
    written (``store.output_kind``) and its size in bytes."""
    data = build_report(runs).encode("utf-8")
    return store.write_output(out, lambda f: f.write(data), follow=follow), len(data)
