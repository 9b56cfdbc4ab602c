"""Leaderboard: one CSV row per finished cell and markdown tables in the paper's layout.

Every result holds the metrics of the last epoch and of the selected evaluated epoch (result.json's ``best``).
Two conventions:

- image tasks: the best epoch by the primary metric on the validation split, which is the test set (the
  paper's convention, as its official code reports);
- translation: the epoch selected on the valid split (validation loss, or BLEU with ``select_on:
  valid_bleu``), its test metrics reported; tables show the last epoch's test BLEU beside it.

``select="selected"`` (the default; ``"best"`` is its alias) reports the selected epoch; ``select="last"`` the final
weights.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import __version__, store
from ..envinfo import git_commit
from ..metrics import MetricSpec
from ..results import OTHER_PREFIX, identity_values, select_name
from ..tasks import result_metrics
from .reference import Selection, claim_rows, claims_text, find, ls_answer_text, recipe_differences

BASE_COLUMNS = ["task", "role", "teacher_arch", "student_arch", "method", "alpha", "T", "seed"]
TAIL_COLUMNS = ["select", "epoch", "epochs", "wall_s", "config_hash"]


def row_of(result: dict[str, Any], select: str = "selected") -> dict[str, Any]:
    select = select_name(select)
    c = result["cell"]
    role = c["role"]
    best = store.selected_epoch(result) or {"epoch": result.get("epochs"), "metrics": result["metrics"]}
    chosen = best if select == "selected" else {"epoch": result.get("epochs"), "metrics": result["metrics"]}
    specs = {m.name: m for m in result_metrics(result)}
    selection = result.get("selection") or {}
    other: dict[str, float] = {}
    if selection.get("split") == "valid":  # translation: report the other epoch beside the chosen one
        other_metrics = result["metrics"] if select == "selected" else best["metrics"]
        other = {OTHER_PREFIX[select] + k: float(v) for k, v in other_metrics.items()}
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
        "split": _metric_split(result),  # where the metrics were measured
        "other": other,
        "selected_on": _selected_on(result),
        "recipe_diff": recipe_differences(result),
        "select": select,
        "epoch": chosen.get("epoch") if chosen.get("epoch") is not None else "",
        "epochs": int(result["epochs"]),
        "wall_s": round(float(result["timings"]["wall_s"]), 3),
        "config_hash": c["hash"],
        "_finished_at": result.get("finished_at", ""),
        "_env": result.get("env") or {},
        "_pair": (result.get("run_config") or {}).get("pair"),  # the --pair whose published recipe the cell used
        # both epochs' metrics, whatever ``select`` reports: a published number is set beside ours of its own rule
        "_by_select": {
            "selected": {k: float(v) for k, v in best["metrics"].items()},
            "last": {k: float(v) for k, v in result["metrics"].items()},
        },
    }


def _selected_on(result: dict[str, Any]) -> str:
    """Where the reported (selected) epoch was chosen: "val" (image tasks: the test set, as the paper), "valid:<metric>"
    (translation), or "test" (translation results written before selection on the valid split)."""
    sel = result.get("selection")
    if sel:
        return "valid:" + sel["metric"] if sel.get("split") == "valid" else str(sel.get("split", "val"))
    return "test" if _metric_split(result) == "test" else "val"


def _metric_split(result: dict[str, Any]) -> str:
    """The split the result's metrics were measured on, as its task recorded it (``metric_info``)."""
    return (result.get("metric_info") or {}).get("split", "val")


_ROLE_ORDER = {"teacher": 0, "baseline": 1, "student": 2}


def _sort_key(r: dict[str, Any]):
    return (
        r["task"],
        _ROLE_ORDER.get(r["role"], 9),
        r["method"],
        str(r["alpha"]),
        -1 if r["T"] == "" else r["T"],
        r["seed"],
        r["config_hash"],
    )


