"""``lskd-bench report``: one self-contained HTML page, opened in headless Chromium (Debian's ``chromium``;
CI installs it) and checked on the rendered page: the tables' cells, no console output, no request, the sort
and the filter working, a chart's hover value and its log T axis; the per-cell table against a run directory
written by hand, the static fallback without plotly, and hostile names from result.json shown as text."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from lskd_bench import store
from lskd_bench.leaderboard import collect
from lskd_bench.report import STATIC_NOTE, Slugs, build_report, charts, html_table, markdown_html
from lskd_bench.report.markup import json_script

from .fixtures import fake_results

ARGS = ["--alphas", "0,0.1", "--temperatures", "1,4", "--seeds", "0", "--epochs", "1", "--no-progress"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]

# runs first in the page (before its own scripts): records errors, console.error calls, alert calls, requests
# the page's Content-Security-Policy refused and every resource it loaded; once loaded, writes what the test
# checks into <pre id="probe">: the cells table sorted by its first and its value column both ways, the rows left
# by the method filter set to the option #probe-args names, the charts, and the text plotly shows when the mouse
# moves onto the first point of the metric-vs-T chart
PROBE = """<script>
window.__errors = []; window.__csp = [];
window.addEventListener("error", function (e) {
  __errors.push(String(e.message || ("failed to load " + (e.target && (e.target.src || e.target.href)))));
}, true);
document.addEventListener("securitypolicyviolation", function (e) {
  __csp.push(e.blockedURI + " " + e.violatedDirective); });
window.alert = function (m) { __errors.push("alert " + m); };
(function () { var orig = console.error; console.error = function () {
  __errors.push(Array.prototype.join.call(arguments, " ")); orig.apply(console, arguments); }; })();
window.addEventListener("load", function () { setTimeout(function () {
  var args = JSON.parse(document.getElementById("probe-args").textContent);
  var out = {errors: __errors, csp: __csp};
  out.requests = performance.getEntriesByType("resource").map(function (e) { return e.name; });
  var table = document.getElementById("cells-table"), ths = table.querySelectorAll("th");
  var column = function (k) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[k].textContent; }); };
  var shown = function () { return Array.prototype.filter.call(table.tBodies[0].rows, function (r) {
    return r.offsetParent !== null; }).map(function (r) { return r.cells[0].textContent; }); };
  var value = Array.prototype.map.call(ths, function (th) { return th.textContent; }).indexOf("value");
  ths[0].click(); out.asc = column(0); ths[0].click(); out.desc = column(0);
  ths[value].click(); out.value_asc = column(value); ths[value].click(); out.value_desc = column(value);
  var sel = document.querySelector('.filters select[data-col="3"]');
  out.shown_before = shown();
  sel.selectedIndex = Array.prototype.map.call(sel.options, function (o) { return o.value; }).indexOf(args.method);
  sel.dispatchEvent(new Event("change"));
  out.filtered = shown(); out.count = document.querySelector(".filters .count").textContent;
  sel.selectedIndex = 0; sel.dispatchEvent(new Event("change")); out.shown_after = shown();
  out.charts = Array.prototype.map.call(document.querySelectorAll(".chart"), function (c) {
    return [c.getAttribute("data-kind"), c.querySelectorAll(".main-svg").length > 0]; });
  out.legend = Array.prototype.map.call(document.querySelectorAll(".legendtext"), function (t) {
    return t.textContent; });
  out.titles = Array.prototype.map.call(document.querySelectorAll(".gtitle"), function (t) {
    return t.textContent; });
  var gd = document.querySelector('.chart[data-kind="vs-t"]');
  if (gd && gd._fullLayout) {
    var xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, tr = gd.data[0];
    out.xtype = xa.type; out.first = [tr.name, tr.x[0], tr.y[0]];
    var drag = gd.querySelector(".nsewdrag"), box = drag.getBoundingClientRect();
    drag.dispatchEvent(new MouseEvent("mousemove", {bubbles: true, view: window,
      clientX: box.left + xa.l2p(xa.d2l(tr.x[0])), clientY: box.top + ya.l2p(ya.d2l(tr.y[0]))}));
    out.hover = gd.querySelector(".hoverlayer").textContent;
  }
  out.images = Array.prototype.map.call(document.images, function (i) {
    return [i.alt, i.complete, i.naturalWidth, i.naturalHeight]; });
  out.tables = Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
    return Array.prototype.map.call(t.rows, function (r) {
      return Array.prototype.map.call(r.cells, function (c) { return c.textContent.trim(); }); }); });
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 100); });
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("LSKD_REQUIRE_ALL") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium): the report test must run in CI")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def _plotly() -> None:
    if charts.plotly_js() is None:
        if os.environ.get("LSKD_REQUIRE_ALL") == "1":
            pytest.fail("plotly is not installed (pip install -e '.[report]'): the interactive report must be tested")
        pytest.skip("plotly is not installed (pip install -e '.[report]'): the report's charts are static")


