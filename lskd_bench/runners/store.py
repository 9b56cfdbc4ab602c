"""On-disk layout of a run directory; every file is written atomically (temp file + rename).

    DIR/<task>/<cell-name>-<hash>/
        result.json   metrics + config + timings; written last: its presence means "finished"
        model.pt      final weights (teachers are reused by their students from here)
        model_selected.pt  weights of the selected ("best") epoch, when it is not the last one
        test.*        translation: test hypotheses of the selected and last epochs, references, sources
        state.pt      last epoch checkpoint while the cell trains; removed once it finishes
        features.npz  penultimate features/labels and head weights for `lskd-bench analyze`
        lock.json     present while a process trains the cell (see runners/lock.py)
        error.json    why the cell's last attempt failed (removed when it is retried)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import UsageError

RESULT = "result.json"
MODEL = "model.pt"
SELECTED = "model_selected.pt"
STATE = "state.pt"
FEATURES = "features.npz"
ERROR = "error.json"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(fileobj)`` to a temp file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"), mode="w")


def write_lines(path: Path, lines: list[str]) -> None:
    """One text line per item (UTF-8, '\\n' endings), written atomically."""
    atomic_write(path, lambda f: f.write("".join(line + "\n" for line in lines).encode("utf-8")))


def write_csv_md(out: Path, csv_text: str, md_text: str) -> tuple[Path, Path]:
    """Write ``OUT.csv`` and ``OUT.md``; ``out`` may already end in .csv or .md (other dots are kept)."""
    out = Path(out)
    base = out.parent / out.stem if out.suffix in (".csv", ".md") else out
    paths = (base.with_name(base.name + ".csv"), base.with_name(base.name + ".md"))
    for path, text in zip(paths, (csv_text, md_text)):
        atomic_write(path, lambda f, text=text: f.write(text), mode="w")
    return paths


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def read_result(cell_dir: Path) -> dict[str, Any] | None:
    p = cell_dir / RESULT
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def iter_results(root: Path) -> Iterator[dict[str, Any]]:
    """Every finished cell's result under ``root`` (any depth), sorted by path."""
    for p in sorted(Path(root).rglob(RESULT)):
        res = read_result(p.parent)
        if res is not None:
            res.setdefault("cell_dir", str(p.parent))
            yield res


def write_error(cell_dir: Path, cell: Any, exc: BaseException, **where: Any) -> None:
    """Record why a cell failed; best effort (the disk may be what failed)."""
    import traceback
    from datetime import datetime, timezone

    try:
        write_json(Path(cell_dir) / ERROR, {
            "cell": cell.describe(),
            "error": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **where,
        })  # fmt: skip
    except OSError:
        pass


def read_error(cell_dir: Path) -> dict[str, Any] | None:
    p = Path(cell_dir) / ERROR
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def clear_error(cell_dir: Path) -> None:
    (Path(cell_dir) / ERROR).unlink(missing_ok=True)


def check_writable_dir(path: Path) -> None:
    """Raise UsageError unless ``path`` is (or can be created as) a writable directory.

    Creates nothing: it probes the nearest existing ancestor with a temp file it removes at once.
    """
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"output directory {path} is not writable: {probe} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UsageError(f"output directory {path} is not writable: {exc.strerror or exc}") from None