def collect(runs: Path, select: str = "selected", problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows for every finished cell under ``runs``, in a stable order (unusable results: a line in ``problems``).
    Each row's ``_config``: the hashed config values (``results.identity_values``: ``kd.lambda``, ``train.lr``...)
    that differ between the cells of its task and role, as ``((key, value), ...)``; () where none does."""
    pairs = []
    schemas: dict[str, Any] = {}
    for r in store.iter_results(Path(runs), problems):
        try:
            pairs.append((row_of(r, select), identity_values(r, schemas)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # hand-edited beyond what store checks
            if problems is not None:
                problems.append(
                    f"skipped: {Path(r['cell_dir']) / store.RESULT} (a malformed entry: {type(exc).__name__}: "
                    f"{exc}; 'lskd-bench run' trains the cell again)"
                )
    seen: dict[tuple, set] = defaultdict(set)
    for row, ident in pairs:
        for k, v in ident.items():
            seen[(row["task"], row["role"], k)].add(v)
    for row, ident in pairs:
        row["_config"] = tuple((k, v) for k, v in sorted(ident.items()) if len(seen[(row["task"], row["role"], k)]) > 1)
    return sorted((row for row, _ in pairs), key=_sort_key)


def config_value(v: Any) -> str:
    """A config value (from result.json) as the text of one markdown table cell: floats as ``g``; a ``|`` escaped
    and line breaks made spaces, so that a hand-edited value cannot split a cell or a row."""
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return text.replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def config_text(cfg: tuple) -> str:
    """``kd.lambda = 0.5, train.lr = 0.1``: a row's ``_config``."""
    return ", ".join(f"{config_value(c)} = {config_value(v)}" for c, v in cfg)


def config_order(cfg: tuple) -> tuple:
    """A sort key of ``_config`` values: numbers by value, before text."""
    return tuple(
        (c, 0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (c, 1, 0, str(v)) for c, v in cfg
    )


def by_config(rows: list[dict[str, Any]]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    """``rows`` split by their ``_config``, in ``config_order``."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r.get("_config", ())].append(r)
    return sorted(groups.items(), key=lambda kv: config_order(kv[0]))


def metric_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every metric of the rows, in the order their tasks declare them (tasks in row order)."""
    out: dict[str, None] = {}
    for r in rows:
        out.update(dict.fromkeys(n for n in r["specs"] if n in r["metrics"]))
        out.update(dict.fromkeys(sorted(r["metrics"])))
    return list(out)


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    """One row per cell. Translation rows add the other epoch's metrics (``last_bleu``... beside the selected
    epoch's) and ``selected_on``; image-only tables keep the plain columns."""
    rows = list(rows)
    mcols = metric_columns(rows)
    present = {k for r in rows for k in r.get("other", {})}
    ocols = [p + m for p in ("last_", "selected_") for m in mcols if p + m in present]
    tail = TAIL_COLUMNS + (["selected_on"] if ocols else [])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=store.CSV_LINETERMINATOR)
    w.writerow(store.csv_row(BASE_COLUMNS + mcols + ocols + tail))  # metric names come from result.json
    for r in rows:
        metrics = [f"{r['metrics'][m]:.3f}" if m in r["metrics"] else "" for m in mcols]
        other = [f"{r['other'][c]:.3f}" if c in r.get("other", {}) else "" for c in ocols]
        w.writerow(store.csv_row([r[k] for k in BASE_COLUMNS] + metrics + other + [r[k] for k in tail]))
    return store.csv_newlines(buf.getvalue())


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where one cell was run with several configs, keep the most recently finished one (configs that differ
    between the cells, ``_config``, stay apart)."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:  # configs that differ on purpose (a kd.lambda sweep: ``_config``) are cells of their own
        key = (r["task"], r["role"], r["teacher_arch"], r["student_arch"], r["method"], r["alpha"], r["T"], r["seed"])
        key += (r.get("_config", ()),)
        if key not in best or r["_finished_at"] >= best[key]["_finished_at"]:
            best[key] = r
    return list(best.values())


def mean_std(values: list[float], fmt: str) -> str:
    """One value, or mean ± sample standard deviation over seeds, in ``fmt`` (the metric's ``MetricSpec.format``)."""
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def spec_of(row: dict[str, Any], name: str) -> MetricSpec:
    return row["specs"].get(name) or MetricSpec(name, name)


def cell_text(rows: list[dict[str, Any]], bold: bool = False, paper: Any = None, rule: Selection | None = None) -> str:
    """``top1 / top5`` (mean ± std over seeds), bold if best; with a paper value: `` (paper P, ±D)``, D = ours at
    the epoch of the paper's selection ``rule`` (``Selection``; None: the rows' own) minus P. Where the rows report
    another epoch than the rule's: `` (paper P; ours at the best epoch Y, ±D)``."""
    if not rows:
        return "—" if paper is None else f"— (paper {paper:.2f})"
    text = " / ".join(mean_std([r["metrics"][m] for r in rows], spec_of(rows[0], m).format) for m in rows[0]["display"])
    text = f"**{text}**" if bold else text
    if all(r.get("other") for r in rows):  # translation: the other epoch's value in brackets
        prefix = OTHER_PREFIX[rows[0]["select"]]
        which = prefix.rstrip("_")
        text += (
            f" ({which} "
            + " / ".join(
                mean_std([r["other"][prefix + m] for r in rows], spec_of(rows[0], m).format) for m in rows[0]["display"]
            )
            + ")"
        )
    if paper is not None:
        same = rule is None or all(r["select"] == rule.select for r in rows)
        ours = statistics.mean((r["metrics"] if same else r["_by_select"][rule.select])[r["primary"]] for r in rows)
        text += (
            f" (paper {paper:.2f}, {ours - paper:+.2f})"
            if same
            else f" (paper {paper:.2f}; ours at the {rule.text} {ours:.2f}, {ours - paper:+.2f})"
        )
    return text


_SELECTED_ON = {
    "valid:valid_loss": "the valid split (lowest validation loss)",
    "valid:valid_bleu": "the valid split (highest validation BLEU, same beam)",
    "test": "the test split (results written before selection on the valid split: re-run them)",
}


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
        groups = sorted(
            {(r["teacher_arch"], r["student_arch"], r["method"], r.get("_config", ())) for r in students},
            key=lambda g: (*g[:3], config_order(g[3])),
        )  # a student config of its own (a kd.lambda sweep): a table of its own, never averaged with another
        if not groups:  # teachers (and baselines) only
            groups = sorted({(r["teacher_arch"], "", "", ()) for r in teachers})
        for t_arch, s_arch, method, cfg in groups:
            out.append(_table(task, t_arch, s_arch, method, teachers, students, baselines, cfg))
        shown = {g[1] for g in groups}
        for arch in sorted({r["student_arch"] for r in baselines} - shown):  # baselines without a KD table
            out.append(f"### {task}: {arch} without KD\n\n")
            for cfg, base in by_config([r for r in baselines if r["student_arch"] == arch]):
                what = f"{arch}, cross-entropy" + (f", {config_text(cfg)}" if cfg else "")
                out[-1] += f"Student without KD ({what}): {cell_text(base)}\n"
        on = sorted({r["selected_on"] for r in trs})
        labels = tuple(spec_of(trs[0], m).label for m in trs[0]["display"])
        notes[(labels, trs[0]["split"], trs[0]["select"], tuple(on))] = None
    if not out:
        return "_No finished cells._\n"
    lines = []
    for labels, split, select, on in notes:
        what = " / ".join(labels)
        if split != "test":  # image tasks: the validation split is the test set (the paper's convention)
            epoch = "best evaluated epoch (as the paper)" if select == "selected" else "last epoch"
            lines.append(
                f"Cells: {what} on the validation split, {epoch}. Bold: best student. "
                "With several seeds: mean ± sample standard deviation."
            )
            continue
        how = "; ".join(_SELECTED_ON.get(o, o) for o in on)
        epoch = (f"the epoch selected on {how}" if select == "selected" else "the last epoch") + (
            " (in brackets: the " + ("last epoch" if select == "selected" else "selected epoch") + ")"
            if any(o.startswith("valid:") for o in on)
            else ""
        )
        lines.append(
            f"Cells: {what} on the test split, {epoch}. Bold: best student. "
            "With several seeds: mean ± sample standard deviation."
        )
    return "\n".join(out) + "\n".join(lines) + "\n"


def _table(task, t_arch, s_arch, method, teachers, students, baselines, cfg=()) -> str:
    ref = find(task, t_arch, s_arch, method) if s_arch else None
    tch = [r for r in teachers if r["teacher_arch"] == t_arch]
    stu = [
        r
        for r in students
        if (r["teacher_arch"], r["student_arch"], r["method"], r.get("_config", ())) == (t_arch, s_arch, method, cfg)
    ]
    alphas = sorted({r["alpha"] for r in tch + stu})
    temps = sorted({r["T"] for r in stu}, key=lambda t: -1 if t == "" else t)

    def select(rs, alpha, T=None):
        return [r for r in rs if r["alpha"] == alpha and (T is None or r["T"] == T)]

    means = {
        (a, t): statistics.mean(r["metrics"][r["primary"]] for r in select(stu, a, t))
        for a in alphas
        for t in temps
        if select(stu, a, t)
    }
    best = spec_of((stu or tch)[0], (stu or tch)[0]["primary"]).best(list(means.values())) if means else None
    title = (
        f"### {task}: {t_arch}"
        + (f" → {s_arch} ({method})" if s_arch else "")
        + (f" [{config_text(cfg)}]" if cfg else "")
    )
    lines = [title, "", "| | " + " | ".join(f"α = {a:.1f}" for a in alphas) + " |", "|---|" + "---|" * len(alphas)]
    differ: list[str] = []  # why the paper's numbers are not compared cell by cell
    if ref is not None:
        diffs = [r["recipe_diff"] for r in tch + stu]
        if any(d is None for d in diffs):
            differ = [_UNKNOWN]
        else:
            matched = {
                f"{role}.arch"
                for role, arch in (("teacher", ref.teacher_arch), ("student", ref.student_arch))
                if arch != "any"
            }  # find() matched these to the paper's table: not a difference
            differ = sorted({k for d in diffs for k in d} - matched)
    same = ref is not None and not differ
    paper = (lambda a, T=None: ref.value(a, T)) if same else (lambda a, T=None: None)
    rule = ref.selection if same else None
    for tcfg, trs in by_config(tch) or [((), [])]:  # teachers of several configs: a row each
        lines.append(
            f"| Teacher ({t_arch}"
            + (f", {config_text(tcfg)}" if tcfg else "")
            + ") | "
            + " | ".join(cell_text(select(trs, a), paper=paper(a), rule=rule) for a in alphas)
            + " |"
        )
    for t in temps:
        cells = []
        for a in alphas:
            sel = select(stu, a, t)
            bold = bool(sel) and means.get((a, t)) == best
            cells.append(cell_text(sel, bold=bold, paper=None if t == "" else paper(a, t), rule=rule))
        label = "no T" if t == "" else f"T = {_fmt_num(t)}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for bcfg, base in by_config([r for r in baselines if r["student_arch"] == s_arch]):
        what = f"{s_arch}, cross-entropy" + (f", {config_text(bcfg)}" if bcfg else "")
        lines += [f"Student without KD ({what}): {cell_text(base)}", ""]
    if same:
        lines += [
            f"Paper values: {ref.source}; (paper P, ±D) = the paper's {ref.metrics[0]} and ours minus it "
            f"(this grid runs the paper's recipe), ours at the paper's {ref.selection.text} "
            f"({ref.selection.source}).",
            "",
        ]
    elif ref is not None:
        if differ == [_UNKNOWN]:
            why = "Some results of this grid do not record their config: it cannot be matched with the paper's recipe."
        else:
            why = (
                "This grid differs from the paper's recipe in "
                + ", ".join(differ[:8])
                + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
                + "."
            )
        lines += [
            f"Paper (different setup, not compared cell by cell): {ref.source}: {_paper_row(ref)}, "
            f"{ref.selection.text}. {why}",
            "",
        ]
    if stu and any(t != "" for t in temps):
        lines += [*claims_text(_claim_cells(stu), ref), ""]
    elif stu and len(alphas) >= 2:  # no T axis (feature methods, DIST, TTM, CTKD): the LS question alone
        v0, v1 = ([r["metrics"][r["primary"]] for r in select(stu, a, "")] for a in (alphas[0], alphas[-1]))
        if v0 and v1:
            spec = spec_of(stu[0], stu[0]["primary"])
            lines += [
                f"- Does the LS teacher (α = {alphas[-1]:g}) help this method, against α = {alphas[0]:g}? "
                f"ours **{ls_answer_text(v0, v1, spec.better)}**",
                "",
            ]
    return "\n".join(lines) + "\n"


def _claim_cells(stu: list[dict[str, Any]]) -> dict[tuple, dict[int, float]]:
    """Student values for the claims: ``{(alpha, T): {seed: primary metric}}``."""
    cells: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in stu:
        cells[(r["alpha"], r["T"])][r["seed"]] = r["metrics"][r["primary"]]
    return dict(cells)


CLAIM_COLUMNS = [
    "task",
    "teacher_arch",
    "student_arch",
    "method",
    "metric",
    "claim",
    "text",
    "verdict",
    "direction",
    "delta",
    "p_value",
    "n_ls",
    "n_0",
    "significant",
    "paper_direction",
    "paper_delta",
    "config",  # the config values that split the method's cells (kd.lambda...); last: the others keep their place
]


def claims_csv(rows: Iterable[dict[str, Any]]) -> str:
    """The claims under every table as CSV columns: verdict, direction, difference of means, Welch p-value, seeds
    per side, significance (p < 0.05), and the paper's direction and difference where it published the table."""
    rows = latest(list(rows))
    out = []
    for task in sorted({r["task"] for r in rows}):
        stu_all = [r for r in rows if r["task"] == task and r["role"] == "student"]
        groups = {(r["teacher_arch"], r["student_arch"], r["method"], r.get("_config", ())) for r in stu_all}
        for t_arch, s_arch, method, cfg in sorted(groups, key=lambda g: (*g[:3], config_order(g[3]))):
            stu = [
                r
                for r in stu_all
                if (r["teacher_arch"], r["student_arch"], r["method"], r.get("_config", ()))
                == (t_arch, s_arch, method, cfg)
            ]
            if not any(r["T"] != "" for r in stu):
                continue
            out += claim_rows(
                _claim_cells(stu),
                find(task, t_arch, s_arch, method),
                task=task,
                teacher_arch=t_arch,
                student_arch=s_arch,
                method=method,
                config=config_text(cfg),
                metric=stu[0]["primary"],
            )
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CLAIM_COLUMNS, lineterminator=store.CSV_LINETERMINATOR)
    w.writeheader()
    for r in out:
        w.writerow(
            store.csv_dict({k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else v) for k, v in r.items()})
        )
    return store.csv_newlines(buf.getvalue())