def _render(page: str, tmp_path, method: str) -> tuple[dict, list[str]]:
    """The page opened in headless Chromium with PROBE (its method filter set to ``method``): what PROBE wrote,
    and the browser's console lines."""
    chromium = _chromium()
    probed = tmp_path / "probed.html"
    probe = PROBE + json_script({"method": method}, "probe-args")
    probed.write_text(page.replace("<head>", "<head>" + probe, 1), encoding="utf-8")
    proc = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )  # a hang guard, not a timing
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-3000:]
    return json.loads(html.unescape(found.group(1))), [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]


def _outside_scripts(text: str) -> str:
    """The page without the contents of its script elements (plotly.js holds URLs and markup in strings)."""
    return re.sub(r"(<script[^>]*>).*?(</script>)", r"\1\2", text, flags=re.S)


def _chart_data(text: str) -> dict:
    found = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', text, re.S)
    assert found
    assert "<" not in found.group(1) and "\u2028" not in found.group(1) and "\u2029" not in found.group(1)
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A finished tiny digits grid (2 teachers, 4 KD students, 1 no-KD student) and its report."""
    from lskd_bench.cli import main

    runs = tmp_path_factory.mktemp("report")
    assert main(["run", "--out", str(runs), *ARGS]) == 0
    assert main(["report", "--runs", str(runs)]) == 0
    return runs, runs / "report.html"


@pytest.mark.slow
def test_report_is_one_self_contained_file(report):
    _plotly()
    _runs, page = report
    text = page.read_text(encoding="utf-8")
    html_part = _outside_scripts(text)
    refs = re.findall(r'(?:src|href)="([^"]*)"', html_part)
    assert refs and all(r.startswith("#") for r in refs)  # nothing to fetch: no image either, the charts draw
    assert "http://" not in html_part.replace("http://www.w3.org", "") and "https://" not in html_part
    assert "Content-Security-Policy" in html_part and "default-src 'none'" in html.unescape(html_part)
    assert text.count("<img ") == 0 and html.escape(STATIC_NOTE) not in text
    assert text.count(charts.plotly_js()) == 1  # the library, inline, once
    kinds = re.findall(r'<div class="chart[^"]*" id="([a-z0-9-]+)" data-kind="([a-z-]+)"></div>', text)
    # the alpha x T heatmap of kd, kd's metric vs T, the teachers' curves and the kd students' (with no KD)
    assert [k for _, k in kinds] == ["heatmap", "vs-t", "curves", "curves"]
    assert [c["id"] for c in _chart_data(text)["charts"]] == [i for i, _ in kinds]  # one figure per element
    assert '<section id="status">' in text and '<section id="leaderboard">' in text


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report, tmp_path):
    _plotly()
    runs, page = report
    probe, console = _render(page.read_text(encoding="utf-8"), tmp_path, "kd")
    assert probe["errors"] == [] and probe["csp"] == []
    assert probe["requests"] == []  # the page loaded nothing: no script, style, font or image from anywhere
    assert console == []  # the page writes nothing to the console
    assert probe["images"] == []
    assert probe["charts"] == [["heatmap", True], ["vs-t", True], ["curves", True], ["curves", True]]

    cells_table, leaderboard, *rest = probe["tables"]
    assert cells_table[0] == [
        "cell", "task", "role", "method", "α", "T", "seed", "state", "metric", "value", "epoch", "job", "detail"
    ]  # fmt: skip
    assert len(cells_table) == 1 + 7 and {row[7] for row in cells_table[1:]} == {"finished"}
    names = sorted(row[0] for row in cells_table[1:])
    assert probe["asc"] == names and probe["desc"] == names[::-1]  # the header click sorts
    values = sorted(float(v) for v in probe["value_asc"])
    assert [float(v) for v in probe["value_asc"]] == values  # by number, not as text
    assert [float(v) for v in probe["value_desc"]] == values[::-1]

    rows = collect(runs)  # each finished cell's row: its metric at the selected epoch

    def grid(alpha, t):
        return ("" if alpha == "" else f"{alpha:g}", "" if t == "" else f"{t:g}")

    assert len(rows) == 7
    for r in rows:
        mine = [
            row
            for row in cells_table[1:]
            if (row[2], row[3], *row[4:6]) == (r["role"], r["method"], *grid(r["alpha"], r["T"]))
        ]
        assert len(mine) == 1 and mine[0][8:11] == ["top1", f"{r['metrics']['top1']:.2f}", str(r["epoch"])]
    kd = sorted(row[0] for row in cells_table[1:] if row[3] == "kd")
    assert len(kd) == 4 and len(probe["shown_before"]) == 7
    assert sorted(probe["filtered"]) == kd and probe["count"] == "4 of 7 cells shown"  # the filter hides rows
    assert len(probe["shown_after"]) == 7

    name, x, y = probe["first"]
    assert probe["xtype"] == "log"  # T on a log axis
    assert name == "kd, α = 0" and x == 1
    student = next(r for r in rows if r["method"] == "kd" and r["alpha"] == 0.0 and r["T"] == 1.0)
    assert y == pytest.approx(student["metrics"]["top1"])
    shown = re.search(r"\(1, ([\d.]+)", probe["hover"])  # plotly's hover label: (T, value), the trace's name
    assert shown and float(shown.group(1)) == pytest.approx(y, abs=1e-3) and "kd, α = 0" in probe["hover"]

    teachers = {r["alpha"]: r["metrics"] for r in rows if r["role"] == "teacher"}
    assert leaderboard[0] == ["", "α = 0.0", "α = 0.1"]
    assert leaderboard[1] == ["Teacher (cnn_wide)"] + [
        f"{teachers[a]['top1']:.2f} / {teachers[a]['top5']:.2f}" for a in (0.0, 0.1)
    ]
    assert [row[0] for row in leaderboard[2:]] == ["T = 1", "T = 4"]
    compare = next(t for t in rest if t[0][0] == "method" and t[0][1] == "α = 0.0, T = 1")
    assert [row[0] for row in compare[1:]] == ["teacher", "no KD", "kd"]

    chromium = _chromium()
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--hide-scrollbars",
            "--window-size=1400,2400",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=180,
    )
    assert shot.stat().st_size > 20_000


@pytest.mark.slow
def test_the_probe_sees_a_request_and_an_error(report, tmp_path):
    """The checks above can fail: a page that asks for an external image is refused by its policy, and the
    probe reports the refusal and the failed load."""
    _plotly()
    _runs, page = report
    text = page.read_text(encoding="utf-8").replace("<nav>", '<img src="https://example.invalid/x.png" alt="x"><nav>')
    probe, _console = _render(text, tmp_path, "kd")
    assert any("example.invalid" in c and "img-src" in c for c in probe["csp"])
    assert any("example.invalid" in e for e in probe["errors"])


def test_markdown_tables_become_escaped_sortable_html():
    md = (
        "### a <b> & c\n\n| | α = 0.1 |\n|---|---|\n| T = 1 | **97.5** `x` |\n\n"
        "- Claim: _ours_\n\nText <script>x</script>\n"
    )
    out = markdown_html(md)
    assert out.splitlines() == [
        "<h3>a &lt;b&gt; &amp; c</h3>",
        '<table class="sortable"><thead><tr><th></th><th>α = 0.1</th></tr></thead>'
        "<tbody><tr><td>T = 1</td><td><strong>97.5</strong> <code>x</code></td></tr></tbody></table>",
        "<ul><li>Claim: <em>ours</em></li></ul>",
        "<p>Text &lt;script&gt;x&lt;/script&gt;</p>",
    ]
    plain = html_table(["a"], [["<i>", 1]], classes=["w"])
    assert "<td>&lt;i&gt;</td>" in plain and '<td class="w">1</td>' in plain


HOSTILE_TASK = 't"><img src=x onerror=alert(1)>'


class _Tags(HTMLParser):
    """Every start tag of a page, as the browser's tokenizer sees it: (tag, {attribute: value})."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _hostile_runs(root):
    """Two tasks whose names break out of an attribute and slug alike, and an env value that opens an SVG."""
    for sub, task in (("a", HOSTILE_TASK), ("b", "T <img src=x onerror=alert(1)>")):
        fake_results(root / sub, task=task)
    for path in root.rglob("result.json"):
        res = json.loads(path.read_text())
        res["env"] = {"cpu": '"><svg onload=alert(2)>', "torch": "'><script>alert(3)</script>"}
        path.write_text(json.dumps(res))
    return root


