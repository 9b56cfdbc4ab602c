"""``lskd-bench report``: one self-contained HTML page, opened in headless Chromium (Debian's ``chromium``;
CI installs it) and checked on the rendered page: the tables' cells, every image decoded, no console output,
the sort working."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from lskd_bench.leaderboard import collect
from lskd_bench.report import Slugs, html_table, markdown_html

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

# runs first in the page (before its own script): records errors and console.error calls; once loaded, writes
# what the test checks into <pre id="probe">, after sorting the status table by its first column both ways
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  __errors.push(String(e.message || ("failed to load " + (e.target && (e.target.src || e.target.href)))));
}, true);
(function () { var orig = console.error; console.error = function () {
  __errors.push(Array.prototype.join.call(arguments, " ")); orig.apply(console, arguments); }; })();
window.addEventListener("load", function () {
  var table = document.querySelector("#status table"), th = table.querySelectorAll("th")[0];
  var order = function () {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[0].textContent; }); };
  th.click(); var asc = order(); th.click(); var desc = order();
  var out = {errors: __errors, asc: asc, desc: desc,
    images: Array.prototype.map.call(document.images, function (i) {
      return [i.alt, i.complete, i.naturalWidth, i.naturalHeight]; }),
    tables: Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
      return Array.prototype.map.call(t.rows, function (r) {
        return Array.prototype.map.call(r.cells, function (c) { return c.textContent.trim(); }); }); })};
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("LSKD_REQUIRE_ALL") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium): the report test must run in CI")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


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
    _runs, page = report
    text = page.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert refs and all(r.startswith(("data:image/png;base64,", "#")) for r in refs)  # nothing to fetch
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    assert text.count("<img ") == 4  # the alpha x T heatmap, the compare plot, teachers' and students' curves
    assert '<section id="status">' in text and '<section id="leaderboard">' in text


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report, tmp_path):
    runs, page = report
    chromium = _chromium()
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
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
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["errors"] == []
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == []  # the page writes nothing to the console
    assert len(probe["images"]) == 4 and all(done and w > 100 and h > 100 for _, done, w, h in probe["images"])

    status, leaderboard, *rest = probe["tables"]
    assert status[0] == ["cell", "state", "job", "detail"] and len(status) == 1 + 7
    assert {row[1] for row in status[1:]} == {"finished"}
    names = sorted(row[0] for row in status[1:])
    assert probe["asc"] == names and probe["desc"] == names[::-1]  # the header click sorts

    rows = collect(runs)
    teachers = {r["alpha"]: r["metrics"] for r in rows if r["role"] == "teacher"}
    assert leaderboard[0] == ["", "α = 0.0", "α = 0.1"]
    assert leaderboard[1] == ["Teacher (cnn_wide)"] + [
        f"{teachers[a]['top1']:.2f} / {teachers[a]['top5']:.2f}" for a in (0.0, 0.1)
    ]
    assert [row[0] for row in leaderboard[2:]] == ["T = 1", "T = 4"]
    compare = next(t for t in rest if t[0][0] == "method" and t[0][1] == "α = 0.0, T = 1")
    assert [row[0] for row in compare[1:]] == ["teacher", "no KD", "kd"]

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--hide-scrollbars",
            "--window-size=1400,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=180,
    )
    assert shot.stat().st_size > 20_000


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


def test_report_of_hostile_names_carries_no_markup_of_theirs(tmp_path, cli):
    runs = _hostile_runs(tmp_path / "runs")
    rc, _, err = cli("report", "--runs", str(runs), "--out", str(tmp_path / "r.html"))
    assert rc == 0, err
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(text)
    attrs = [(tag, k, v) for tag, a in parser.tags for k, v in a.items()]
    assert not [x for x in attrs if x[1].startswith("on")]  # no event handler from data
    assert {tag for tag, _ in parser.tags}.isdisjoint({"svg", "iframe", "object", "embed"})
    assert [a for tag, a in parser.tags if tag == "script"] == [{}]  # only the page's own sorting script
    assert text.count("<script>") == 1 and "alert(3)</script>" not in text
    assert all(v.startswith("data:image/png;base64,") for tag, k, v in attrs if k == "src")
    ids = [v for _, k, v in attrs if k == "id"]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z0-9-]+", i) for i in ids), ids
    compares = sorted(i for i in ids if i.startswith("compare-"))
    assert compares == ["compare-t-img-src-x-onerror-alert-1", "compare-t-img-src-x-onerror-alert-1-2"]
    assert sorted(v[1:] for _, k, v in attrs if k == "href") == sorted(ids)  # every link finds its section
    assert html.escape(HOSTILE_TASK) in text  # the name is shown, as text


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
    rc, _, err = cli("report", "--runs", str(runs), "--out", str(tmp_path / "r.html"))
    assert rc == 0, err
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("<img ") >= 3 and 'class="err"' not in page  # heatmap, metric vs T, curves: all drawn