ENV_NOTE = (
    "Floating-point results are bit-identical when rerun on one machine with the same builds; they may "
    "differ slightly across CPUs, devices and library builds."
)


def environment_md(rows: Iterable[dict[str, Any]]) -> str:
    """Where the results of ``rows`` were computed (distinct values over the cells shown), and what wrote the table."""
    envs = [r.get("_env") or {} for r in latest(list(rows))]

    def distinct(fmt) -> str:
        vals = sorted({fmt(e) for e in envs if fmt(e) is not None})
        return "; ".join(vals) if vals else "not recorded"

    def opt(key: str):
        return lambda e: None if e.get(key) is None else str(e[key])

    lines = [
        "Environment:",
        "",
        "- trained with lskd-bench "
        + distinct(
            lambda e: (
                None if e.get("lskd_bench") is None else f"{e['lskd_bench']} (commit {e.get('commit', 'unknown')})"
            )
        ),
        "- torch " + distinct(opt("torch")),
        "- device "
        + distinct(
            lambda e: (
                None
                if e.get("device") is None
                else e["device"] + (f" ({e['device_name']})" if e.get("device_name") else "")
            )
        ),
        "- CPU " + distinct(opt("cpu")),
        "- threads per process " + distinct(opt("threads")),
        f"- table written by lskd-bench {__version__} (commit {git_commit()})",
        "",
        ENV_NOTE,
    ]
    return "\n".join(lines) + "\n"


