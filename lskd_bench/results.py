"""A run directory's results as one tidy pandas DataFrame, and its export (``lskd-bench export``).

``load(runs_dir)`` reads every finished cell's ``result.json`` under ``runs_dir`` (any depth; an unusable one is
skipped, with a line in ``problems``) into one row per cell:

- identity: ``task``, ``role`` (teacher / student / baseline), ``cell`` (its directory name), ``teacher_arch``,
  ``student_arch``, ``method``, ``alpha`` (the teacher's label smoothing; NaN for the no-KD baseline), ``T`` (NaN
  for methods without a temperature and for teachers), ``seed``, ``config_hash``;
- every metric of the reported epoch under its own name (``top1``, ``top5``, ``bleu``...: the selected epoch with
  ``select="selected"`` (or its alias ``"best"``), the last with ``select="last"``) and the other epoch's with a
  prefix (``last_`` or ``selected_``); ``primary_metric``; ``epoch`` (the reported epoch), ``selected_epoch``,
  ``epochs``, ``selected_on`` (where the epoch was selected), ``select`` ("selected" or "last");
- for students, the teacher they distilled from: ``teacher_cell``, ``teacher_weights`` (last / selected) and
  ``teacher_epoch`` (empty for results written before it was recorded);
- ``wall_s``, ``finished_at``, ``cell_dir`` and the environment it ran in as ``env_<key>`` columns
  (``env_lskd_bench``, ``env_commit``, ``env_torch``, ``env_device``, ``env_cpu``, ``env_threads``...);
- right after the identity, the config keys that enter a cell's hash and differ between the loaded cells (of one
  task and role): ``data.<key>``, ``train.<key>`` (the role's recipe), ``<method>.<key>`` (``kd.lambda``; a
  composition ``X+kd``: ``X.<key>`` and ``compose.<key>``), from each result.json's ``config``; empty where a
  cell has no such key (another method) or its result predates the record. ``config_columns(df)`` names them:
  group by them too, so that a sweep of ``kd.lambda`` is never averaged together.

pandas is imported when a frame is built (heavy: not on every CLI start).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import store
from .errors import UsageError
from .tasks import result_metrics

FORMATS = ("csv", "parquet", "jsonl")
ID_COLUMNS = ["task", "role", "cell", "teacher_arch", "student_arch", "method", "alpha", "T", "seed", "config_hash"]
SELECTIONS = ("selected", "last")  # which epoch a row reports: the selected one (result.json's "best") or the last
SELECT_ALIASES = {"best": "selected"}  # the earlier name of "selected", still accepted
OTHER_PREFIX = {"selected": "last_", "last": "selected_"}  # the other epoch's metrics beside the reported one's
_ROLE_ORDER = {"teacher": 0, "baseline": 1, "student": 2}


def selected_on(result: dict[str, Any]) -> str:
    """Where the selected epoch was chosen: "val" (image tasks: the test set, as the paper),
    "valid:<metric>" (translation), or "test" (translation results written before selection on the valid split)."""
    sel = result.get("selection")
    if sel:
        return "valid:" + sel["metric"] if sel.get("split") == "valid" else str(sel.get("split", "val"))
    return "test" if (result.get("metric_info") or {}).get("split", "val") == "test" else "val"


def select_name(select: str) -> str:
    """``select`` under its one name, "selected" or "last" ("best": an alias of "selected"); UsageError otherwise."""
    name = SELECT_ALIASES.get(select, select)
    if name not in SELECTIONS:
        raise UsageError(f"select must be selected (or best) or last, got {select!r}")
    return name


def identity_values(result: dict[str, Any], schemas: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config values of one result that enter its cell's hash, flattened: ``data.<key>``, ``train.<key>`` (the
    role's recipe), ``<section>.<key>`` of the method's parameters; lists as JSON text. Keys the task's schema
    marks as no part of the identity (``eval_every``...) are left out; an unknown task's are all kept."""
    cfg = result.get("config") or {}
    c = result["cell"]
    schema = _schema(c["task"], schemas if schemas is not None else {})
    section = "teacher" if c["role"] == "teacher" else "student"
    parts: dict[str, Any] = {}
    for name, key in (("data", "data"), ("train", section)):
        value = cfg.get(name)
        if isinstance(value, dict):
            parts[name] = _section_identity(schema, key, value)
    params = cfg.get("method")
    if isinstance(params, dict) and c["role"] == "student":
        params = _method_identity(c["method"], params)
        base = str(c["method"]).partition("+")[0]
        compose = params.pop("compose", None) if "+" in str(c["method"]) else None
        parts[base] = params
        if isinstance(compose, dict):
            parts["compose"] = compose
    out: dict[str, Any] = {}
    _flatten(parts, "", out)
    return out