@pytest.mark.parametrize("static", [False, True], ids=["interactive", "static"])
def test_report_of_hostile_names_carries_no_markup_of_theirs(tmp_path, cli, static):
    if not static:
        _plotly()
    runs = _hostile_runs(tmp_path / "runs")
    rc, _, err = cli(
        "report", "--runs", str(runs), "--out", str(tmp_path / "r.html"), *(["--static"] if static else [])
    )
    assert rc == 0, err
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(text)
    attrs = [(tag, k, v) for tag, a in parser.tags for k, v in a.items()]
    assert not [x for x in attrs if x[1].startswith("on")]  # no event handler from data
    assert {tag for tag, _ in parser.tags}.isdisjoint({"svg", "iframe", "object", "embed"})
    scripts = [a for tag, a in parser.tags if tag == "script"]
    # only the page's own scripts: the table script; the chart data, plotly.js and the script that draws
    assert scripts == ([{}] if static else [{}, {"type": "application/json", "id": "chart-data"}, {}, {}])
    assert "alert(3)</script>" not in text
    assert all(v.startswith("data:image/png;base64,") for tag, k, v in attrs if k == "src")
    if static:
        assert [tag for tag, _ in parser.tags if tag == "img"]
        assert html.escape(STATIC_NOTE) not in text  # static as asked (--static): no note
    else:
        assert not [tag for tag, _ in parser.tags if tag == "img"]  # nothing from data made an image
    ids = [v for _, k, v in attrs if k == "id"]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z0-9-]+", i) for i in ids), ids
    compares = sorted(i for i in ids if i.startswith("compare-"))
    assert compares == ["compare-t-img-src-x-onerror-alert-1", "compare-t-img-src-x-onerror-alert-1-2"]
    sections = [a["id"] for tag, a in parser.tags if tag == "section"]
    assert sorted(v[1:] for _, k, v in attrs if k == "href") == sorted(sections)  # every link finds its section
    assert html.escape(HOSTILE_TASK) in text  # the name is shown, as text


