"""``lskd-bench analyze``: the diffusion-index table for a run directory."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import store
from ..errors import UsageError
from ..hierarchy import read_hierarchy_file, similar_and_dissimilar
from ..tasks import get_task
from .diffusion import diffusion_index, verdict
from .runs import RunIndex, resolve_class

CSV_COLUMNS = ["task", "student_arch", "method", "seed", "alpha", "t1", "t2", "target", "similar", "dissimilar",
               "train_s1", "train_s2", "val_s1", "val_s2", "verdict"]  # fmt: skip


def choose_groups(
    task: str,
    target: str,
    class_names: list[str],
    limit: int | None,
    cfg: dict[str, Any] | None = None,
    hierarchy: str | Path | None = None,
) -> tuple[list[str], list[str]]:
    """Similar and dissimilar classes of ``target`` from a class hierarchy: the file ``hierarchy`` (--hierarchy),
    else the task's; ``cfg``: the resolved config the cells trained with (``run_config``), where a task's
    hierarchy is configured (``imagefolder``'s ``data.hierarchy``)."""
    configured = "hierarchy" in ((cfg or {}).get("data") or {})
    if hierarchy:
        parents = read_hierarchy_file(hierarchy)
        if target not in parents:
            raise UsageError(f"class hierarchy {hierarchy} gives no parent to the target class {target!r}")
        return similar_and_dissimilar(target, class_names, parents, limit)
    try:
        t = get_task(task)
    except UsageError:  # a task whose plugin is not installed here
        parents = {}
    else:
        parents = t.configured_hierarchy(class_names, cfg) if configured else t.class_hierarchy(class_names)
    if not parents:
        hint = " (its cells were trained without data.hierarchy)" if configured else ""
        raise UsageError(
            f"task {task!r} has no class hierarchy{hint}: give --similar and --dissimilar, or --hierarchy FILE"
        )
    return similar_and_dissimilar(target, class_names, parents, limit)


def combined_verdict(train: str, val: str) -> str:
    sd = "systematic diffusion"
    if train == sd and val == sd:
        return sd
    if train == sd:
        return f"{sd} (train only)"
    if val == sd:
        return f"{sd} (val only)"
    return "no systematic diffusion"


def analyze(
    runs: Path,
    targets: Sequence[str],
    similar: Sequence[str] | None = None,
    dissimilar: Sequence[str] | None = None,
    t1: float = 1.0,
    t2: float = 3.0,
    task: str | None = None,
    method: str = "kd",
    seed: int | None = None,
    limit: int | None = None,
    problems: list[str] | None = None,
    hierarchy: str | Path | None = None,
) -> list[dict[str, Any]]:
    if not t1 < t2:
        raise UsageError(f"--t1 must be lower than --t2 (got {t1:g} and {t2:g})")
    index = RunIndex(runs, task, problems)
    students = index.students(method, seed)
    alphas = sorted({float(r.cell["alpha"]) for r in students})
    rows = []
    for alpha in alphas:
        r1, r2 = index.find(students, alpha, t1), index.find(students, alpha, t2)
        if r1 is None or r2 is None:
            missing = t1 if r1 is None else t2
            raise UsageError(f"no finished student at alpha {alpha:g}, T {missing:g} (train the grid with that T)")
        f1, f2 = r1.features(), r2.features()
        class_names = [str(c) for c in f1["class_names"]]
        for tname in targets:
            ti = resolve_class(tname, class_names)
            tgt = class_names[ti]
            if similar and dissimilar:
                s1, s2 = list(similar), list(dissimilar)
            else:
                auto_s1, auto_s2 = choose_groups(
                    index.task, tgt, class_names, limit, r1.result.get("run_config"), hierarchy
                )
                s1, s2 = list(similar or auto_s1), list(dissimilar or auto_s2)
            if not s1 or not s2:
                raise UsageError(f"no {'similar' if not s1 else 'dissimilar'} classes found for {tgt!r}")
            i1 = [resolve_class(c, class_names) for c in s1]
            i2 = [resolve_class(c, class_names) for c in s2]
            row: dict[str, Any] = {
                "task": index.task, "student_arch": r1.cell["arch"], "method": method, "seed": r1.cell["seed"],
                "alpha": alpha, "t1": t1, "t2": t2, "target": tgt,
                "similar": " ".join(class_names[i] for i in i1), "dissimilar": " ".join(class_names[i] for i in i2),
            }  # fmt: skip
            verdicts = {}
            for split in ("train", "val"):
                a = (f1[f"{split}_features"], f1[f"{split}_labels"], f2[f"{split}_features"], f2[f"{split}_labels"])
                row[f"{split}_s1"] = diffusion_index(*a, ti, i1)
                row[f"{split}_s2"] = diffusion_index(*a, ti, i2)
                verdicts[split] = verdict(row[f"{split}_s1"], row[f"{split}_s2"])
            row["verdict"] = combined_verdict(verdicts["train"], verdicts["val"])
            rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator=store.CSV_LINETERMINATOR)
    w.writeheader()
    for r in rows:
        w.writerow(store.csv_dict({k: (f"{r[k]:.6f}" if k.endswith(("_s1", "_s2")) else r[k]) for k in CSV_COLUMNS}))
    return store.csv_newlines(buf.getvalue())


def to_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_No rows._\n"
    r0 = rows[0]
    lines = [
        f"### {r0['task']}: diffusion index η(T1={r0['t1']:g}, T2={r0['t2']:g}), "
        f"student {r0['student_arch']} ({r0['method']}), seed {r0['seed']}",
        "",
        "| α | target class | Train S1 | Train S2 | Val S1 | Val S2 | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['alpha']:.1f} | {r['target']} | {r['train_s1']:+.4f} | {r['train_s2']:+.4f} | "
            f"{r['val_s1']:+.4f} | {r['val_s2']:+.4f} | {r['verdict']} |"
        )
    lines.append("")
    seen = set()
    for r in rows:
        key = (r["target"], r["similar"], r["dissimilar"])
        if key not in seen:
            seen.add(key)
            lines.append(f"- target {r['target']}: S1 (similar) = {r['similar']}; S2 (dissimilar) = {r['dissimilar']}")
    lines += [
        "",
        "Systematic diffusion: η(S1) < 0 and η(S2) > 0 "
        "(the target moves towards similar classes and away from dissimilar ones as T grows).",
        "",
    ]
    return "\n".join(lines)


def write_report(rows: list[dict[str, Any]], out: Path, follow: bool = True) -> tuple[Path, str]:
    """Write OUT.csv and OUT.md (output files: ``store.write_output``); return the CSV path and the markdown."""
    csv_path, _ = store.write_csv_md(out, to_csv(rows), md := to_markdown(rows), follow=follow)
    return csv_path, md
