"""``lskd-bench compare``: KD methods side by side against a baseline method, with seeds and significance.

Per task, table 1 has a row per method (plus the teacher and the no-KD student) and a column per
(alpha, T) cell of the grid; each cell is the mean ± sample std over seeds of one metric, the difference to
the baseline method in the same cell, and a mark where Welch's two-sided t-test over the seeds (unequal
variances) gives p < 0.05 (*) or p < 0.01 (**); "n/a" where a side has a single seed. Methods without a
temperature (DIST, TTM, CTKD, seqKD) fill the "no T" columns and are compared with the baseline method at
T = 1 (the paper's recommended setting; its lowest T if 1 was not run). The best mean per column is bold.

Cells whose configs differ (``results.config_columns``: a sweep of ``kd.lambda``, two ``train.lr``...) are never
averaged together: each config a method ran is a row of its own, its values in extra columns (``kd.lambda``) of
every table and CSV. A row is compared with the baseline method's row of the same ``data.*`` and ``train.*``
values (the first, in the table's order, where the baseline method itself ran several configs: the title names it).

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
from . import by_config, collect, config_order, config_text, config_value, environment_md, latest, mean_std, spec_of
from .reference import RULE_TEXT, SIGNIFICANCE, kd_references, kd_sources, ls_answer_text, ls_verdict, welch_p

NO_T = ""  # the T of a cell whose method has no temperature


def mark(p: float | None) -> str:
    if p is None:
        return ", n/a"
    return " **" if p < 0.01 else " *" if p < 0.05 else ""


Row = tuple[str, tuple]  # (method, ((config column, value), ...)): one config a method ran; () when none varies


def _value(v: Any) -> Any:
    """A config cell of the frame: None where the cell has no such key (NaN, None, NA)."""
    try:
        return None if v is None or v != v else v  # NaN and NA: not equal to themselves
    except TypeError:  # pandas.NA compares to NA
        return None


def _shared(column: str) -> bool:
    """A config column every method's cells have: data.* and train.* (not a method's own section)."""
    return column.startswith(("data.", "train."))


class Comparison:
    def __init__(self, rows: list[dict[str, Any]], task: str, metric: str, baseline: str | None, frame: Any = None):
        """``rows``: the leaderboard's rows (metric specs); ``frame``: the same results as ``results.load``'s
        DataFrame, whose per-cell values the tables aggregate and whose config columns split the rows (built from
        ``rows``, without config columns, when not given)."""
        self.task, self.metric, self.baseline = task, metric, baseline
        rows = [r for r in latest(rows) if r["task"] == task]
        if not rows:
            raise UsageError(f"no finished cells of task {task!r}")
        missing = [r for r in rows if metric not in r["metrics"]]
        if missing:
            have = sorted(rows[0]["metrics"])
            raise UsageError(f"metric {metric!r} is not in the results of task {task!r} (have: {', '.join(have)})")
        self.spec = spec_of(rows[0], metric)  # its direction decides "best" and "better"
        if frame is None:
            frame = _frame(rows, metric)
        df = results.latest(frame, keep_apart=results.config_columns(frame))  # a sweep's configs stay apart
        df = df[df["task"] == task]
        self.config: list[str] = []  # the config columns that split this task's rows, in the frame's order
        self.values: dict[tuple, list[float]] = defaultdict(list)  # (row, alpha, T) -> per-seed values
        self.teacher: dict[tuple, list[float]] = defaultdict(list)  # (config, alpha) -> per-seed values
        self.no_kd: dict[tuple, list[float]] = defaultdict(list)  # config -> per-seed values
        for role in ("student", "teacher", "baseline"):
            part = df[df["role"] == role]
            split = [c for c in results.config_columns(df) if part[c].map(_value).dropna().nunique() > 1]
            self.config += [c for c in split if c not in self.config]
            for r in part.to_dict("records"):
                cfg = tuple((c, _value(r[c])) for c in split if _value(r[c]) is not None)
                if role == "student":
                    t = NO_T if math.isnan(r["T"]) else float(r["T"])
                    self.values[((r["method"], cfg), float(r["alpha"]), t)].append(r[metric])
                elif role == "teacher":
                    self.teacher[(cfg, float(r["alpha"]))].append(r[metric])
                else:
                    self.no_kd[cfg].append(r[metric])
        self.config = [c for c in results.config_columns(df) if c in self.config]
        found = sorted({k[0][0] for k in self.values})
        if baseline is None:  # not asked for: kd, else the first method this task ran (said in the table's title)
            baseline = self.baseline = "kd" if "kd" in found or not found else found[0]
        self.methods = sorted(found, key=lambda m: (m != baseline, m))
        if baseline not in self.methods:
            raise UsageError(
                f"baseline method {baseline!r} has no finished students in task {task!r} "
                f"(found: {', '.join(self.methods) or 'none'})"
            )
        self.rows: list[Row] = sorted({k[0] for k in self.values}, key=self._row_order)
        self.alphas = sorted({k[1] for k in self.values} | {a for _, a in self.teacher})
        temps = sorted({k[2] for k in self.values if k[2] != NO_T})
        self.columns = [(a, t) for a in self.alphas for t in temps]
        if any(k[2] == NO_T for k in self.values):
            self.columns += [(a, NO_T) for a in self.alphas]

    def _row_order(self, row: Row):
        """Baseline method first, then by name; a method's configs by their values (numbers before text)."""
        return (row[0] != self.baseline, row[0], config_order(row[1]))

    def label(self, row: Row) -> str:
        """``kd`` or ``kd (kd.lambda = 0.5)``."""
        return row[0] + (f" ({config_text(row[1])})" if row[1] else "")

    def base_row(self, cfg: tuple) -> Row | None:
        """The baseline method's row compared with a row of config ``cfg``: the first (in the table's order) with
        the same data.* and train.* values."""
        shared = {(c, v) for c, v in cfg if _shared(c)}
        for row in self.rows:
            if row[0] == self.baseline and {(c, v) for c, v in row[1] if _shared(c)} == shared:
                return row
        return None

    def _ms(self, values: list[float]) -> str:
        """Mean ± sample std over seeds in the metric's own format (the leaderboard's ``mean_std``)."""
        return mean_std(values, self.spec.format)

    def baseline_cell(self, alpha: float, T: Any, cfg: tuple = ()) -> list[float]:
        """The baseline method's values in the column (alpha, T) for a row of config ``cfg`` (``base_row``); a
        method without T: the baseline at T = 1, else its lowest T."""
        base = self.base_row(cfg)
        if base is None:
            return []
        if T != NO_T:
            return self.values.get((base, alpha, T), [])
        ts = sorted(t for (r, a, t) in self.values if r == base and a == alpha and t != NO_T)
        if not ts:
            return self.values.get((base, alpha, NO_T), [])
        return self.values[(base, alpha, 1.0 if 1.0 in ts else ts[0])]

    def _config_cells(self, cfg: tuple) -> dict[str, Any]:
        """The config columns of a row (None where it has no such key)."""
        have = dict(cfg)
        return {c: have.get(c) for c in self.config}

    # -- table 1 -----------------------------------------------------------------------------------
    def cells_by_row(self) -> list[tuple[Row, dict[str, Any]]]:
        """Each (row, alpha, T) cell of table 1 with its statistics, in the table's order."""
        out = []
        for row in self.rows:
            m, cfg = row
            base_row = self.base_row(cfg)
            for a, t in self.columns:
                v = self.values.get((row, a, t))
                if not v:
                    continue
                base = self.baseline_cell(a, t, cfg)
                p = welch_p(v, base) if base and row != base_row else None
                cell = {"task": self.task, "metric": self.metric, "method": m, **self._config_cells(cfg)}
                cell.update(
                    {
                        "alpha": a,
                        "T": t,
                        "n": len(v),
                        "mean": statistics.mean(v),
                        "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                        "baseline": self.baseline,
                        **({"baseline_config": config_text(base_row[1]) if base_row else ""} if self.config else {}),
                        "baseline_mean": statistics.mean(base) if base else None,
                        "delta": statistics.mean(v) - statistics.mean(base) if base else None,
                        "p_value": p,
                    }
                )
                out.append((row, cell))
        return out

    def cells(self) -> list[dict[str, Any]]:
        """Table 1 as rows of the CSV: method, its config columns, alpha, T, n, mean, std, the baseline's mean,
        the difference and Welch's p."""
        return [cell for _, cell in self.cells_by_row()]

    def _config_text_cells(self, cfg: tuple) -> str:
        """The config columns of a markdown row ("—" where the row has no such key)."""
        return "".join(f"{'—' if v is None else config_value(v)} | " for v in self._config_cells(cfg).values())

    def table(self) -> str:
        head = [f"α = {a:.1f}, " + ("no T" if t == NO_T else f"T = {t:g}") for a, t in self.columns]
        best = {}
        for col in self.columns:
            means = [statistics.mean(self.values[(r, *col)]) for r in self.rows if self.values.get((r, *col))]
            best[col] = self.spec.best(means) if means else None
        title = self.baseline
        if (
            sum(r[0] == self.baseline for r in self.rows) > 1
        ):  # the baseline ran several configs: the ones compared with
            used = dict.fromkeys(self.base_row(r[1]) for r in self.rows)
            title += " (" + "; ".join(config_text(r[1]) for r in used if r is not None) + ")"
        lines = [
            f"### {self.task}: methods vs {title} ({self.metric})",
            "",
            "| method | " + "".join(f"{config_value(c)} | " for c in self.config) + " | ".join(head) + " |",
            "|---|" + "---|" * (len(self.config) + len(head)),
        ]
        for cfg in sorted({c for c, _ in self.teacher}, key=lambda c: self._row_order(("", c))):
            lines.append(
                "| teacher | "
                + self._config_text_cells(cfg)
                + " | ".join(
                    self._ms(self.teacher[(cfg, a)]) if self.teacher.get((cfg, a)) else "—" for a, _ in self.columns
                )
                + " |"
            )
        for cfg in sorted(self.no_kd, key=lambda c: self._row_order(("", c))):
            lines.append(
                "| no KD | "
                + self._config_text_cells(cfg)
                + " | ".join(self._cell(self.no_kd[cfg], self.baseline_cell(a, t, cfg), False) for a, t in self.columns)
                + " |"
            )
        for row in self.rows:
            m, cfg = row
            cells = []
            for col in self.columns:
                v = self.values.get((row, *col))
                if not v:
                    cells.append("—")
                    continue
                text = self._cell(v, self.baseline_cell(*col, cfg), row != self.base_row(cfg))
                cells.append(
                    text.replace(self._ms(v), f"**{self._ms(v)}**", 1) if statistics.mean(v) == best[col] else text
                )
            lines.append(f"| {m} | " + self._config_text_cells(cfg) + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def _cell(self, v: list[float], base: list[float], compare: bool) -> str:
        text = self._ms(v)
        if compare and base:
            d = statistics.mean(v) - statistics.mean(base)
            text += f" ({d:+.2f}{mark(welch_p(v, base))})"
        return text

    # -- table 2 ----------------------------------------------------------------------------------
    def ls_by_row(self) -> list[tuple[Row, dict[str, Any]]]:
        """Table 2: per row (a method and its config) and T, the largest alpha against alpha 0."""
        if len(self.alphas) < 2:
            return []
        a0, a1 = self.alphas[0], self.alphas[-1]
        out = []
        for row in self.rows:
            ts = {k[2] for k in self.values if k[0] == row}
            for t in sorted(ts, key=lambda x: (x == NO_T, x if x != NO_T else 0)):
                v0, v1 = self.values.get((row, a0, t)), self.values.get((row, a1, t))
                if not v0 or not v1:
                    continue
                ans = ls_verdict(v0, v1, self.spec.better)
                item = {"task": self.task, "metric": self.metric, "method": row[0], **self._config_cells(row[1])}
                item.update(
                    {
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
                out.append((row, item))
        return out

    def ls_rows(self) -> list[dict[str, Any]]:
        return [item for _, item in self.ls_by_row()]

    def ls_table(self) -> str:
        rows = self.ls_by_row()
        if not rows:
            return ""
        a0, a1 = rows[0][1]["alpha_0"], rows[0][1]["alpha_ls"]
        cols = "".join(f"{config_value(c)} | " for c in self.config)
        lines = [
            f"#### Is the LS teacher (α = {a1:g}) better than α = {a0:g}? ({self.metric})",
            "",
            f"| method | {cols}T | α = {a0:g} | α = {a1:g} | Δ | Welch p | n | verdict |",
            "|---|" + "---|" * len(self.config) + "---|---|---|---|---|---|---|",
        ]
        for row, r in rows:
            v0, v1 = self.values[(row, a0, r["T"])], self.values[(row, a1, r["T"])]
            p = "n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
            t = "no T" if r["T"] == NO_T else f"{r['T']:g}"
            n = f"{r['n_ls']}" if r["n_ls"] == r["n_0"] else f"{r['n_ls']} and {r['n_0']}"
            both = f"{self._ms(v0)} | {self._ms(v1)}"
            lines.append(
                f"| {r['method']} | {self._config_text_cells(row[1])}{t} | {both} | {r['delta']:+.2f} | {p} | {n} | "
                f"{r['verdict']} |"
            )
        return "\n".join(lines) + "\n"

    def feature_ls_table(self) -> str:
        """The project's question asked of the feature methods: does the LS teacher help or hurt each one?"""
        feats = [(row, r) for row, r in self.ls_by_row() if _is_feature(r["method"])]
        if not feats:
            return ""
        a0, a1 = feats[0][1]["alpha_0"], feats[0][1]["alpha_ls"]
        cols = "".join(f"{config_value(c)} | " for c in self.config)
        lines = [
            f"#### Feature distillation: does the LS teacher (α = {a1:g}) help or hurt? ({self.metric})",
            "",
            f"| method | {cols}T | α = {a0:g} | α = {a1:g} | answer |",
            "|---|" + "---|" * len(self.config) + "---|---|---|---|",
        ]
        for row, r in feats:
            v0, v1 = self.values[(row, a0, r["T"])], self.values[(row, a1, r["T"])]
            t = "no T" if r["T"] == NO_T else f"{r['T']:g}"
            both = f"{self._ms(v0)} | {self._ms(v1)}"
            answer = ls_answer_text(v0, v1, self.spec.better)
            lines.append(f"| {r['method']} | {self._config_text_cells(row[1])}{t} | {both} | {answer} |")
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

        n = len(self.rows)
        cols = min(4, n)
        temps = sorted({t for (_, _, t) in self.values if t != NO_T}) or [1.0]
        fig, axes = plt.subplots(
            math.ceil(n / cols), cols, figsize=(3.2 * cols, 2.6 * math.ceil(n / cols)), squeeze=False, sharey=True
        )
        for ax, row in zip(axes.flat, self.rows):
            for a in self.alphas:
                pts = sorted((t, v) for (rr, aa, t), v in self.values.items() if rr == row and aa == a and t != NO_T)
                if pts:
                    ax.errorbar(
                        [t for t, _ in pts],
                        [statistics.mean(v) for _, v in pts],
                        yerr=[statistics.stdev(v) if len(v) > 1 else 0 for _, v in pts],
                        marker="o",
                        capsize=3,
                        label=f"α = {a:g}",
                    )
                elif self.values.get((row, a, NO_T)):
                    v = self.values[(row, a, NO_T)]
                    ax.axhline(
                        statistics.mean(v), linestyle="--", color=f"C{self.alphas.index(a)}", label=f"α = {a:g} (no T)"
                    )
            ax.set_xscale("log")
            ax.set_xticks(temps, [f"{t:g}" for t in temps])
            ax.minorticks_off()
            ax.set_title(self.label(row), fontsize=9)
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
    """The columns of ``results.load``'s frame that the comparison reads, from leaderboard rows (their config
    columns from each row's ``_config``)."""
    import pandas as pd  # heavy: imported when a comparison is built

    records = [
        {
            **{k: r[k] for k in results.CELL_KEY},
            **dict(r.get("_config", ())),
            metric: r["metrics"].get(metric),
            "finished_at": r["_finished_at"],
        }
        for r in rows
    ]
    return pd.DataFrame.from_records(records).replace({"alpha": {"": math.nan}, "T": {"": math.nan}})


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
    configs = any(r.get("_config") for r in students)
    out = []
    for ref in kd_references():
        if ref.task != task or (ref.teacher_arch, ref.student_arch, ref.method) not in ran:
            continue
        T = NO_T if ref.T is None else ref.T
        ours = [
            r
            for r in students
            if (r["teacher_arch"], r["student_arch"], r["method"]) == (ref.teacher_arch, ref.student_arch, ref.method)
            and r["alpha"] == 0.0
            and r["T"] == T
        ]
        for cfg, part in by_config(ours) or [((), [])]:  # configs that differ (a kd.lambda sweep): a row each
            v = [r["_by_select"][ref.selection.select][metric] for r in part]
            out.append(_reference_row(ref, task, v, cfg if configs else None))
    return out


def _reference_row(ref, task: str, v: list[float], cfg: tuple | None) -> dict[str, Any]:
    """One reference beside our values ``v``; ``config`` (the config they share) where the task's students differ."""
    mean = statistics.mean(v) if v else None
    row: dict[str, Any] = {"task": task, "pair": ref.pair, "method": ref.method}
    if cfg is not None:
        row["config"] = config_text(cfg)
    row.update(
        {
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
    return row


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
        method = r["method"] + (f" [{r['config']}]" if r.get("config") else "")  # a config of a sweep
        lines.append(
            f"| {r['pair']} | {method} | {cell} | {RULE_TEXT[r['rule']]} | {r['reference']:.2f} | {ours} | "
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
    fields = list(dict.fromkeys(k for r in rows for k in r))  # tasks of several configs: each one's columns
    w = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator=store.CSV_LINETERMINATOR)
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
