"""Leaderboard: one CSV row per finished cell and markdown tables in the paper's layout.

Every result holds the metrics of the last epoch and of the best evaluated epoch (by the task's primary
metric). The paper's tables report the best epoch, which is the default here (``select="best"``);
``select="last"`` reports the final weights.
"""
from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .. import store
from ..metrics import MetricSpec
from ..tasks import result_metrics
from .reference import claims_text, find

BASE_COLUMNS = ["task", "role", "teacher_arch", "student_arch", "method", "alpha", "T", "seed"]
TAIL_COLUMNS = ["select", "epoch", "epochs", "wall_s", "config_hash"]
SELECTIONS = ("best", "last")


def row_of(result: dict[str, Any], select: str = "best") -> dict[str, Any]:
    c = result["cell"]
    role = c["role"]
    best = result.get("best") or {"epoch": result.get("epochs"), "metrics": result["metrics"]}
    chosen = best if select == "best" else {"epoch": result.get("epochs"), "metrics": result["metrics"]}
    specs = {m.name: m for m in result_metrics(result)}
    return {
        "task": c["task"],
        "role": role,
        "teacher_arch": c["arch"] if role == "teacher" else (c.get("teacher_arch") or ""),
        "student_arch": "" if role == "teacher" else c["arch"],
        "method": c["method"],
        "alpha": "" if role == "baseline" else float(c["alpha"]),
        "T": "" if c["T"] is None else float(c["T"]),
        "seed": int(c["seed"]),
        "metrics": {k: float(v) for k, v in chosen["metrics"].items()},
        "primary": result.get("primary_metric") or next(iter(specs)),
        "display": [n for n, m in specs.items() if m.shown],  # what a table cell shows (top-1 / top-5, BLEU)
        "specs": specs,
        "split": (result.get("metric_info") or {}).get("split", "val"),  # where the metrics were measured
        "select": select,
        "epoch": chosen.get("epoch") if chosen.get("epoch") is not None else "",
        "epochs": int(result["epochs"]),
        "wall_s": round(float(result["timings"]["wall_s"]), 3),
        "config_hash": c["hash"],
        "_finished_at": result.get("finished_at", ""),
    }


_ROLE_ORDER = {"teacher": 0, "baseline": 1, "student": 2}


def _sort_key(r: dict[str, Any]):
    return (r["task"], _ROLE_ORDER.get(r["role"], 9), r["method"], str(r["alpha"]), -1 if r["T"] == "" else r["T"], r["seed"], r["config_hash"])


def collect(runs: Path, select: str = "best") -> list[dict[str, Any]]:
    """Rows for every finished cell under ``runs``, in a stable order."""
    return sorted((row_of(r, select) for r in store.iter_results(Path(runs))), key=_sort_key)


