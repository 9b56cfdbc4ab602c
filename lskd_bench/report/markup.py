"""The page's markup: escaping, element ids, the markdown the tables are written in as HTML tables, data for the
page's scripts, and the page's own CSS and JavaScript (inline: the page fetches nothing).

Every string read from a run directory (task, method, architecture and cell names, env values, error details)
reaches the page through ``text`` (element content and attribute values: ``& < > " '`` escaped), as an id
through ``Slugs`` (``[a-z0-9-]`` only), or inside ``<script type="application/json">`` through ``json_script``
(``<``, ``>``, ``&``, U+2028 and U+2029 as JSON escapes: no ``</script>``, no ``<!--``); nothing from data is
ever placed in executable script, a style or a URL.
"""

from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;
padding:0 24px 48px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:24px 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}h4{font-size:14px;margin:16px 0 6px}
nav a{margin-right:14px}.meta,.note{color:#666}
table{border-collapse:collapse;margin:8px 0 12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f5;cursor:pointer;user-select:none;white-space:nowrap}th.asc::after{content:" \\25B2"}
th.desc::after{content:" \\25BC"}tr:nth-child(even) td{background:#fafafa}
td.state-finished{color:#137333}td.state-failed,td.state-damaged{color:#c5221f;font-weight:600}
td.state-running,td.state-queued{color:#1a73e8}td.state-interrupted,td.state-pending{color:#b06000}
img{max-width:100%;height:auto;border:1px solid #eee;margin:6px 0}pre{white-space:pre-wrap}
.err{color:#c5221f}.filters label{margin-right:14px}.filters select{margin-left:4px}
.charts{display:flex;flex-wrap:wrap;gap:8px}.chart{min-width:320px;flex:1 1 420px;height:380px}
.chart.wide{flex-basis:100%;height:420px}
"""

# click a header: sort the table's body rows by that column (numbers numerically, before text; empty cells
# last), click again: reverse. A <select> of a table's filter bar shows only the rows whose cell in its column
# has the chosen text (the first option: all); the bar's count says how many rows are shown.
TABLE_JS = """
function sortKey(row, col) {
  var text = row.cells[col] ? row.cells[col].textContent.trim() : "";
  if (text === "" || text === "\\u2014") { return [2, ""]; }
  var num = /^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i.exec(text);  // a cell that starts with a number
  return num ? [0, parseFloat(num[0])] : [1, text.toLowerCase()];
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("thead th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = sortKey(a, col), y = sortKey(b, col);
        var c = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
        return c * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
document.querySelectorAll(".filters").forEach(function (bar) {
  var table = document.getElementById(bar.getAttribute("data-table"));
  var selects = bar.querySelectorAll("select"), count = bar.querySelector(".count");
  function apply() {
    var shown = 0, rows = table.tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      var keep = true;
      selects.forEach(function (s) {
        var col = parseInt(s.getAttribute("data-col"), 10);
        if (s.selectedIndex > 0 && rows[i].cells[col].textContent.trim() !== s.value) { keep = false; }
      });
      rows[i].hidden = !keep;
      if (keep) { shown++; }
    }
    count.textContent = shown + " of " + rows.length + " cells shown";
  }
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  apply();
});
"""


def text(value: Any) -> str:
    """Element content or an attribute value, escaped."""
    return html.escape(str(value), quote=True)


_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_script(data: Any, element_id: str) -> str:
    """``data`` as JSON in a ``<script type="application/json">`` (read with ``JSON.parse(el.textContent)``): the
    characters that could end the element or open a comment in it (``<``, ``>``, ``&``) and the line separators
    JavaScript once treated as newlines are JSON escapes, so no string in ``data`` can leave the element."""
    raw = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in _JSON_ESCAPES.items():
        raw = raw.replace(ch, esc)
    return f'<script type="application/json" id="{text(element_id)}">{raw}</script>'


def _finite(data: Any) -> Any:
    """NaN and infinities (JSON has none) as null."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {str(k): _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


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
def _inline(md: str) -> str:
    out = text(md)
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


def html_table(
    head: list[str],
    rows: list[list[Any]],
    raw: bool = False,
    classes: list[str] | None = None,
    class_col: int = 1,
    table_id: str | None = None,
) -> str:
    """A sortable table; ``raw``: the cells are markdown (else plain text); ``classes``: one per row, set on the
    row's cell in column ``class_col``; ``table_id``: a page id (ours, never from data)."""
    fmt = _inline if raw else text
    th = "".join(f"<th>{fmt(h)}</th>" for h in head)
    trs = []
    for j, row in enumerate(rows):
        cls = (classes or [None] * len(rows))[j]
        tds = "".join(
            (f'<td class="{text(cls)}">' if cls and k == class_col else "<td>") + fmt(c) + "</td>"
            for k, c in enumerate(row)
        )
        trs.append(f"<tr>{tds}</tr>")
    tid = f' id="{text(table_id)}"' if table_id else ""
    return f'<table class="sortable"{tid}><thead><tr>{th}</tr></thead><tbody>{"".join(trs)}</tbody></table>'


def filter_bar(table_id: str, head: list[str], rows: list[list[Any]], columns: list[str]) -> str:
    """A ``<select>`` per column named in ``columns`` (its distinct values, numbers in numeric order), over the
    table ``table_id`` (TABLE_JS filters its rows)."""
    parts = []
    for name in columns:
        col = head.index(name)
        values = sorted({str(r[col]).strip() for r in rows}, key=_value_order)
        opts = '<option value="">all</option>' + "".join(
            f'<option value="{text(v)}">{text(v) or "(empty)"}</option>' for v in values
        )
        parts.append(f'<label>{text(name)}<select data-col="{col}">{opts}</select></label>')
    return f'<div class="filters" data-table="{text(table_id)}">{"".join(parts)}<span class="count note"></span></div>'


def _value_order(v: str) -> tuple:
    try:
        return (0, float(v), "")
    except ValueError:
        return (1 if v else 2, 0.0, v.lower())