_UNKNOWN = "?"


def _paper_row(ref) -> str:
    """The paper's table in one line: teacher and T = 1 student per alpha."""
    parts = []
    for a in sorted(ref.teacher):
        t1 = ref.value(a, 1.0)
        parts.append(f"α = {a:g}: teacher {ref.value(a):.2f}" + (f", T = 1 student {t1:.2f}" if t1 is not None else ""))
    return "; ".join(parts) + f" ({ref.metrics[0]})"


def output_paths(out: Path) -> list[Path]:
    """The files ``write_outputs`` writes: ``OUT.csv``, ``OUT.md`` and ``OUT_claims.csv``."""
    csv_path, md_path = store.csv_md_paths(out)
    return [csv_path, md_path, csv_path.with_name(csv_path.stem + "_claims.csv")]


def write_outputs(rows: list[dict[str, Any]], out: Path, follow: bool = True) -> tuple[Path, str]:
    """Write ``OUT.csv``, ``OUT.md`` and ``OUT_claims.csv`` (``out`` with or without a suffix); return the CSV path
    and the markdown. The markdown ends with the environment the results came from (``environment_md``)."""
    md_text = to_markdown(rows) + "\n" + environment_md(rows)
    csv_path, _ = store.write_csv_md(out, to_csv(rows), md_text, follow=follow)
    text = claims_csv(rows)
    store.write_output(output_paths(out)[2], lambda f: f.write(text), mode="w", follow=follow)
    return csv_path, md_text
