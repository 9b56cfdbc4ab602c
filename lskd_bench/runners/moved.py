"""Finished cells of the same data found at another path (the data moved, or is mounted elsewhere).

A cell's hash covers ``data.root`` (an absolute path): kept so, the hashes of every existing result stay as they
are. What follows the data's content instead is its *fingerprint*: the relative path and size of every regular
file under the data root, and the content of each when the data is small (at most ``CONTENT_BYTES`` in all:
CIFAR-100, IWSLT, CUB); ImageNet-sized data is identified by its listing. Each finished cell records the
fingerprint of the data it was trained on in ``CELL/data.json`` (written by ``run`` once the cell is finished,
also for cells finished before this file existed, when their data is still at their path).

When a planned cell has no result under its own hash, ``find_moved`` looks at the finished cells of the same name
in the task folder: one whose config is the planned cell's with only ``data.root`` different (re-planned with its
root, its hash is its folder's) and whose recorded fingerprint (or, lacking ``data.json``, its root's present
fingerprint) equals the planned data's is reused: ``CELL-<new hash>`` becomes a link to its folder, said in one
line. Students follow their teachers: their hashes re-plan through the teacher's. Results made before keep
being found at their own path by their hash, and at another path once their data.json exists or their old path
still holds the same data.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from .. import store
from .cells import Cell, plan_cells

DATA_JSON = "data.json"
CONTENT_BYTES = 2 << 30  # data up to 2 GiB is fingerprinted by content, larger data by its listing
_CACHE: dict[str, tuple[tuple, str]] = {}  # root -> (listing key, fingerprint): computed once per process


def _listing(root: Path, unreadable: list[str]) -> list[tuple[str, int, str]]:
    """(relative path, size, absolute path) of every regular file under ``root`` (links followed, each real
    directory once), sorted; a directory that cannot be listed is added to ``unreadable`` (path: why)."""
    out, seen = [], set()

    def failed(exc: OSError) -> None:
        unreadable.append(f"{exc.filename}: {exc.strerror or exc}")

    for dirpath, dirs, names in os.walk(root, followlinks=True, onerror=failed):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                st = os.stat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((os.path.relpath(p, root), st.st_size, p))
    return sorted(out)


def data_fingerprint(cfg: dict[str, Any], problems: list[str] | None = None) -> str | None:
    """The fingerprint of the data under ``cfg["data"]["root"]``; None without a root (built-in data), or when a
    file or folder under it cannot be read (permission denied, an I/O error): then a line in ``problems`` names
    it. The data's cells are then found at their own path only; nothing else depends on it."""
    root = (cfg.get("data") or {}).get("root")
    if not root or not Path(root).is_dir():
        return None
    unreadable: list[str] = []
    files = _listing(Path(root), unreadable)
    if unreadable:
        return _not_fingerprinted(root, unreadable[0], problems)
    key = tuple((rel, size) for rel, size, _ in files)
    cached = _CACHE.get(str(root))
    if cached and cached[0] == key:
        return cached[1]
    h = hashlib.sha256()
    by_content = sum(size for _, size, _ in files) <= CONTENT_BYTES
    for rel, size, path in files:
        h.update(f"{rel}\0{size}\n".encode("utf-8", "surrogateescape"))
        if by_content:
            try:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError as exc:
                return _not_fingerprinted(root, f"{path}: {exc.strerror or exc}", problems)
    fp = ("content:" if by_content else "listing:") + h.hexdigest()[:24]
    _CACHE[str(root)] = (key, fp)
    return fp


def _not_fingerprinted(root: str, why: str, problems: list[str] | None) -> None:
    if problems is not None:
        line = f"not fingerprinted: the data at {root} (cannot read {why}): its cells are reused at this path only"
        if line not in problems:
            problems.append(line)
    return None


def recorded_fingerprint(d: Path) -> str | None:
    rec = store.read_small_json(Path(d) / DATA_JSON)
    return str(rec["fingerprint"]) if isinstance(rec, dict) and rec.get("fingerprint") else None


def record_fingerprints(cells: list[Cell], cfg: dict[str, Any], out: Path) -> list[str]:
    """``data.json`` in each finished cell of ``cells`` that lacks one (the data at ``cfg``'s root is the cell's:
    its hash covers that root); a line for data that could not be fingerprinted (none is recorded then)."""
    todo = [
        c.dir(out)
        for c in cells
        if not os.path.islink(c.dir(out))
        and store.read_result(c.dir(out)) is not None
        and recorded_fingerprint(c.dir(out)) is None
    ]
    problems: list[str] = []
    fp = data_fingerprint(cfg, problems) if todo else None
    for d in todo if fp else []:
        try:
            store.write_json(d / DATA_JSON, {"fingerprint": fp, "root": cfg["data"]["root"]})
        except OSError:
            pass  # a read-only run directory: the cell is still found at its own path
    return problems


def _root_of(result: dict[str, Any]) -> str | None:
    cfg = result.get("run_config") or result.get("config") or {}
    data = cfg.get("data") if isinstance(cfg, dict) else None
    return data.get("root") if isinstance(data, dict) else None


def find_moved(cells: list[Cell], cfg: dict[str, Any], out: Path) -> list[str]:
    """Link each planned cell without a result to a finished cell of the same data found at another path
    (module docstring); one line per cell linked."""
    if not (cfg.get("data") or {}).get("root"):
        return []
    lines: list[str] = []
    problems: list[str] = []
    fp: str | None = None
    for c in cells:  # teachers first: a student's re-planned hash goes through its teacher's
        d = c.dir(out)
        if os.path.lexists(d):
            continue
        for cand in sorted(d.parent.glob(f"{c.name}-*")):
            if os.path.islink(cand) or not cand.is_dir() or cand.name.rsplit("-", 1)[0] != c.name:
                continue
            res = store.read_result(cand)
            root = _root_of(res) if res else None
            if not root or root == cfg["data"]["root"]:
                continue
            other = {**cfg, "data": {**cfg["data"], "root": root}}
            twin = next((x for x in plan_cells(other) if x.name == c.name), None)
            if twin is None or twin.dir(out) != cand:  # differs in more than where the data lies
                continue
            theirs = recorded_fingerprint(cand) or data_fingerprint(other, problems)
            fp = fp or data_fingerprint(cfg, problems)
            if theirs is None or theirs != fp:
                continue
            try:
                os.symlink(cand.name, d, target_is_directory=True)
            except FileExistsError:
                break
            lines.append(
                f"found: {c.name}: the same data (fingerprint {fp}) finished at {root}: {cand.name} reused as {d.name}"
            )
            break
    return lines + problems