def metric_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every metric of the rows, in the order their tasks declare them (tasks in row order)."""
    out: dict[str, None] = {}
    for r in rows:
        out.update(dict.fromkeys(n for n in r["specs"] if n in r["metrics"]))
        out.update(dict.fromkeys(sorted(r["metrics"])))
    return list(out)


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    mcols = metric_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(BASE_COLUMNS + mcols + TAIL_COLUMNS)
    for r in rows:
        metrics = [f"{r['metrics'][m]:.3f}" if m in r["metrics"] else "" for m in mcols]
        w.writerow([r[k] for k in BASE_COLUMNS] + metrics + [r[k] for k in TAIL_COLUMNS])
    return buf.getvalue()


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where one cell was run with several configs, keep the most recently finished one."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["task"], r["role"], r["teacher_arch"], r["student_arch"], r["method"], r["alpha"], r["T"], r["seed"])
        if key not in best or r["_finished_at"] >= best[key]["_finished_at"]:
            best[key] = r
    return list(best.values())


def mean_std(values: list[float], fmt: str = ".2f") -> str:
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def spec_of(row: dict[str, Any], name: str) -> MetricSpec:
    return row["specs"].get(name) or MetricSpec(name, name)


def cell_text(rows: list[dict[str, Any]], bold: bool = False, paper: Any = None) -> str:
    """``top1 / top5`` (mean ± std over seeds), bold if best; with a paper value: `` (paper P, ±D)``."""
    if not rows:
        return "—" if paper is None else f"— (paper {paper:.2f})"
    text = " / ".join(mean_std([r["metrics"][m] for r in rows], spec_of(rows[0], m).format) for m in rows[0]["display"])
    text = f"**{text}**" if bold else text
    if paper is not None:
        ours = statistics.mean(r["metrics"][r["primary"]] for r in rows)
        text += f" (paper {paper:.2f}, {ours - paper:+.2f})"
    return text


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def to_markdown(rows: Iterable[dict[str, Any]]) -> str:
    """One table per (task, teacher arch, student arch, KD method): teacher row, then one row per T."""
    rows = latest(list(rows))
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    out: list[str] = []
    notes: dict[tuple, None] = {}
    for task in sorted(by_task):
        trs = by_task[task]
        teachers = [r for r in trs if r["role"] == "teacher"]
        students = [r for r in trs if r["role"] == "student"]
        baselines = [r for r in trs if r["role"] == "baseline"]
        groups = sorted({(r["teacher_arch"], r["student_arch"], r["method"]) for r in students})
        if not groups:  # teachers (and baselines) only
            groups = sorted({(r["teacher_arch"], "", "") for r in teachers})
        for t_arch, s_arch, method in groups:
            out.append(_table(task, t_arch, s_arch, method, teachers, students, baselines))
        labels = tuple(spec_of(trs[0], m).label for m in trs[0]["display"])
        notes[(labels, trs[0]["split"], trs[0]["select"])] = None
    if not out:
        return "_No finished cells._\n"
    lines = []
    for labels, split, select in notes:
        what = " / ".join(labels)
        where = "the test split" if split == "test" else "the validation split"
        epoch = "best evaluated epoch (as the paper)" if select == "best" else "last epoch"
        lines.append(f"Cells: {what} on {where}, {epoch}. Bold: best student. "
                     "With several seeds: mean ± sample standard deviation.")
    return "\n".join(out) + "\n".join(lines) + "\n"


def _table(task, t_arch, s_arch, method, teachers, students, baselines) -> str:
    ref = find(task, t_arch, s_arch, method) if s_arch else None
    tch = [r for r in teachers if r["teacher_arch"] == t_arch]
    stu = [r for r in students if (r["teacher_arch"], r["student_arch"], r["method"]) == (t_arch, s_arch, method)]
    alphas = sorted({r["alpha"] for r in tch + stu})
    temps = sorted({r["T"] for r in stu}, key=lambda t: -1 if t == "" else t)

    def select(rs, alpha, T=None):
        return [r for r in rs if r["alpha"] == alpha and (T is None or r["T"] == T)]

    means = {(a, t): statistics.mean(r["metrics"][r["primary"]] for r in select(stu, a, t))
             for a in alphas for t in temps if select(stu, a, t)}
    best = spec_of((stu or tch)[0], (stu or tch)[0]["primary"]).best(list(means.values())) if means else None
    title = f"### {task}: {t_arch}" + (f" → {s_arch} ({method})" if s_arch else "")
    lines = [title, "", "| | " + " | ".join(f"α = {a:.1f}" for a in alphas) + " |", "|---|" + "---|" * len(alphas)]
    paper = (lambda a, T=None: ref.value(a, T)) if ref is not None else (lambda a, T=None: None)
    lines.append(f"| Teacher ({t_arch}) | " + " | ".join(cell_text(select(tch, a), paper=paper(a)) for a in alphas) + " |")
    for t in temps:
        cells = []
        for a in alphas:
            sel = select(stu, a, t)
            cells.append(cell_text(sel, bold=bool(sel) and means.get((a, t)) == best, paper=None if t == "" else paper(a, t)))
        label = "no T" if t == "" else f"T = {_fmt_num(t)}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    base = [r for r in baselines if r["student_arch"] == s_arch]
    if base:
        lines += [f"Student without KD ({s_arch}, cross-entropy): {cell_text(base)}", ""]
    if ref is not None:
        lines += [f"Paper values: {ref.source}; (paper P, ±D) = the paper's {ref.metrics[0]} and ours minus it.", ""]
    if stu and any(t != "" for t in temps):
        cells = {(r["alpha"], r["T"]): [x["metrics"][x["primary"]] for x in select(stu, r["alpha"], r["T"])] for r in stu}
        lines += [*claims_text(cells, ref), ""]
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict[str, Any]], out: Path) -> tuple[Path, str]:
    """Write ``OUT.csv`` and ``OUT.md`` (``out`` with or without a suffix); return the CSV path and the markdown."""
    md_text = to_markdown(rows)
    csv_path, _ = store.write_csv_md(out, to_csv(rows), md_text)
    return csv_path, md_text
