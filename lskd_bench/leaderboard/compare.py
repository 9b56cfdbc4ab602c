"""``lskd-bench compare``: KD methods side by side against a baseline method, with seeds and significance.

Per task, table 1 has a row per method (plus the teacher and the no-KD student) and a column per
(alpha, T) cell of the grid; each cell is the mean ± sample std over seeds of one metric, the difference to
the baseline method in the same cell, and a mark where Welch's two-sided t-test over the seeds (unequal
variances) gives p < 0.05 (*) or p < 0.01 (**); "n/a" where a side has a single seed. Methods without a
temperature (DIST, TTM, CTKD, seqKD) fill the "no T" columns and are compared with the baseline method at
T = 1 (the paper's recommended setting; its lowest T if 1 was not run). The best mean per column is bold.

Table 2 answers the paper's question per method: is the label-smoothed teacher (the largest alpha) better
or worse than alpha = 0 at each T (difference, Welch p)?

Table 3, where the task's pairs have published KD-benchmark numbers (``data/kd_reference.yaml``: mdistiller's
CIFAR-100 / ImageNet tables...; ``data/feature_reference.yaml``: RepDistiller's), puts each reference beside our
students of the same pair and method at the reference's cell (alpha 0, its T), with the delta, the source and the
recipe the reference was produced with. Each reference is compared at the epoch its source reports (its
``selection`` rule: RepDistiller the last epoch, mdistiller's own runs the best...): ours is result.json's last or
selected epoch to match, whatever ``select`` reports in tables 1 and 2; the table names the rule per row.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .. import results, store
from ..errors import UsageError
from ..tasks import get_task
from . import collect, environment_md, latest, mean_std, spec_of
from .reference import RULE_TEXT, SIGNIFICANCE, kd_references, kd_sources, ls_answer_text, ls_verdict, welch_p

NO_T = ""  # the T of a cell whose method has no temperature


def mark(p: float | None) -> str:
    if p is None:
        return ", n/a"
    return " **" if p < 0.01 else " *" if p < 0.05 else ""


class Comparison:
    def __init__(self, rows: list[dict[str, Any]], task: str, metric: str, baseline: str | None, frame: Any = None):
        """``rows``: the leaderboard's rows (metric specs); ``frame``: the same results as ``results.load``'s
        DataFrame, whose per-cell values the tables aggregate (built from ``rows`` when not given)."""
        self.task, self.metric, self.baseline = task, metric, baseline
        rows = [r for r in latest(rows) if r["task"] == task]
        if not rows:
            raise UsageError(f"no finished cells of task {task!r}")
        missing = [r for r in rows if metric not in r["metrics"]]
        if missing:
            have = sorted(rows[0]["metrics"])
            raise UsageError(f"metric {metric!r} is not in the results of task {task!r} (have: {', '.join(have)})")
        self.spec = spec_of(rows[0], metric)  # its direction decides "best" and "better"
        self.values: dict[tuple, list[float]] = defaultdict(list)  # (method, alpha, T) -> per-seed values
        self.teacher: dict[float, list[float]] = defaultdict(list)
        if frame is None:
            frame = _frame(rows, metric)
        df = results.latest(frame)
        df = df[df["task"] == task]
        for (m, a, t), v in df[df["role"] == "student"].groupby(["method", "alpha", "T"], dropna=False, sort=False)[
            metric
        ]:
            self.values[(m, float(a), NO_T if math.isnan(t) else float(t))] = v.tolist()
        for a, v in df[df["role"] == "teacher"].groupby("alpha", sort=False)[metric]:
            self.teacher[float(a)] = v.tolist()
        self.no_kd: list[float] = df.loc[df["role"] == "baseline", metric].tolist()
        found = sorted({k[0] for k in self.values})
        if baseline is None:  # not asked for: kd, else the first method this task ran (said in the table's title)
            baseline = self.baseline = "kd" if "kd" in found or not found else found[0]
        self.methods = sorted(found, key=lambda m: (m != baseline, m))
        if baseline not in self.methods:
            raise UsageError(
                f"baseline method {baseline!r} has no finished students in task {task!r} "
                f"(found: {', '.join(self.methods) or 'none'})"
            )
        self.alphas = sorted({k[1] for k in self.values} | set(self.teacher))
        temps = sorted({k[2] for k in self.values if k[2] != NO_T})
        self.columns = [(a, t) for a in self.alphas for t in temps]
        if any(k[2] == NO_T for k in self.values):
            self.columns += [(a, NO_T) for a in self.alphas]

    def _ms(self, values: list[float]) -> str:
        """Mean ± sample std over seeds in the metric's own format (the leaderboard's ``mean_std``)."""
        return mean_std(values, self.spec.format)

    def baseline_cell(self, alpha: float, T: Any) -> list[float]:
        if T != NO_T:
            return self.values.get((self.baseline, alpha, T), [])
        ts = sorted(t for (m, a, t) in self.values if m == self.baseline and a == alpha and t != NO_T)
        if not ts:
            return self.values.get((self.baseline, alpha, NO_T), [])
        return self.values[(self.baseline, alpha, 1.0 if 1.0 in ts else ts[0])]

    # -- table 1 -----------------------------------------------------------------------------------
    def cells(self) -> list[dict[str, Any]]:
        out = []
        for m in self.methods:
            for a, t in self.columns:
                v = self.values.get((m, a, t))
                if not v:
                    continue
                base = self.baseline_cell(a, t)
                p = welch_p(v, base) if base and m != self.baseline else None
                out.append(
                    {
                        "task": self.task,
                        "metric": self.metric,
                        "method": m,
                        "alpha": a,
                        "T": t,
                        "n": len(v),
                        "mean": statistics.mean(v),
                        "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                        "baseline": self.baseline,
                        "baseline_mean": statistics.mean(base) if base else None,
                        "delta": statistics.mean(v) - statistics.mean(base) if base else None,
                        "p_value": p,
                    }
                )
        return out

    def table(self) -> str:
        head = [f"α = {a:.1f}, " + ("no T" if t == NO_T else f"T = {t:g}") for a, t in self.columns]
        best = {}
        for col in self.columns:
            means = [statistics.mean(self.values[(m, *col)]) for m in self.methods if self.values.get((m, *col))]
            best[col] = self.spec.best(means) if means else None
        lines = [
            f"### {self.task}: methods vs {self.baseline} ({self.metric})",
            "",
            "| method | " + " | ".join(head) + " |",
            "|---|" + "---|" * len(head),
        ]
        lines.append(
            "| teacher | "
            + " | ".join(self._ms(self.teacher[a]) if self.teacher.get(a) else "—" for a, _ in self.columns)
            + " |"
        )
        if self.no_kd:
            lines.append(
                "| no KD | "
                + " | ".join(self._cell(self.no_kd, self.baseline_cell(a, t), False) for a, t in self.columns)
                + " |"
            )
        for m in self.methods:
            cells = []
            for col in self.columns:
                v = self.values.get((m, *col))
                if not v:
                    cells.append("—")
                    continue
                text = self._cell(v, self.baseline_cell(*col), m != self.baseline)
                cells.append(
                    text.replace(self._ms(v), f"**{self._ms(v)}**", 1) if statistics.mean(v) == best[col] else text
                )
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def _cell(self, v: list[float], base: list[float], compare: bool) -> str:
        text = self._ms(v)
        if compare and base:
            d = statistics.mean(v) - statistics.mean(base)
            text += f" ({d:+.2f}{mark(welch_p(v, base))})"
        return text

    # -- table 2 ----------------------------------------------------------------------------------
    def ls_rows(self) -> list[dict[str, Any]]:
        if len(self.alphas) < 2:
            return []
        a0, a1 = self.alphas[0], self.alphas[-1]
        out = []
        for m in self.methods:
            for t in sorted({k[2] for k in self.values if k[0] == m}, key=lambda x: (x == NO_T, x if x != NO_T else 0)):
                v0, v1 = self.values.get((m, a0, t)), self.values.get((m, a1, t))
                if not v0 or not v1:
                    continue
                ans = ls_verdict(v0, v1, self.spec.better)
                out.append(
                    {
                        "task": self.task,
                        "metric": self.metric,
                        "method": m,
                        "T": t,
                        "alpha_ls": a1,
                        "alpha_0": a0,
                        "mean_ls": statistics.mean(v1),
                        "mean_0": statistics.mean(v0),
                        "delta": ans.delta,
                        "p_value": ans.p_value,
                        "n_ls": len(v1),
                        "n_0": len(v0),
                        "direction": ans.direction,
                        "significant": "" if ans.significant is None else "yes" if ans.significant else "no",
                        "verdict": ans.verdict,
                    }
                )
        return out

    def ls_table(self) -> str:
        rows = self.ls_rows()
        if not rows:
            return ""
        a0, a1 = rows[0]["alpha_0"], rows[0]["alpha_ls"]
        lines = [
            f"#### Is the LS teacher (α = {a1:g}) better than α = {a0:g}? ({self.metric})",
            "",
            f"| method | T | α = {a0:g} | α = {a1:g} | Δ | Welch p | n | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            v0, v1 = self.values[(r["method"], a0, r["T"])], self.values[(r["method"], a1, r["T"])]
            p = "n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
            t = "no T" if r["T"] == NO_T else f"{r['T']:g}"
            n = f"{r['n_ls']}" if r["n_ls"] == r["n_0"] else f"{r['n_ls']} and {r['n_0']}"
            both = f"{self._ms(v0)} | {self._ms(v1)}"
            lines.append(f"| {r['method']} | {t} | {both} | {r['delta']:+.2f} | {p} | {n} | {r['verdict']} |")
        return "\n".join(lines) + "\n"

    def feature_ls_table(self) -> str:
        """The project's question asked of the feature methods: does the LS teacher help or hurt each one?"""
        feats = [r for r in self.ls_rows() if _is_feature(r["method"])]
        if not feats:
            return ""
        a0, a1 = feats[0]["alpha_0"], feats[0]["alpha_ls"]
        lines = [
            f"#### Feature distillation: does the LS teacher (α = {a1:g}) help or hurt? ({self.metric})",
            "",
            f"| method | T | α = {a0:g} | α = {a1:g} | answer |",
            "|---|---|---|---|---|",
        ]
        for r in feats:
            v0, v1 = self.values[(r["method"], a0, r["T"])], self.values[(r["method"], a1, r["T"])]
            t = "no T" if r["T"] == NO_T else f"{r['T']:g}"
            both = f"{self._ms(v0)} | {self._ms(v1)}"
            lines.append(f"| {r['method']} | {t} | {both} | {ls_answer_text(v0, v1, self.spec.better)} |")
        lines += [
            "",
            f"Welch's t-test over seeds; better / worse: p < {SIGNIFICANCE:g}; one seed a side: undetermined.",
        ]
        return "\n".join(lines) + "\n"

    # -- plot ---------------------------------------------------------------------------------------
    def plot(self, path: Path) -> Path:
        import matplotlib  # heavy: imported only when a figure is drawn

        matplotlib.use("Agg")
        matplotlib.rcParams["text.parse_math"] = False  # names from result.json are text, never mathtext ($)
        import matplotlib.pyplot as plt

        n = len(self.methods)
        cols = min(4, n)
        temps = sorted({t for (_, _, t) in self.values if t != NO_T}) or [1.0]
        fig, axes = plt.subplots(
            math.ceil(n / cols), cols, figsize=(3.2 * cols, 2.6 * math.ceil(n / cols)), squeeze=False, sharey=True
        )
        for ax, m in zip(axes.flat, self.methods):
            for a in self.alphas:
                pts = sorted((t, v) for (mm, aa, t), v in self.values.items() if mm == m and aa == a and t != NO_T)
                if pts:
                    ax.errorbar(
                        [t for t, _ in pts],
                        [statistics.mean(v) for _, v in pts],
                        yerr=[statistics.stdev(v) if len(v) > 1 else 0 for _, v in pts],
                        marker="o",
                        capsize=3,
                        label=f"α = {a:g}",
                    )
                elif self.values.get((m, a, NO_T)):
                    v = self.values[(m, a, NO_T)]
                    ax.axhline(
                        statistics.mean(v), linestyle="--", color=f"C{self.alphas.index(a)}", label=f"α = {a:g} (no T)"
                    )
            ax.set_xscale("log")
            ax.set_xticks(temps, [f"{t:g}" for t in temps])
            ax.minorticks_off()
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("T")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        axes[0][0].set_ylabel(self.metric)
        fig.suptitle(f"{self.task}: {self.metric} vs T (mean ± std over seeds)", fontsize=10)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        store.write_output(path, lambda f: fig.savefig(f, format="png", dpi=100), follow=False)  # a name from data
        plt.close(fig)
        return path