def _schema(task: str, cache: dict[str, Any]) -> Any:
    """The run schema of ``task`` (None: not a task this installation knows)."""
    if task not in cache:
        try:
            from .config import full_schema
            from .tasks import get_task

            cache[task] = full_schema(get_task(task))
        except Exception:  # a plugin task not installed here: every recorded key is kept
            cache[task] = None
    return cache[task]


def _section_identity(schema: Any, key: str, value: dict[str, Any]) -> dict[str, Any]:
    try:
        return schema.fields[key].identity(value)
    except Exception:  # no schema (an unknown task), or a recorded value of another shape: as recorded
        return value


def _method_identity(method: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        from .methods import method_class

        return dict(method_class(method).identity_params(dict(params)))
    except Exception:  # a method not installed here, or parameters it would refuse: as recorded
        return dict(params)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict):
                _flatten(v, f"{prefix}{k}.", out)
            else:
                out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v


def config_columns(df) -> list[str]:
    """The config columns of a ``load`` frame (``data.<key>``, ``train.<key>``, ``<method>.<key>``)."""
    methods = {m.partition("+")[0] for m in df["method"].dropna().astype(str)} if "method" in df else set()
    prefixes = {"data", "train", "compose", *methods}
    return [c for c in df.columns if isinstance(c, str) and "." in c and c.split(".")[0] in prefixes]


def record(result: dict[str, Any], select: str = "selected") -> dict[str, Any]:
    """One cell's row (see the module docstring); ``select`` "selected" (alias "best") reports the selected epoch,
    "last" the last."""
    select = select_name(select)
    c = result["cell"]
    role = c["role"]
    last = {"epoch": result.get("epochs"), "metrics": result["metrics"]}
    best = store.selected_epoch(result) or last
    chosen, other = (best, last) if select == "selected" else (last, best)
    specs = result_metrics(result)
    tw = result.get("teacher_weights") or {}
    row: dict[str, Any] = {
        "task": c["task"],
        "role": role,
        "cell": Path(str(result.get("cell_dir", ""))).name or f"{c.get('name', '')}-{c['hash']}",
        "teacher_arch": c["arch"] if role == "teacher" else (c.get("teacher_arch") or ""),
        "student_arch": "" if role == "teacher" else c["arch"],
        "method": c["method"],
        "alpha": math.nan if role == "baseline" else float(c["alpha"]),
        "T": math.nan if c["T"] is None else float(c["T"]),
        "seed": int(c["seed"]),
        "config_hash": c["hash"],
    }
    row.update({k: float(v) for k, v in chosen["metrics"].items()})
    row.update({OTHER_PREFIX[select] + k: float(v) for k, v in other["metrics"].items()})
    row.update(
        {
            "primary_metric": result.get("primary_metric") or (specs[0].name if specs else ""),
            "select": select,
            "epoch": chosen.get("epoch"),
            "selected_epoch": best.get("epoch"),
            "epochs": int(result["epochs"]),
            "selected_on": selected_on(result),
            "teacher_cell": c.get("teacher") or "",
            "teacher_weights": tw.get("which", ""),
            "teacher_epoch": tw.get("epoch"),
            "wall_s": float(result["timings"]["wall_s"]),
            "finished_at": result.get("finished_at", ""),
            "cell_dir": str(result.get("cell_dir", "")),
        }
    )
    for k, v in sorted((result.get("env") or {}).items()):
        row["env_" + k] = ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return row


def _sort_key(r: dict[str, Any]):
    return (
        r["task"],
        _ROLE_ORDER.get(r["role"], 9),
        r["method"],
        -1.0 if math.isnan(r["alpha"]) else r["alpha"],
        -1.0 if math.isnan(r["T"]) else r["T"],
        r["seed"],
        r["config_hash"],
    )


