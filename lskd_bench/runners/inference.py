"""Use a finished translation cell: find it, rebuild its model from result.json, translate text, score files.

A finished translation cell holds everything needed (``result.json`` with the whole resolved config under
``run_config``, the weights ``model.pt`` / ``model_selected.pt`` and the SentencePiece model ``spm.model``),
so neither the training data nor the run's cache is read.
"""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import store
from ..config import resolve_layers
from ..errors import UsageError
from ..tasks import get_task
from ..tasks.nmt import Split
from ..tasks.nmt.scoring import translation_scores
from .features import export_features
from .train import resolve_device, threads_scope

WEIGHTS = ("selected", "last")


def find_cell(run: str | None = None, runs: str | None = None, name: str | None = None) -> Path:
    """The directory of a finished cell: ``run`` (DIR/TASK/CELL) or the cell called ``name`` (with or
    without its -HASH) under the run directory ``runs``."""
    if run:
        d = Path(run)
        if not d.is_dir():
            raise UsageError(f"--run {d}: no such cell directory")
        if not (d / store.RESULT).is_file():
            raise UsageError(f"--run {d}: not a finished cell (no {store.RESULT}; see 'lskd-bench status')")
        return d
    if not runs or not name:
        raise UsageError("give --run DIR/TASK/CELL, or --runs DIR and --cell NAME")
    root = Path(runs)
    if not root.is_dir():
        raise UsageError(f"runs directory {root} does not exist")
    found = sorted({p.parent for pat in (f"*/{name}", f"*/{name}-*") for p in root.glob(f"{pat}/{store.RESULT}")})
    if not found:
        names = sorted({p.parent.name.rsplit("-", 1)[0] for p in root.glob(f"*/*/{store.RESULT}")})
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6) or [n for n in names if n.startswith(name)][:1]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(
            f"no finished cell named {name!r} under {root}{hint} ('lskd-bench status --runs {root}' lists them)"
        )
    if len(found) > 1:
        raise UsageError(
            f"{len(found)} finished cells match {name!r} under {root}: "
            + ", ".join(p.name for p in found)
            + " (give NAME-HASH)"
        )
    return found[0]


@dataclass
class LoadedCell:
    dir: Path
    result: dict[str, Any]
    task: Any
    cfg: dict[str, Any]
    data: Any
    model: nn.Module
    weights: str  # "selected" or "last"
    epoch: int | None


def cell_config(task, result: dict[str, Any]) -> dict[str, Any]:
    """The resolved config of a finished cell: ``run_config``, or (results written before it was stored)
    the task's recipe with the data, role and generation settings the result recorded."""
    if result.get("run_config"):
        return result["run_config"]
    role = "teacher" if result["cell"]["role"] == "teacher" else "student"
    known = {"data": result["config"].get("data", {}), role: result["config"]["train"]}
    gen = result.get("metric_info", {}).get("generation")
    if gen:
        known["generation"] = gen
    return resolve_layers(task, [("recipe", task.default_config()), ("result.json", known)]).cfg


def load_cell(cell_dir: Path, weights: str = "selected", device: torch.device | None = None) -> LoadedCell:
    result = store.read_result(cell_dir)
    if result is None:
        raise UsageError(f"{cell_dir / store.RESULT} cannot be read as JSON (a damaged cell: train it again)")
    task = get_task(result["cell"]["task"])
    if task.kind != "translation":
        raise UsageError(
            f"{cell_dir.name} is a cell of task {task.name} ({task.kind}): translate takes a translation cell"
        )
    role = "teacher" if result["cell"]["role"] == "teacher" else "student"
    cfg = _resolved_cell_config(cell_dir, task, result, role)
    data = _rebuilt(
        lambda: task.inference_data(cell_dir, result),
        lambda why: f"{cell_dir}: cannot rebuild the cell's vocabulary from its files ({why})",
    )
    model = _rebuilt(
        lambda: task.build_model(result["cell"]["arch"], data, cfg, cfg[role]),
        lambda why: f"{cell_dir / store.RESULT}: its config does not build a model ({why})",
    )
    name, weights, epoch = _weights_file(cell_dir, result, weights)
    _load_weights(model, cell_dir / name)
    device = device or torch.device("cpu")
    return LoadedCell(cell_dir, result, task, cfg, data, model.to(device).eval(), weights, epoch)


def _load_weights(model: nn.Module, path: Path) -> None:
    """``model``'s weights from ``path`` (a tensors-only file: never unpickled); damage is one UsageError."""
    problem = store.torch_file_problem(path)
    try:
        if problem:
            raise ValueError(problem)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{path}: unusable weights ({why}); train the cell again") from None