# what a result.json can hold where the page shows it: a method name (a plain name: no "/", printable) that opens
# an image with a handler and a comment; a metric name that closes a script element; a selection split (any
# text) with a JavaScript line separator
HOSTILE_METHOD = "m<img src=x onerror=alert(1)><!--"
HOSTILE_METRIC = "top1</script><img src=x onerror=alert(2)>"
HOSTILE_SPLIT = "t\u2028</script><!--"


@pytest.fixture
def hostile_method_runs(tmp_path):
    """fake_results' grid with the dkd students' method, every cell's primary metric and its selection split
    renamed in their result.json (store reads them: no rule refuses them)."""
    runs = tmp_path / "runs"
    fake_results(runs)
    for path in runs.rglob(store.RESULT):
        res = json.loads(path.read_text())
        if res["cell"]["method"] == "dkd":
            res["cell"]["method"] = HOSTILE_METHOD
        res["metrics"][HOSTILE_METRIC] = res["metrics"].pop("top1")
        for h in res["history"]:
            h["eval"][HOSTILE_METRIC] = h["eval"].pop("top1")
        res["primary_metric"] = HOSTILE_METRIC
        res["selection"] = {"split": HOSTILE_SPLIT}
        path.write_text(json.dumps(res))
    problems = []
    assert len(list(store.iter_results(runs, problems))) == 6 and problems == []
    return runs


