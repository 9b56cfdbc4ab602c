"""``lskd-bench leaderboard``, ``export``, ``compare`` and ``report``: the finished cells of a run directory as
tables, files and one HTML page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import results, store
from ..errors import UsageError
from ..leaderboard import collect, output_paths, write_outputs
from ..leaderboard.compare import compare
from ..leaderboard.compare import output_paths as compare_paths
from ..report import write_report as write_html_report
from .common import DEFAULT_RUNS, check_outputs, runs_dir, warn


def cmd_leaderboard(args: argparse.Namespace) -> int:
    runs = runs_dir(args)
    problems: list[str] = []
    rows = collect(runs, args.select, problems)
    warn(problems)
    if not rows:
        raise UsageError(f"no finished cells under {runs}")
    out = Path(args.out) if args.out else runs / "leaderboard"
    check_outputs(args.out, output_paths(out), "OUT.csv, OUT.md and OUT_claims.csv")
    csv_path, md = write_outputs(rows, out, follow=bool(args.out))
    print(md, end="")
    print(f"wrote {csv_path}, .md and _claims.csv ({len(rows)} cells)", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    runs = runs_dir(args)
    problems: list[str] = []
    df = results.load(runs, args.select, problems)
    warn(problems)
    if df.empty:
        raise UsageError(f"no finished cells under {runs}")
    out = args.out or runs / f"results.{args.format}"
    check_outputs(args.out, [out])
    results.export(df, out, args.format, follow=bool(args.out))
    where = "stdout" if str(out) == store.STDOUT else out
    print(f"wrote {where} ({len(df)} cells, {len(df.columns)} columns)", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    runs = runs_dir(args)
    out = Path(args.out) if args.out else runs / "compare"
    if out.suffix in (".md", ".csv"):
        out = out.with_suffix("")
    check_outputs(args.out, compare_paths(out), "OUT.md, OUT.csv, OUT_ls.csv and figures")
    problems: list[str] = []
    text, paths = compare(
        runs,
        out,
        baseline=args.baseline,
        metric=args.metric,
        task=args.task,
        select=args.select,
        problems=problems,
        follow=bool(args.out),
    )
    warn(problems)
    print(text, end="")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    runs = runs_dir(args)
    out = args.out or runs / "report.html"
    check_outputs(args.out, [out])
    kind, size = write_html_report(runs, out, follow=bool(args.out), interactive=False if args.static else None)
    if kind == "stdout":  # the page is on stdout: the note goes to stderr
        print(f"wrote the report to stdout ({size / 1e3:.0f} kB)", file=sys.stderr)
    else:
        print(f"wrote {out} ({size / 1e3:.0f} kB)")
    return 0


def add_leaderboard(sub) -> None:
    lb = sub.add_parser("leaderboard", help="CSV + markdown leaderboard of finished cells")
    lb.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    lb.add_argument(
        "--out",
        help="output FILE: writes FILE.csv, FILE.md and FILE_claims.csv (the claims' verdicts, "
        "differences, Welch p-values and n) (default: RUNS/leaderboard)",
    )
    lb.add_argument(
        "--select",
        default="selected",
        choices=("selected", "last", "best"),
        help="metrics of the selected epoch (default: image tasks the best on val, which is their test set, as "
        "the paper; translation the epoch selected on the valid split, test metrics) or of the last epoch; "
        "best: the same as selected. A (paper P, ±D) delta is always at the epoch the paper reports (its best)",
    )
    lb.set_defaults(func=cmd_leaderboard)


def add_export(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="every finished cell as one table row (CSV, Parquet or JSON Lines)",
        description="One row per finished cell: task, role, archs, method, teacher alpha, T, seed, every "
        "metric, the selected epoch, the teacher epoch a student used, cell hash, the config keys of a cell's "
        "hash that differ between the cells (kd.lambda, data.*, train.*) and environment columns "
        "(in Python: lskd_bench.results.load(RUNS), a pandas DataFrame). In CSV, a text cell that starts with "
        "= + - @, a tab or a carriage return gets a leading ' (OWASP's advice against formula injection: a "
        "spreadsheet shows it as text); numbers are written as numbers. Parquet and JSON Lines keep every "
        "value as it is.",
    )
    ex.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    ex.add_argument(
        "--format",
        default="csv",
        choices=results.FORMATS,
        help="csv (default; a text cell that would start a spreadsheet formula gets a leading '), "
        "parquet (pyarrow) or jsonl",
    )
    ex.add_argument(
        "--out",
        help="output file; - for stdout; a device or FIFO (/dev/null, a link to one) is written to, not replaced "
        "(default: RUNS/results.FORMAT)",
    )
    ex.add_argument(
        "--select",
        default="selected",
        choices=("selected", "last", "best"),
        help="metrics under their plain names: the selected epoch's (default) or the last epoch's; best: the same "
        "as selected",
    )
    ex.set_defaults(func=cmd_export)


def add_compare(sub) -> None:
    cp = sub.add_parser(
        "compare",
        help="KD methods side by side vs a baseline method: mean ± std over seeds, Welch t-test",
        description="One table per task: a row per KD method (plus teacher and no-KD student), a column "
        "per (alpha, T) cell, mean ± std over seeds, difference to the baseline method and Welch's t-test "
        "over seeds; a second table asks whether the LS teacher beats alpha = 0 at each T; where the run's pairs "
        "have published numbers (mdistiller, RepDistiller...), a third sets each beside ours at the epoch its "
        "source reports (RepDistiller the last, mdistiller's own runs the best: the table names the rule); a PNG "
        "of the metric vs T per method. Cells whose configs differ (a sweep of kd.lambda, two train.lr) are never "
        "averaged: a row per config, its values in extra columns. Writes OUT.md, OUT.csv, OUT_ls.csv, "
        "OUT_reference.csv and OUT_<task>.png.",
    )
    cp.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    cp.add_argument(
        "--baseline",
        help="the method the others are compared with (default: kd, or the first method a task ran when it ran no kd)",
    )
    cp.add_argument("--metric", help="metric to compare (default: the task's primary: top1, bleu)")
    cp.add_argument("--task", help="only this task")
    cp.add_argument(
        "--select",
        default="selected",
        choices=("selected", "last", "best"),
        help="epoch of tables 1 and 2: selected (default; translation: selected on the valid split) or last; best: "
        "the same as selected. The published references always use their source's epoch (last or best), whatever "
        "this says",
    )
    cp.add_argument("--out", help="output prefix (default: RUNS/compare)")
    cp.set_defaults(func=cmd_compare)


def add_report(sub) -> None:
    rp = sub.add_parser(
        "report",
        help="one self-contained HTML page of a run directory (tables, heatmaps, curves)",
        description="One static HTML file, opened offline in any browser (CSS, JavaScript, chart data and "
        "images inline, no network): every cell with its state and primary metric (filter by task, method, "
        "alpha, T; click a column header to sort), the leaderboard with the paper's numbers and deltas, per task "
        "the alpha x T heatmap of the students, the methods' comparison with its tests and the metric vs T (log "
        "scale), the training curves overlaid per task and method, and the environment. Charts are interactive "
        "(hover, zoom) with the report extra (plotly), static PNGs without it.",
    )
    rp.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    rp.add_argument(
        "--out",
        help="HTML file; - for stdout; a device or FIFO (/dev/null, a link to one) is written to, not replaced "
        "(default: RUNS/report.html)",
    )
    rp.add_argument(
        "--static",
        action="store_true",
        help="static PNG figures even where plotly is installed (a page of ~0.3 MB instead of ~5 MB)",
    )
    rp.set_defaults(func=cmd_report)
