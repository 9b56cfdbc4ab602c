"""The paper's published tables as data (``lskd_bench/data/paper_reference.yaml``), and the paper's two
qualitative claims checked on any grid:

1. at T = 1 the LS teacher (the largest alpha) gives the better student;
2. the LS teacher's student degrades faster with T than the alpha = 0 teacher's: its drop from T = 1 to the
   largest T is larger.

Each claim states its evidence (``Claim``): the difference of means in the claim's direction, Welch's two-sided
p-value over seeds and the number of seeds; with a single seed on a side it is "undetermined (1 seed)".
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from ..config import full_schema, resolve_layers
from ..errors import UsageError
from ..schema import flatten
from ..tasks import get_task

# ------------------------------------------------------------------------------ selection rules
RULES = {"best": "selected", "last": "last"}  # a source's rule -> the lskd-bench epoch (``--select``) that matches it
RULE_TEXT = {"best": "best epoch", "last": "last epoch"}


@dataclass(frozen=True)
class Selection:
    """The epoch a source reports: ``rule`` "best" (the best evaluated epoch; for translation the epoch selected on
    the valid split) or "last" (the final weights), and ``source``, the file:line that shows it. Our value beside
    the source's is the result's epoch of the same rule (``select``: result.json's ``best`` or ``last``)."""

    rule: str
    source: str

    @property
    def select(self) -> str:
        return RULES[self.rule]

    @property
    def text(self) -> str:
        return RULE_TEXT[self.rule]


def selection_of(entry: Any, where: str) -> Selection:
    """A ``{rule, source}`` mapping of a reference file, checked."""
    if not isinstance(entry, dict) or entry.get("rule") not in RULES:
        raise ValueError(f"{where}: selection rule must be one of {', '.join(RULES)} (got {entry!r})")
    if not isinstance(entry.get("source"), str) or not entry["source"].strip():
        raise ValueError(f"{where}: selection rule {entry['rule']!r} has no source (file:line)")
    return Selection(entry["rule"], entry["source"])


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
    selection: Selection  # the epoch the paper reports

    def value(self, alpha: float, T: float | None = None, metric: str | None = None) -> float | None:
        table = self.teacher if T is None else self.students.get(float(T), {})
        vals = table.get(float(alpha))
        m = metric or self.metrics[0]
        if vals is None or m not in self.metrics or self.metrics.index(m) >= len(vals):
            return None
        return vals[self.metrics.index(m)]


@lru_cache(maxsize=1)
def references() -> tuple[Reference, ...]:
    data = yaml.safe_load(
        resources.files("lskd_bench").joinpath("data", "paper_reference.yaml").read_text(encoding="utf-8")
    )
    out = []
    for t in data["tables"]:
        out.append(Reference(
            t["task"], t["teacher_arch"], t["student_arch"], t["method"], list(t["metrics"]), t["source"],
            {float(a): list(v) for a, v in t["teacher"].items()},
            {float(T): {float(a): list(v) for a, v in row.items()} for T, row in t["students"].items()},
            selection_of(t.get("selection"), f"paper_reference.yaml: {t['task']} {t['source']}"),
        ))  # fmt: skip
    return tuple(out)


def find(task: str, teacher_arch: str, student_arch: str, method: str) -> Reference | None:
    for r in references():
        if (
            r.task == task
            and r.method == method
            and r.teacher_arch in (teacher_arch, "any")
            and r.student_arch in (student_arch, "any")
        ):
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


def recipe_differences(result: dict) -> list[str] | None:
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
    if cell["role"] == "student" and cfg.get("teacher_weights", "last") != recipe.get("teacher_weights", "last"):
        diffs.append("teacher_weights")  # a result without the key distilled from the teacher's last weights
    return diffs


SIGNIFICANCE = 0.05  # a claim's difference is called significant below this two-sided Welch p-value


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (``scipy.stats.ttest_ind(a, b, equal_var=False)``); None when either
    side has fewer than two values. Both sides without variance: 1 if their means are equal, else 0."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        return 1.0 if statistics.mean(a) == statistics.mean(b) else 0.0
    from scipy import stats  # heavy (scipy): imported on first use

    with warnings.catch_warnings():  # near-identical seeds: scipy warns about precision, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims checked on a grid, with its evidence: the claim's difference of means
    (positive: the claim's direction), Welch's two-sided p-value over seeds and the values on each side."""

    text: str
    delta: float | None = None  # None: the grid cannot tell (one alpha, a missing cell)
    p_value: float | None = None  # None: a side with a single value (no test)
    n: tuple[int, int] = (0, 0)  # values on the LS side, on the alpha = 0 side

    @property
    def holds(self) -> bool | None:
        return None if self.delta is None else self.delta > 0

    @property
    def verdict(self) -> str:
        """ "yes"/"no" (the direction of the difference, with at least two seeds a side), "undetermined (1 seed)",
        or "n/a" where the grid cannot tell."""
        if self.delta is None:
            return "n/a"
        if self.p_value is None:
            return "undetermined (1 seed)"
        return "yes" if self.holds else "no"

    @property
    def significant(self) -> bool | None:
        return None if self.p_value is None else self.p_value < SIGNIFICANCE

    def evidence(self) -> str:
        """``+0.96, p = 0.482, n = 3: not significant`` (``+0.74, n = 1`` without a test)."""
        if self.delta is None:
            return ""
        n = f"n = {self.n[0]}" if self.n[0] == self.n[1] else f"n = {self.n[0]} and {self.n[1]}"
        if self.p_value is None:
            return f"{self.delta:+.2f}, {n}"
        sig = f"significant (p < {SIGNIFICANCE:g})" if self.significant else "not significant"
        return f"{self.delta:+.2f}, p = {self.p_value:.3g}, {n}: {sig}"


@dataclass(frozen=True)
class LSVerdict:
    """Is the label-smoothed teacher's student better than alpha = 0's? ``verdict`` is the one wording of the
    answer everywhere (compare's table 2 and compare_ls.csv, its feature-method table, the leaderboard's line
    under a table without T, the report): ``LS teacher better (significant, p < 0.05)`` / ``LS teacher worse
    (significant, p < 0.05)`` when Welch's p < SIGNIFICANCE, ``no significant difference`` otherwise, and
    ``undetermined (1 seed)`` when a side has one value (no test). ``direction``: the sign alone, whatever p."""

    verdict: str
    direction: str  # "LS teacher better" / "LS teacher worse" / "equal"
    delta: float  # mean(v1) - mean(v0)
    p_value: float | None
    n: tuple[int, int]  # values on the LS side, on the alpha = 0 side

    @property
    def significant(self) -> bool | None:
        return None if self.p_value is None else self.p_value < SIGNIFICANCE

    def text(self) -> str:
        """``LS teacher better (significant, p < 0.05): +0.96, p = 0.03, n = 3`` (n: seeds per side)."""
        n = f"{self.n[0]}" if self.n[0] == self.n[1] else f"{self.n[0]} and {self.n[1]}"
        p = "" if self.p_value is None else f", p = {self.p_value:.3g}"
        return f"{self.verdict}: {self.delta:+.2f}{p}, n = {n}"


def ls_verdict(v0: Sequence[float], v1: Sequence[float], better) -> LSVerdict:
    """The answer for the values ``v0`` (alpha = 0's students, per seed) and ``v1`` (the LS teacher's), by the
    metric's direction ``better(a, b)``: the single source of the LS verdict's wording (``LSVerdict``)."""
    m0, m1 = statistics.mean(v0), statistics.mean(v1)
    d = m1 - m0
    direction = "equal" if d == 0 else "LS teacher better" if better(m1, m0) else "LS teacher worse"
    p = welch_p(v1, v0)
    if p is None:
        verdict = "undetermined (1 seed)"
    elif p >= SIGNIFICANCE or d == 0:
        verdict = "no significant difference"
    else:
        verdict = f"{direction} (significant, p < {SIGNIFICANCE:g})"
    return LSVerdict(verdict, direction, d, p, (len(v1), len(v0)))


def ls_answer_text(v0: Sequence[float], v1: Sequence[float], better) -> str:
    """``LSVerdict.text`` of ``ls_verdict``."""
    return ls_verdict(v0, v1, better).text()


def _values(cells: dict, alpha: float, T: float) -> dict:
    """``{seed: value}`` of one cell (a list is numbered)."""
    v = cells.get((alpha, T)) or {}
    return dict(v) if isinstance(v, dict) else dict(enumerate(v))


def claims(cells: dict[tuple[float, float], Any]) -> list[Claim]:
    """The two claims on student values ``cells[(alpha, T)]`` (``{seed: value}``, or a list of values):

    1. at T = 1 the LS teacher's (largest alpha) students beat alpha = 0's: difference of means, Welch over seeds;
    2. the LS teacher's students degrade faster from T = 1 to the largest T: each seed's drop (its T = 1 value
       minus its largest-T value, same seed), LS drops minus alpha = 0 drops, Welch over those drops."""
    alphas = sorted({a for a, _ in cells})
    temps = sorted({t for _, t in cells if t != ""})
    if len(alphas) < 2 or 1.0 not in temps:
        return [
            Claim("at T = 1 the LS teacher gives the better student"),
            Claim("the LS teacher's student degrades faster with T"),
        ]
    a0, a1 = alphas[0], alphas[-1]
    s0, s1 = _values(cells, a0, 1.0), _values(cells, a1, 1.0)
    c1 = Claim(f"at T = 1 the LS teacher (α = {a1:g}) gives the better student")
    if s0 and s1:
        v1, v0 = list(s1.values()), list(s0.values())
        c1 = Claim(c1.text, statistics.mean(v1) - statistics.mean(v0), welch_p(v1, v0), (len(v1), len(v0)))
    tmax = temps[-1]
    if tmax <= 1.0:
        return [c1, Claim("the LS teacher's student degrades faster with T (one temperature: untested)")]
    c2 = Claim(f"the LS teacher's student degrades faster from T = 1 to T = {tmax:g}")
    e0, e1 = _values(cells, a0, tmax), _values(cells, a1, tmax)
    d1 = [s1[k] - e1[k] for k in sorted(s1.keys() & e1.keys())]
    d0 = [s0[k] - e0[k] for k in sorted(s0.keys() & e0.keys())]
    if d0 and d1:
        c2 = Claim(c2.text, statistics.mean(d1) - statistics.mean(d0), welch_p(d1, d0), (len(d1), len(d0)))
    return [c1, c2]


def reference_cells(ref: Reference) -> dict[tuple[float, float], list[float]]:
    return {(a, T): [vals[0]] for T, row in ref.students.items() for a, vals in row.items()}


def claims_text(cells: dict[tuple[float, float], Any], ref: Reference | None) -> list[str]:
    """One line per claim: our verdict with its evidence, and the paper's (one run per cell: no test)."""
    ours = claims(cells)
    paper = claims(reference_cells(ref)) if ref is not None else [None] * len(ours)
    lines = []
    for c, p in zip(ours, paper):
        text = f"- Claim: {c.text}: ours **{c.verdict}**" + (f": {c.evidence()}" if c.delta is not None else "")
        if p is not None:
            text += (
                "; paper n/a"
                if p.delta is None
                else f"; paper {'yes' if p.holds else 'no'}: {p.delta:+.2f} (one run per cell: no test)"
            )
        lines.append(text)
    return lines


def claim_rows(cells: dict[tuple[float, float], Any], ref: Reference | None, **key: Any) -> list[dict[str, Any]]:
    """The claims as CSV rows: ``key`` (task, archs, method), the claim, verdict, delta, p-value, n per side,
    significance, and the paper's verdict and delta."""
    ours = claims(cells)
    paper = claims(reference_cells(ref)) if ref is not None else [None] * len(ours)
    rows = []
    for i, (c, p) in enumerate(zip(ours, paper), 1):
        rows.append(
            {
                **key,
                "claim": i,
                "text": c.text,
                "verdict": c.verdict,
                "direction": "" if c.holds is None else "yes" if c.holds else "no",
                "delta": c.delta,
                "p_value": c.p_value,
                "n_ls": c.n[0],
                "n_0": c.n[1],
                "significant": "" if c.significant is None else "yes" if c.significant else "no",
                "paper_direction": "" if p is None or p.holds is None else "yes" if p.holds else "no",
                "paper_delta": None if p is None else p.delta,
            }
        )
    return rows


# ------------------------------------------------------------------------------ KD-benchmark references
@dataclass(frozen=True)
class KDReference:
    """One published number of a KD benchmark (``lskd_bench/data/kd_reference.yaml``): ``method`` distilling
    ``teacher_arch`` into ``student_arch`` at temperature ``T`` (teachers without label smoothing: alpha 0)."""

    task: str
    teacher_arch: str
    student_arch: str
    method: str
    T: float | None  # None: a method without a temperature
    top1: float
    source: str
    recipe: str
    selection: Selection  # the epoch the source reports: compare sets ours of the same rule beside it

    @property
    def pair(self) -> str:
        return f"{self.teacher_arch}-{self.student_arch}"


@lru_cache(maxsize=1)
def kd_references() -> tuple[KDReference, ...]:
    data = yaml.safe_load(
        resources.files("lskd_bench").joinpath("data", "kd_reference.yaml").read_text(encoding="utf-8")
    )
    rules = source_rules(data, "kd_reference.yaml")
    logit = tuple(
        KDReference(
            r["task"],
            r["teacher_arch"],
            r["student_arch"],
            r["method"],
            float(r["T"]),
            float(r["top1"]),
            r["source"],
            r["recipe"],
            _rule_of(rules, r.get("selection") or _tag(r["source"]), f"kd_reference.yaml: {r['source']}"),
        )
        for r in data["references"]
    )
    return logit + feature_references({(r.task, r.pair, r.method) for r in logit})


def source_rules(data: dict[str, Any], name: str) -> dict[str, Selection]:
    """The ``selection`` mapping of a reference file: the rule of each source (``[M]``...) or named group of rows."""
    rules = data.get("selection")
    if not isinstance(rules, dict) or not rules:
        raise ValueError(f"{name}: no selection rules (which epoch each source reports)")
    return {key: selection_of(v, f"{name}: selection {key}") for key, v in rules.items()}


def _tag(source: str) -> str:
    """``[M]`` of ``[M] README.md:54``."""
    return source.split("]", 1)[0] + "]"


def _rule_of(rules: dict[str, Selection], key: str, where: str) -> Selection:
    if key not in rules:
        raise ValueError(f"{where}: no selection rule {key!r} (have: {', '.join(rules)})")
    return rules[key]


FEATURE_RECIPE = (
    "RepDistiller: 240 epochs, batch 64, SGD lr 0.05 (0.01 for MobileNetV2/ShuffleNet students), -r 1 -a 0 -b beta"
)
KD_RECIPE = (
    "RepDistiller: 240 epochs, batch 64, SGD lr 0.05 (0.01 for MobileNetV2/ShuffleNet students); KD T 4 "
    "(train_student.py:78), -r 0.1 -a 0.9 (scripts/run_cifar_distill.sh:5)"
)
KD_T = 4.0  # RepDistiller's --kd_T default (train_student.py:78), the cell of its KD numbers
SIMKD_RECIPE = (
    "SimKD's authors: 240 epochs, batch 64, SGD lr 0.05 (train_student.py:42-51), -c 0 -d 0 -b 1, factor 2 "
    "(README.md:43)"
)


def feature_references(logit: Collection[tuple[str, str, str]] = ()) -> tuple[KDReference, ...]:
    """RepDistiller's README numbers and SimKD's authors' (``data/feature_reference.yaml``, each at its source's
    selection rule), one per pair and method: a feature
    method's cell is alpha 0 with no T (``T`` None), KD's alpha 0 at T 4. A KD number is kept only where
    ``logit`` (``(task, pair, method)`` of ``kd_reference.yaml``'s rows) has none for the pair: mdistiller's KD
    rows are RepDistiller's numbers, and RepDistiller alone publishes resnet110-resnet20 and ResNet50-vgg8."""
    from .feature_reference import load, rows

    rules = source_rules(load(), "feature_reference.yaml")
    recipes = {"[D]": SIMKD_RECIPE}  # SimKD's authors' rows; RepDistiller's ([R]) by method
    return tuple(
        KDReference(
            "cifar100",
            *pair.split("-"),
            what,
            KD_T if what == "kd" else None,
            top1,
            source,
            recipes.get(_tag(source), KD_RECIPE if what == "kd" else FEATURE_RECIPE),
            _rule_of(rules, _tag(source), "feature_reference.yaml"),
        )
        for pair, what, top1, source in rows()
        if what not in ("teacher", "student") and ("cifar100", pair, what) not in logit
    )


def kd_sources() -> str:
    """The header lines of the reference files that name the sources (``[M]``, ``[S]``, ``[R]``...)."""
    feature = [s for s in _sources("feature_reference.yaml") if not s.startswith("[O]")]  # [R], [D] ([O]: unmapped)
    return "; ".join(_sources("kd_reference.yaml") + feature)


def _sources(name: str) -> list[str]:
    text = resources.files("lskd_bench").joinpath("data", name).read_text(encoding="utf-8")
    keep, out = False, []
    for line in text.splitlines():
        body = line.lstrip("# ").rstrip()
        if body.startswith("["):
            keep = True
            out.append(body)
        elif keep and line.startswith("#       "):
            if out[-1].count('"') % 2:  # a quoted title cut by the line's end: joined up to its closing quote
                rest = body
                end = rest.find('"')
                out[-1] += " " + (rest[: end + 1] if end >= 0 else rest)
        elif not line.startswith("#"):
            break
    return out