def cell_features(cell_dir: Path, result: dict[str, Any], data_cache: dict[str, Any] | None = None) -> Path:
    """``features.npz`` of a finished classification cell: the file if it is there, else computed from the cell's
    final weights (``model.pt``: the last epoch, which an export at the end of training reads too) on the data it
    trained on (``run_config``), written into the cell and returned. ``data_cache`` keeps loaded data sets between
    calls (cells of one task and data config share them)."""
    path = cell_dir / store.FEATURES
    if path.is_file():
        return path
    task = get_task(result["cell"]["task"])
    role = "teacher" if result["cell"]["role"] == "teacher" else "student"
    cfg = _resolved_cell_config(cell_dir, task, result, role)
    key = json.dumps([task.name, cfg["data"]], sort_keys=True, default=str)
    cache = {} if data_cache is None else data_cache
    if key not in cache:
        cache[key] = _rebuilt(
            lambda: task.load_data(cfg),
            lambda why: (
                f"{cell_dir}: cannot load the data it trained on to compute its features ({why}); "
                f"restore the data, or run with --set analysis.export=true"
            ),
        )
    data = cache[key]
    model = _rebuilt(
        lambda: task.build_model(result["cell"]["arch"], data, cfg, cfg[role]),
        lambda why: f"{cell_dir / store.RESULT}: its config does not build a model ({why})",
    )
    _load_weights(model, cell_dir / store.MODEL)
    device = resolve_device(cfg)
    with threads_scope(cfg):
        export_features(model.to(device), data, cfg, device, path)
    return path


def _resolved_cell_config(cell_dir: Path, task, result: dict[str, Any], role: str) -> dict[str, Any]:
    try:
        cfg = cell_config(task, result)
        needed = (role, "data", "analysis", *(("generation",) if task.kind == "translation" else ()))
        lacks = [k for k in needed if not isinstance(cfg.get(k), dict)]
        if lacks:
            raise ValueError(f"no {', '.join(lacks)} section")
    except UsageError as exc:
        raise UsageError(
            f"{cell_dir / store.RESULT}: its config does not resolve ({exc}); train the cell again"
        ) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(
            f"{cell_dir / store.RESULT}: damaged run_config ({type(exc).__name__}: {exc}); train the cell again"
        ) from None
    return cfg


def _rebuilt(build, message) -> Any:
    """``build()``; any failure but bad input is a UsageError ``message(why) + "; train the cell again"``."""
    try:
        return build()
    except UsageError:
        raise
    except Exception as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise UsageError(f"{message(why)}; train the cell again") from None


def _weights_file(cell_dir: Path, result: dict[str, Any], weights: str) -> tuple[str, str, int | None]:
    """(file name, "selected" | "last", epoch) of the weights asked for."""
    name = (result.get("weights") or {}).get(weights, store.MODEL)
    epoch = (result.get("selection") or {}).get("epoch") if weights == "selected" else result.get("epochs")
    if weights == "selected" and "weights" not in result:
        name, weights, epoch = store.MODEL, "last", result.get("epochs")  # a result from before model selection
    if not store.safe_name(name):
        raise UsageError(f"{cell_dir / store.RESULT}: weights file {name!r} is not a file name in the cell")
    return name, weights, epoch


def read_text_lines(path: str | None) -> list[str]:
    """Lines of a UTF-8 file (or stdin for None / "-"), split on '\\n' only (a U+2028 inside a sentence
    is not a line break), a trailing newline not making an extra line."""
    if path in (None, "-"):
        raw, where = sys.stdin.buffer.read(), "stdin"
    else:
        try:
            raw, where = Path(path).read_bytes(), str(path)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = raw.removeprefix(b"\xef\xbb\xbf").split(b"\n")  # a UTF-8 byte-order mark is not text
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise UsageError(f"{where}:{i}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    return out


def translate_lines(
    cell: LoadedCell, lines: list[str], device: torch.device, progress: bool = False
) -> tuple[list[str], int]:
    """Detokenised translations of ``lines`` in input order (an empty line stays empty), batched as the
    task's beam search batches; and how many sources were cut to the model's longest input."""
    sw = cell.data.extras["subwords"]
    keep = [i for i, line in enumerate(lines) if line.strip()]
    hp = cell.cfg["teacher" if cell.result["cell"]["role"] == "teacher" else "student"]
    longest = int(hp["max_positions"])
    ids, cut = [], 0
    for a in sw.encode([lines[i].strip() for i in keep]):
        if len(a) > longest:
            a, cut = np.append(a[: longest - 1], a[-1]), cut + 1  # keep the eos
        ids.append(a)
    split = Split(ids, [a.copy() for a in ids], [lines[i] for i in keep], [""] * len(keep))
    out = [""] * len(lines)
    if keep:
        hyps = cell.task.translate(cell.model, cell.data, split, cell.cfg, device, progress=progress)
        for i, h in zip(keep, hyps):
            out[i] = sw.decode(h)
    return out, cut


def score_files(ref: str, hyp: str, lang: str) -> tuple[dict[str, float], dict[str, str], int]:
    """sacreBLEU's BLEU, chrF2 and tokenised lower-cased BLEU of a hypothesis file against a reference file,
    exactly as the runner scores the test split."""
    refs, hyps = read_text_lines(ref), read_text_lines(hyp)
    if not refs:
        raise UsageError(f"{ref} is empty: nothing to score")
    if len(refs) != len(hyps):
        raise UsageError(f"{hyp} has {len(hyps)} lines but {ref} has {len(refs)}: one hypothesis per reference line")
    metrics, sig = translation_scores(hyps, refs, lang)
    return metrics, sig, len(refs)