def test_hostile_names_reach_the_chart_data_as_escaped_json(hostile_method_runs):
    _plotly()
    text = build_report(hostile_method_runs)
    assert HOSTILE_METHOD not in text and HOSTILE_METRIC not in text and "</script><img" not in text
    parser = _Tags()
    parser.feed(text)
    assert not [t for t, _ in parser.tags if t == "img"] and not [a for _, a in parser.tags if "onerror" in a]
    spec = _chart_data(text)  # the element holds no "<" and no line separator; its JSON reads back whole
    method, metric, split = (html.escape(v, quote=False) for v in (HOSTILE_METHOD, HOSTILE_METRIC, HOSTILE_SPLIT))
    names = [trace.get("name") for chart in spec["charts"] for trace in chart["data"]]
    assert f"{method}, α = 0" in names and f"{method}, α = 0.1" in names  # plotly shows entities as characters
    titles = [chart["layout"]["title"]["text"] for chart in spec["charts"]]
    assert f"{method}: student {metric}, mean over seeds" in titles
    assert f"digits: {metric} vs T (mean ± std over seeds)" in titles
    curves = [c["layout"]["yaxis2"]["title"]["text"] for c in spec["charts"] if "yaxis2" in c["layout"]]
    assert curves and all(t == f"test {metric} (epoch selected on {split})" for t in curves)
    assert html.escape(HOSTILE_METHOD) in text and html.escape(HOSTILE_METRIC) in text  # the tables: as text


@pytest.mark.slow
def test_hostile_names_are_text_in_the_browser(hostile_method_runs, tmp_path):
    _plotly()
    probe, console = _render(build_report(hostile_method_runs), tmp_path, HOSTILE_METHOD)
    assert probe["errors"] == [] and probe["csp"] == [] and probe["requests"] == [] and console == []
    assert probe["images"] == []  # the names' <img> is nowhere in the page
    assert f"{HOSTILE_METHOD}, α = 0" in probe["legend"]  # the legend shows the name as written
    assert f"digits: {HOSTILE_METRIC} vs T (mean ± std over seeds)" in probe["titles"]
    assert len(probe["filtered"]) == 2 and probe["count"] == "2 of 6 cells shown"  # its two students


def test_cells_table_rows_of_a_known_run(tmp_path):
    """fake_results' cells (metrics 50 + i, two epochs, no best: the selected epoch is the last), each row by hand."""
    runs = tmp_path / "runs"
    fake_results(runs)
    text = build_report(runs, interactive=False)
    table = _table_rows(text, "cells-table")
    assert table[0] == [
        "cell", "task", "role", "method", "α", "T", "seed", "state", "metric", "value", "epoch", "job", "detail"
    ]  # fmt: skip
    got = {row[0]: row[1:11] for row in table[1:]}
    assert got == {
        "teacher_ce_0-000000000000": ["digits", "teacher", "ce", "0", "", "0", "damaged", "top1", "50.00", "2"],
        "student_kd_1-000000000001": ["digits", "student", "kd", "0", "1", "0", "finished", "top1", "51.00", "2"],
        "student_dkd_2-000000000002": ["digits", "student", "dkd", "0", "1", "0", "finished", "top1", "52.00", "2"],
        "teacher_ce_3-000000000003": ["digits", "teacher", "ce", "0.1", "", "0", "damaged", "top1", "53.00", "2"],
        "student_kd_4-000000000004": ["digits", "student", "kd", "0.1", "1", "0", "finished", "top1", "54.00", "2"],
        "student_dkd_5-000000000005": ["digits", "student", "dkd", "0.1", "1", "0", "finished", "top1", "55.00", "2"],
    }  # the teachers have no model.pt: damaged, their result still read
    assert "model.pt is missing" in next(row for row in table[1:] if row[0].startswith("teacher_ce_0"))[12]
    filters = re.search(r'<div class="filters" data-table="cells-table">(.*?)</div>', text).group(1)
    selects = re.findall(r"<label>([^<]*)<select data-col=\"(\d+)\">(.*?)</select>", filters)
    options = {name: (int(col), re.findall(r">([^<]*)</option>", opts)) for name, col, opts in selects}
    assert options == {
        "task": (1, ["all", "digits"]),
        "method": (3, ["all", "ce", "dkd", "kd"]),
        "α": (4, ["all", "0", "0.1"]),
        "T": (5, ["all", "1", "(empty)"]),
    }