def _is_feature(method: str) -> bool:
    """A feature method (or X+kd) of the registry; False for a name no longer registered."""
    from ..methods import FeatureMethod, method_class

    try:
        return issubclass(method_class(method), FeatureMethod)
    except Exception:
        return False


def _frame(rows: list[dict[str, Any]], metric: str):
    """The columns of ``results.load``'s frame that the comparison reads, from leaderboard rows."""
    import pandas as pd  # heavy: imported when a comparison is built

    return pd.DataFrame.from_records(
        [
            {**{k: r[k] for k in results.CELL_KEY}, metric: r["metrics"].get(metric), "finished_at": r["_finished_at"]}
            for r in rows
        ]
    ).replace({"alpha": {"": math.nan}, "T": {"": math.nan}})


# ------------------------------------------------------------------------------------ published references
def reference_rows(rows: list[dict[str, Any]], task: str, metric: str) -> list[dict[str, Any]]:
    """Each published KD-benchmark number (``data/kd_reference.yaml``, ``data/feature_reference.yaml``) of a pair
    and method this task ran, beside our students of that pair at the reference's cell (alpha 0, its T; ``n`` 0
    when that cell was not run), each at the epoch of the reference's own selection rule (``rule``: its source
    reports the best or the last epoch; ours is the selected or the last epoch of result.json), whatever epoch the
    rows report (``--select``)."""
    if metric != "top1":
        return []
    students = [r for r in latest(rows) if r["task"] == task and r["role"] == "student"]
    ran = {(r["teacher_arch"], r["student_arch"], r["method"]) for r in students}
    out = []
    for ref in kd_references():
        if ref.task != task or (ref.teacher_arch, ref.student_arch, ref.method) not in ran:
            continue
        T = NO_T if ref.T is None else ref.T
        v = [
            r["_by_select"][ref.selection.select][metric]
            for r in students
            if (r["teacher_arch"], r["student_arch"], r["method"]) == (ref.teacher_arch, ref.student_arch, ref.method)
            and r["alpha"] == 0.0
            and r["T"] == T
        ]
        mean = statistics.mean(v) if v else None
        out.append(
            {
                "task": task,
                "pair": ref.pair,
                "method": ref.method,
                "alpha": 0.0,
                "T": ref.T,
                "rule": ref.selection.rule,
                "reference": ref.top1,
                "n": len(v),
                "mean": mean,
                "std": statistics.stdev(v) if len(v) > 1 else 0.0 if v else None,
                "delta": None if mean is None else mean - ref.top1,
                "source": ref.source,
                "rule_source": ref.selection.source,
                "recipe": ref.recipe,
            }
        )
    return out