def load(runs_dir: Path, select: str = "selected", problems: list[str] | None = None):
    """Every finished cell under ``runs_dir`` as a pandas DataFrame, one row per cell, in a stable order (task,
    role, method, alpha, T, seed). Unusable results are skipped (a line each in ``problems``)."""
    import pandas as pd  # heavy: imported when a frame is built

    schemas: dict[str, Any] = {}
    pairs = [(record(r, select), identity_values(r, schemas)) for r in store.iter_results(Path(runs_dir), problems)]
    if not pairs:
        return pd.DataFrame(columns=ID_COLUMNS)
    config = varying_keys(pairs)
    for row, ident in pairs:
        row.update({k: ident[k] for k in config if k in ident})
    rows = sorted((row for row, _ in pairs), key=_sort_key)
    metric_names: dict[str, None] = {}
    for r in rows:  # metric columns right after the identity and config, in the order the rows hold them
        metric_names.update(
            dict.fromkeys(
                k for k in r if k not in ID_COLUMNS and k not in _TAIL and k not in config and not k.startswith("env_")
            )
        )
    env = sorted({k for r in rows for k in r if k.startswith("env_")})
    columns = ID_COLUMNS + config + list(metric_names) + _TAIL + env
    df = pd.DataFrame.from_records(rows, columns=columns)
    for col in config + env:  # one type a column (Parquet's rule): values of several kinds across rows become text
        values = [v for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if len({_env_kind(v) for v in values}) > 1:
            df[col] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in df[col]]
    df["seed"] = df["seed"].astype("int64")
    df["epochs"] = df["epochs"].astype("int64")
    for col in ("epoch", "selected_epoch", "teacher_epoch"):
        df[col] = df[col].astype("Int64")  # nullable: results without the value
    return df


def varying_keys(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """The identity config keys (``identity_values``) that take more than one value among the cells of one task and
    role (a key a cell lacks is no value), sorted."""
    seen: dict[tuple[Any, Any, str], set] = {}
    for row, ident in pairs:
        for k, v in ident.items():
            seen.setdefault((row["task"], row["role"], k), set()).add(v)
    return sorted({k for (_, _, k), values in seen.items() if len(values) > 1})


def _env_kind(v: Any) -> str:
    """text, bool or number: what an env value is (store's spec admits no other values; numpy's as Python's)."""
    if isinstance(v, str):
        return "text"
    return "bool" if isinstance(v, bool) or type(v).__name__ == "bool_" else "number"


CELL_KEY = ["task", "role", "teacher_arch", "student_arch", "method", "alpha", "T", "seed"]


def latest(df, keep_apart: list[str] | tuple[str, ...] = ()):
    """Where one cell (task, role, architectures, method, alpha, T, seed) was run with several configs, its most
    recently finished row (ties: the later row). ``keep_apart``: columns whose values stay separate rows (a
    deliberate sweep: ``keep_apart=["kd.lambda"]``, or ``config_columns(df)`` for every config that varies)."""
    key = CELL_KEY + [c for c in keep_apart if c not in CELL_KEY]
    return df.sort_values("finished_at", kind="stable").drop_duplicates(key, keep="last").sort_index()


_TAIL = [
    "primary_metric",
    "select",
    "epoch",
    "selected_epoch",
    "epochs",
    "selected_on",
    "teacher_cell",
    "teacher_weights",
    "teacher_epoch",
    "wall_s",
    "finished_at",
    "cell_dir",
]


def csv_safe(df):
    """A copy of ``df`` whose column names and text cells a spreadsheet shows as text (``store.csv_cell``: a
    string starting with = + - @, tab or CR gets a leading '); numeric columns are left as they are."""
    import pandas as pd

    out = df.rename(columns=store.csv_cell)
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if not pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            out.iloc[:, i] = col.map(store.csv_cell).astype(col.dtype)
    return out


def export(df, path: Path, fmt: str, follow: bool = True) -> Path:
    """Write ``df`` as CSV, Parquet (pyarrow) or JSON Lines to the output file ``path`` (``store.write_output``:
    ``-`` is stdout, a device or FIFO is written through, a regular file replaced atomically); return the path."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    if fmt == "csv":
        text = store.csv_newlines(csv_safe(df).to_csv(index=False, lineterminator=store.CSV_LINETERMINATOR))
        store.write_output(path, lambda f: f.write(text), mode="w", follow=follow)
    elif fmt == "jsonl":  # Python's float repr (round-trips exactly; pandas' to_json keeps 10 digits); NaN/NA -> null
        rows = df.astype(object).where(df.notna(), None).to_dict("records")
        text = "".join(
            json.dumps({k: v.item() if hasattr(v, "item") else v for k, v in r.items()}, ensure_ascii=False) + "\n"
            for r in rows
        )
        store.write_output(path, lambda f: f.write(text), mode="w", follow=follow)
    else:
        store.write_output(path, lambda f: df.to_parquet(f, index=False, engine="pyarrow"), follow=follow)
    return path
