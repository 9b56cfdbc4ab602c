"""``lskd-bench plot``: training curves of every finished cell, from the history in its result.json.

One PNG per task and group: the teachers of one architecture; the students of one (student arch, teacher
arch, KD method, seed), with the no-KD baseline of that seed in black. Left panel: mean training loss per
epoch (the cell's own objective, so a KD student's loss moves with T); right panel: the task's primary
metric at each evaluated epoch. Colour: the teacher's alpha; line style: T.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from .. import store
from ..errors import UsageError
from ..tasks import result_metrics

STYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 1, 2))]
DPI = 100


def _fmt(v: float) -> str:
    return f"{v:g}"


def group_results(
    runs: Path, task: str | None = None, problems: list[str] | None = None
) -> dict[str, dict[tuple, list[dict[str, Any]]]]:
    """{task: {group key: [result, ...]}} of the finished cells under ``runs`` (latest result per cell name;
    unusable results: a line each in ``problems``)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for res in store.iter_results(runs, problems):
        c = res["cell"]
        if task and c["task"] != task:
            continue
        key = (c["task"], c.get("name") or c["hash"])
        if key not in latest or res.get("finished_at", "") >= latest[key].get("finished_at", ""):
            latest[key] = res
    if not latest:
        raise UsageError(f"no finished cells{f' of task {task!r}' if task else ''} under {runs}")
    tasks: dict[str, dict[tuple, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    baselines = []
    for res in latest.values():
        c = res["cell"]
        if c["role"] == "teacher":
            tasks[c["task"]][("teachers", c["arch"])].append(res)
        elif c["role"] == "baseline":
            baselines.append(res)
        else:
            tasks[c["task"]][("students", c["arch"], c["teacher_arch"], c["method"], c["seed"])].append(res)
    for res in baselines:
        c = res["cell"]
        hosts = [k for k in tasks[c["task"]] if k[0] == "students" and k[1] == c["arch"] and k[4] == c["seed"]]
        for k in hosts or [("baseline", c["arch"], c["seed"])]:
            tasks[c["task"]][k].append(res)
    return {t: dict(g) for t, g in tasks.items()}


def group_name(key: tuple) -> str:
    if key[0] == "teachers":
        return f"teachers_{key[1]}"
    if key[0] == "baseline":
        return f"baseline_{key[1]}_s{key[2]}"
    _, arch, t_arch, method, seed = key
    return f"students_{method}_{t_arch}-{arch}_s{seed}"


def group_title(task: str, key: tuple) -> str:
    if key[0] == "teachers":
        return f"{task}: teachers ({key[1]}), one per label smoothing alpha"
    if key[0] == "baseline":
        return f"{task}: no-KD student ({key[1]}), seed {key[2]}"
    _, arch, t_arch, method, seed = key
    return f"{task}: {method} students {t_arch} -> {arch}, seed {seed} (black: no-KD student)"


def metric_title(result: dict[str, Any], metric: str) -> str:
    """The history's metrics are on ``data.val``: the validation split of image tasks (it is their test set),
    the test split of a task that selects its epoch on a split of its own (translation: ``valid``)."""
    split = (result.get("selection") or {}).get("split")
    return f"validation {metric}" if split in (None, "val") else f"test {metric} (epoch selected on {split})"


def plot_group(
    task: str, key: tuple, results: list[dict[str, Any]], path: Path, alphas: list[float], temps: list[float]
) -> Path:
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # names from result.json are text, never mathtext ($)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    cmap = matplotlib.colormaps["plasma"]
    colour = {a: cmap(0.85 * i / max(len(alphas) - 1, 1)) for i, a in enumerate(alphas)}
    style = {t: STYLES[i % len(STYLES)] for i, t in enumerate(temps)}
    specs = result_metrics(results[0])
    metric = results[0].get("primary_metric") or specs[0].name
    label = next((m.label for m in specs if m.name == metric), metric)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=DPI)
    order = sorted(results, key=lambda r: (r["cell"]["role"] != "baseline", r["cell"]["alpha"], r["cell"]["T"] or 0))
    for r in order:
        c = r["cell"]
        hist = r.get("history") or []
        if c["role"] == "baseline":
            kw: dict[str, Any] = {
                "color": "black",
                "linestyle": "-",
                "linewidth": 2.6,
                "zorder": 1,
            }  # under the students
        else:
            kw = {
                "color": colour[c["alpha"]],
                "linestyle": style[c["T"]] if c["T"] is not None else "-",
                "linewidth": 1.6,
                "zorder": 2,
            }
        ax_loss.plot([h["epoch"] for h in hist], [h["loss"] for h in hist], **kw)
        ev = [h for h in hist if h.get("eval") and metric in h["eval"]]
        ax_metric.plot(
            [h["epoch"] for h in ev], [h["eval"][metric] for h in ev], marker="." if len(ev) < 15 else None, **kw
        )
    ax_loss.set(xlabel="epoch", ylabel="training loss (own objective)", title="training loss")
    ax_metric.set(xlabel="epoch", ylabel=label, title=metric_title(results[0], metric))
    losses = [h["loss"] for r in results for h in r.get("history") or []]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 30:  # T^2-scaled KD losses span decades
        ax_loss.set_yscale("log")
    for ax in (ax_loss, ax_metric):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    present_a = sorted({r["cell"]["alpha"] for r in results if r["cell"]["role"] != "baseline"})
    handles = [Line2D([], [], color=colour[a], linewidth=3, label=f"alpha = {_fmt(a)}") for a in present_a]
    present_t = sorted({r["cell"]["T"] for r in results if r["cell"]["T"] is not None})
    handles += [
        Line2D([], [], color="grey", linestyle=style[t], linewidth=1.6, label=f"T = {_fmt(t)}") for t in present_t
    ]
    if any(r["cell"]["role"] == "baseline" for r in results):
        handles.append(Line2D([], [], color="black", linewidth=2.6, label="no KD"))
    fig.legend(handles=handles, loc="center right", frameon=False)
    fig.suptitle(group_title(task, key))
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_output(path, lambda f: fig.savefig(f, format="png"), follow=False)  # replaced, never followed
    plt.close(fig)
    return path


def plot_curves(
    runs: Path, out: Path | None = None, task: str | None = None, problems: list[str] | None = None
) -> list[Path]:
    """Write one PNG per (task, group) under ``out`` (default RUNS/<task>/curves/); return their paths."""
    runs = Path(runs)
    paths = []
    for t, groups in sorted(group_results(runs, task, problems).items()):
        every = [r for rs in groups.values() for r in rs]
        alphas = sorted({r["cell"]["alpha"] for r in every})
        temps = sorted({r["cell"]["T"] for r in every if r["cell"]["T"] is not None})
        folder = Path(out) / t if out else runs / t / "curves"
        for key, results in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
            paths.append(plot_group(t, key, results, folder / f"{group_name(key)}.png", alphas, temps))
    return paths