def reference_table(refs: list[dict[str, Any]]) -> str:
    if not refs:
        return ""
    lines = [
        f"#### {refs[0]['task']}: published references (top1, teachers without LS: α = 0)",
        "",
        "| pair | method | cell | epoch (source's rule) | reference | ours | Δ (ours − ref) | source "
        "| reference recipe |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in refs:
        ours = (
            "not run"
            if r["mean"] is None
            else (f"{r['mean']:.2f}" if r["n"] == 1 else f"{r['mean']:.2f} ± {r['std']:.2f} (n={r['n']})")
        )
        delta = "—" if r["delta"] is None else f"{r['delta']:+.2f}"
        cell = "α = 0" + ("" if r["T"] is None else f", T = {r['T']:g}")
        lines.append(
            f"| {r['pair']} | {r['method']} | {cell} | {RULE_TEXT[r['rule']]} | {r['reference']:.2f} | {ours} | "
            f"{delta} | {r['source']} | {r['recipe']} |"
        )
    rules = {r["rule_source"]: r["rule"] for r in refs}
    lines += [
        "",
        "Sources: " + kd_sources() + ". A reference is one published run per pair; ours is as configured "
        "(recipe, epochs, data) in this run: compare like with like.",
        "",
        "Epoch: each reference is set beside our value at the epoch its source reports (best epoch: our "
        "selected epoch, the best evaluated one; last epoch: our last), whatever --select chooses for the tables "
        "above. The sources' rules: " + "; ".join(f"{RULE_TEXT[rule]}, {src}" for src, rule in rules.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator=store.CSV_LINETERMINATOR)
    w.writerow(dict(zip(w.fieldnames, store.csv_row(w.fieldnames))))  # the header, as writeheader() but neutralised
    for r in rows:
        w.writerow(
            store.csv_dict({k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else v) for k, v in r.items()})
        )
    return store.csv_newlines(buf.getvalue())


NOTE = (
    "Cells: mean ± sample std over seeds (difference to the baseline method in the same cell; Welch's two-sided "
    "t-test over seeds: * p < 0.05, ** p < 0.01, n/a with a single seed). Methods without a temperature ('no T' "
    "columns) are compared with the baseline at T = 1. Bold: the best KD method in the column."
)


def pair_note(rows: list[dict[str, Any]], task: str) -> str:
    """Which methods of ``task``'s students have per-pair settings (their values in each pair run) and which have
    one setting for every pair (their authors publish none per pair); empty for a task without pairs."""
    students = [r for r in rows if r["task"] == task and r["role"] == "student"]
    pairs = sorted({r.get("_pair") for r in students if r.get("_pair")})
    if not pairs:
        return ""
    t = get_task(task)
    per_pair, shared = t.pair_settings()
    table = t.pairs()
    methods = sorted({r["method"] for r in students})

    def fmt(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    lines = []
    for pair in pairs:
        vals = []
        for m in (m for m in methods if m in per_pair):
            mine = table.get(pair, {}).get(m) or {}
            vals.append(
                f"{m} ({', '.join(f'{k} = {fmt(v)}' for k, v in sorted(mine.items()))})"
                if mine
                else f"{m} (the recipe's: no value published for this pair)"
            )
        lines.append(f"Pair {pair}: per-pair settings " + (", ".join(vals) if vals else "none") + ".")
    one = [m for m in methods if m in shared and not any(table.get(p, {}).get(m) for p in pairs)]
    if one:
        lines.append(
            "One setting for every pair (their authors publish no per-pair values; `lskd-bench methods` "
            "says why): " + ", ".join(one) + "."
        )
    return " ".join(lines) + f" Values and sources: lskd_bench/configs/{t.pairs_recipe}.yaml.\n"


def output_paths(out: Path) -> list[Path]:
    """The tables ``compare`` may write: OUT.md, OUT.csv, OUT_ls.csv, OUT_reference.csv."""
    return [out.with_name(out.name + suffix) for suffix in (".md", ".csv", "_ls.csv", "_reference.csv")]


def compare(
    runs: Path,
    out: Path,
    baseline: str | None = None,
    metric: str | None = None,
    task: str | None = None,
    select: str = "selected",
    problems: list[str] | None = None,
    follow: bool = True,
    plot: bool = True,
) -> tuple[str, list[Path]]:
    """Write OUT.md, OUT.csv (table 1 cells), OUT_ls.csv (table 2), OUT_reference.csv (table 3, where published
    references exist) and OUT_<task>.png (unless not ``plot``: the report draws its own chart); return the
    markdown. The tables are output files (``store.write_output``); the figures, named after tasks, are never
    written through a link."""
    rows = collect(Path(runs), select, problems)  # unusable results: a line each in ``problems``
    frame = results.load(Path(runs), select)  # the per-cell values every table aggregates (groupby)
    tasks = sorted({r["task"] for r in rows if r["role"] == "student"})
    if task is not None:
        tasks = [t for t in tasks if t == task]
    if not tasks:
        raise UsageError(f"no finished KD students under {runs}" + (f" for task {task!r}" if task else ""))
    md, cells, ls, refs, written = [], [], [], [], []
    for t in tasks:
        primary = next(r["primary"] for r in rows if r["task"] == t)
        cmp = Comparison(rows, t, metric or primary, baseline, frame)
        ref = reference_rows(rows, t, metric or primary)
        md += [cmp.table(), pair_note(rows, t), cmp.ls_table(), cmp.feature_ls_table(), reference_table(ref)]
        refs += ref
        cells += cmp.cells()
        ls += cmp.ls_rows()
        if plot:
            written.append(cmp.plot(out.parent / f"{out.name}_{t}.png"))
    text = "\n".join(x for x in md if x) + "\n" + NOTE + "\n\n" + environment_md(rows)
    md_path, csv_path, ls_path, ref_path = output_paths(out)
    store.write_output(md_path, lambda f: f.write(text), mode="w", follow=follow)
    store.write_output(csv_path, lambda f: f.write(_csv(cells)), mode="w", follow=follow)
    if ls:
        store.write_output(ls_path, lambda f: f.write(_csv(ls)), mode="w", follow=follow)
    if refs:
        store.write_output(ref_path, lambda f: f.write(_csv(refs)), mode="w", follow=follow)
    extra = [out.with_name(out.name + "_reference.csv")] if refs else []
    return text, [out.with_name(out.name + ".md"), out.with_name(out.name + ".csv"), *extra, *written]