class _TableRows(HTMLParser):
    """The text of each cell of the table with a given id, row by row."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.rows, self.cell = table_id, False, [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th"):
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def _table_rows(text: str, table_id: str) -> list[list[str]]:
    parser = _TableRows(table_id)
    parser.feed(text)
    return parser.rows


def test_without_plotly_the_report_is_static_and_says_so(tmp_path, monkeypatch):
    """No plotly: today's PNGs (the heatmap, the metric vs T plot, one curve figure per group) and one note."""
    monkeypatch.setattr(charts, "plotly_js", lambda: None)
    runs = tmp_path / "runs"
    fake_results(runs)
    text = build_report(runs)
    assert text.count("<img ") == 5  # heatmap, compare's plot, curves: teachers, kd students, dkd students
    assert text.count(html.escape(STATIC_NOTE)) == 1 and 'class="chart' not in text and "chart-data" not in text
    assert text.count("<script") == 1  # the table script alone


def test_json_script_keeps_data_inside_its_element():
    value = {"a</script><!--": "x\u2028y\u2029z & <b>", "n": [1.5, float("nan"), float("inf")]}
    out = json_script(value, "d")
    body = out[len('<script type="application/json" id="d">') : -len("</script>")]
    assert out.startswith('<script type="application/json" id="d">') and out.endswith("</script>")
    assert not set(body) & {"<", ">", "&", "\u2028", "\u2029"}
    assert json.loads(body) == {"a</script><!--": "x\u2028y\u2029z & <b>", "n": [1.5, None, None]}


def test_slugs_are_plain_and_unique():
    ids = Slugs(reserved=("compare-a",))
    assert [ids("compare", n) for n in ("a", "A", "a b", "a-b", "α", "", '"><x')] == [
        "compare-a-2",
        "compare-a-3",
        "compare-a-b",
        "compare-a-b-2",
        "compare-x",
        "compare-x-2",
        "compare-x-3",
    ]


def test_report_draws_dollar_names_as_text_not_mathtext(tmp_path, cli):
    runs = tmp_path / "runs"
    fake_results(runs, task="a$x^$b")  # invalid mathtext: a ParseSyntaxException traceback when parsed
    rc, _, err = cli("report", "--runs", str(runs), "--out", str(tmp_path / "r.html"), "--static")
    assert rc == 0, err
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("<img ") >= 3 and 'class="err"' not in page  # heatmap, metric vs T, curves: all drawn


def test_charts_keep_each_config_of_a_sweep_apart(tmp_path):
    """A kd.lambda sweep (tests/fixtures.lambda_sweep: kd at lambda 1, 91 on average, and 0.5, 81): a heatmap each
    with its own means, and lines of their own in the metric-vs-T chart, never one kd averaging 86."""
    from lskd_bench.leaderboard.compare import Comparison

    from .fixtures import lambda_sweep

    lambda_sweep(tmp_path)
    cmp = Comparison(collect(tmp_path), "digits", "top1", "kd")
    maps = dict(charts.heatmap_figures(cmp))
    assert list(maps) == ["kd (kd.lambda = 0.5)", "kd (kd.lambda = 1)", "dkd"]
    assert maps["kd (kd.lambda = 0.5)"]["data"][0]["z"] == [[81.0], [81.0]]
    assert maps["kd (kd.lambda = 1)"]["data"][0]["z"] == [[91.0], [91.0]]
    lines = {t["name"]: t["y"] for t in charts.vs_t_figure(cmp)["data"] if t["mode"] == "lines+markers"}
    assert lines["kd (kd.lambda = 1), α = 0"] == [91.0] and lines["kd (kd.lambda = 0.5), α = 0.1"] == [81.0]
