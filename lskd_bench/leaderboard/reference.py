"""The paper's published tables as data (``lskd_bench/data/paper_reference.yaml``), and the paper's two
qualitative claims checked on any grid:

1. at T = 1 the LS teacher (the largest alpha) gives the better student;
2. the LS teacher's student degrades faster with T than the alpha = 0 teacher's: its drop from T = 1 to the
   largest T is larger.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional

import yaml

from ..config import full_schema, resolve_layers
from ..errors import UsageError
from ..schema import flatten
from ..tasks import get_task


@dataclass
class Reference:
    task: str
    teacher_arch: str
    student_arch: str
    method: str
    metrics: list[str]
    source: str
    teacher: dict[float, list[float]]
    students: dict[float, dict[float, list[float]]]

    def value(self, alpha: float, T: Optional[float] = None, metric: Optional[str] = None) -> Optional[float]:
        table = self.teacher if T is None else self.students.get(float(T), {})
        vals = table.get(float(alpha))
        m = metric or self.metrics[0]
        if vals is None or m not in self.metrics or self.metrics.index(m) >= len(vals):
            return None
        return vals[self.metrics.index(m)]


@lru_cache(maxsize=1)
def references() -> tuple[Reference, ...]:
    data = yaml.safe_load(resources.files("lskd_bench").joinpath("data", "paper_reference.yaml").read_text(encoding="utf-8"))
    out = []
    for t in data["tables"]:
        out.append(Reference(
            t["task"], t["teacher_arch"], t["student_arch"], t["method"], list(t["metrics"]), t["source"],
            {float(a): list(v) for a, v in t["teacher"].items()},
            {float(T): {float(a): list(v) for a, v in row.items()} for T, row in t["students"].items()},
        ))  # fmt: skip
    return tuple(out)


def find(task: str, teacher_arch: str, student_arch: str, method: str) -> Optional[Reference]:
    for r in references():
        if (r.task == task and r.method == method and r.teacher_arch in (teacher_arch, "any")
                and r.student_arch in (student_arch, "any")):
            return r
    return None


# keys that cannot make a cell's setup differ from the paper's: where the data lives
_NOT_RECIPE = {"data.root", "data.layout"}


@lru_cache(maxsize=16)
def _task_recipe(task_name: str):
    """(schema, resolved built-in recipe) of a task; None for a task this install does not know."""
    try:
        task = get_task(task_name)
    except UsageError:
        return None
    return full_schema(task), resolve_layers(task, [("recipe", task.default_config())]).cfg


def recipe_differences(result: dict) -> Optional[list[str]]:
    """Dotted config keys (identity keys only) where a finished cell's setup differs from its task's built-in
    recipe, the paper's: data, the teacher's recipe, and for a student its recipe and its method's parameters.
    None when the result does not record its config (then it cannot be compared with the paper)."""
    cell = result["cell"]
    known = _task_recipe(cell["task"])
    cfg = result.get("run_config")
    if known is None or (not cfg and not (result.get("config") or {}).get("train")):
        return None
    schema, recipe = known
    teacher = cell["role"] == "teacher"
    if not cfg:  # written before run_config: the cell's own role, data and method parameters
        c = result["config"]
        cfg = {"data": c.get("data") or {}, "teacher" if teacher else "student": c["train"]}
        if c.get("method"):
            cfg[cell["method"]] = c["method"]
    sections = ["data", "teacher"] if teacher else ["data", "teacher", "student", cell["method"]]
    diffs = []
    for sec in sections:
        if sec not in cfg or sec not in schema.fields or not hasattr(schema.fields[sec], "identity"):
            continue
        ours = flatten(schema.fields[sec].identity(cfg[sec]), sec)
        theirs = flatten(schema.fields[sec].identity(recipe.get(sec, {})), sec)
        diffs += [k for k in sorted(set(ours) | set(theirs)) if k not in _NOT_RECIPE and ours.get(k) != theirs.get(k)]
    return diffs


def _mean(cells: dict, alpha: float, T: float) -> Optional[float]:
    v = cells.get((alpha, T))
    return statistics.mean(v) if v else None


def claims(cells: dict[tuple[float, float], list[float]]) -> list[tuple[str, Optional[bool]]]:
    """The two claims on student values ``cells[(alpha, T)]``; None where the grid cannot tell."""
    alphas = sorted({a for a, _ in cells})
    temps = sorted({t for _, t in cells if t != ""})
    if len(alphas) < 2 or 1.0 not in temps:
        return [("at T = 1 the LS teacher gives the better student", None),
                ("the LS teacher's student degrades faster with T", None)]
    a0, a1 = alphas[0], alphas[-1]
    s0, s1 = _mean(cells, a0, 1.0), _mean(cells, a1, 1.0)
    c1 = None if s0 is None or s1 is None else s1 > s0
    tmax = temps[-1]
    c2 = None
    if tmax > 1.0:
        e0, e1 = _mean(cells, a0, tmax), _mean(cells, a1, tmax)
        if None not in (s0, s1, e0, e1):
            c2 = (s1 - e1) > (s0 - e0)
    return [(f"at T = 1 the LS teacher (α = {a1:g}) gives the better student", c1),
            (f"the LS teacher's student degrades faster from T = 1 to T = {tmax:g}" if tmax > 1.0
             else "the LS teacher's student degrades faster with T (one temperature: untested)", c2)]


def reference_cells(ref: Reference) -> dict[tuple[float, float], list[float]]:
    return {(a, T): [vals[0]] for T, row in ref.students.items() for a, vals in row.items()}


def claims_text(cells: dict[tuple[float, float], list[float]], ref: Optional[Reference]) -> list[str]:
    mark = {True: "yes", False: "no", None: "n/a"}
    ours = claims(cells)
    paper = claims(reference_cells(ref)) if ref is not None else [(c, None) for c, _ in ours]
    lines = []
    for (claim, v), (_, p) in zip(ours, paper):
        text = f"- Claim: {claim}: ours **{mark[v]}**"
        if ref is not None:
            text += f", paper {mark[p]}"
        lines.append(text)
    return lines


# ------------------------------------------------------------------------------ KD-benchmark references
@dataclass(frozen=True)
class KDReference:
    """One published number of a KD benchmark (``lskd_bench/data/kd_reference.yaml``): ``method`` distilling
    ``teacher_arch`` into ``student_arch`` at temperature ``T`` (teachers without label smoothing: alpha 0)."""

    task: str
    teacher_arch: str
    student_arch: str
    method: str
    T: float
    top1: float
    source: str
    recipe: str

    @property
    def pair(self) -> str:
        return f"{self.teacher_arch}-{self.student_arch}"


@lru_cache(maxsize=1)
def kd_references() -> tuple[KDReference, ...]:
    data = yaml.safe_load(resources.files("lskd_bench").joinpath("data", "kd_reference.yaml").read_text(encoding="utf-8"))
    return tuple(KDReference(r["task"], r["teacher_arch"], r["student_arch"], r["method"], float(r["T"]), float(r["top1"]),
                             r["source"], r["recipe"]) for r in data["references"])


def kd_sources() -> str:
    """The header lines of the references file that name the sources (``[M]``, ``[S]``...)."""
    text = resources.files("lskd_bench").joinpath("data", "kd_reference.yaml").read_text(encoding="utf-8")
    keep, out = False, []
    for line in text.splitlines():
        body = line.lstrip("# ").rstrip()
        if body.startswith("["):
            keep = True
            out.append(body)
        elif keep and line.startswith("#       "):
            continue
        elif not line.startswith("#"):
            break
    return "; ".join(out)
