"""Pick semantically similar / dissimilar classes from a class hierarchy given as child -> parent links.

Similar classes of a target: its siblings (same parent); if it has none, the nearest ancestor's other
descendants. Dissimilar classes: those whose lowest common ancestor with the target is the shallowest
one available (for a tree with one root: a different top-level branch).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from .errors import UsageError


def ancestors(node: str, parents: Mapping[str, str]) -> list[str]:
    """[parent, grandparent, ..., root] of ``node``."""
    out, seen = [], {node}
    while node in parents:
        node = parents[node]
        if node in seen:
            raise ValueError(f"cycle in class hierarchy at {node!r}")
        seen.add(node)
        out.append(node)
    return out


def lca_depth(a: str, b: str, parents: Mapping[str, str]) -> int:
    """Depth (root = 0) of the lowest common ancestor of ``a`` and ``b``; -1 if they share none."""
    pa = [a, *ancestors(a, parents)]
    set_b = {b, *ancestors(b, parents)}
    for node in pa:
        if node in set_b:
            return len(ancestors(node, parents))
    return -1


def similar_and_dissimilar(
    target: str, classes: Sequence[str], parents: Mapping[str, str], limit: int | None = None
) -> tuple[list[str], list[str]]:
    """(similar, dissimilar) class names for ``target`` among ``classes``, in ``classes`` order."""
    others = [c for c in classes if c != target]
    if target not in classes:
        raise ValueError(f"unknown class {target!r}")
    depth = {c: lca_depth(target, c, parents) for c in others}
    if not depth:
        return [], []
    deepest, shallowest = max(depth.values()), min(depth.values())
    similar = [c for c in others if depth[c] == deepest]
    dissimilar = [c for c in others if depth[c] == shallowest and deepest != shallowest]
    if limit is not None:
        similar, dissimilar = similar[:limit], dissimilar[:limit]
    return similar, dissimilar


def groups_to_parents(groups: Mapping[str, Sequence[str]], root: str = "<root>") -> dict[str, str]:
    """Two-level hierarchy from ``{group: [class, ...]}``."""
    parents = {}
    for group, members in groups.items():
        parents[group] = root
        for m in members:
            parents[m] = group
    return parents


def load_wordnet_parents() -> dict[str, str]:
    """WordNet 3.0 hypernym links of the ImageNet-1K classes and their ancestors (wnid -> parent wnid),
    from ``lskd_bench/data/imagenet_wordnet.tsv`` (see tools/build_imagenet_hierarchy.py)."""
    parents = {}
    text = resources.files("lskd_bench").joinpath("data", "imagenet_wordnet.tsv").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            wnid, parent, _ = line.split("\t", 2)
            if parent:
                parents[wnid] = parent
    return parents


HIERARCHY_FORMAT = (
    "one 'child parent' pair a line (whitespace-separated, or tab-separated when a name has spaces; '#' comments), "
    'or a .json file of {"child": "parent"} or {"group": ["class", ...]}'
)


def read_hierarchy_file(path: str | Path) -> dict[str, str]:
    """Child -> parent links from a user's hierarchy file (``HIERARCHY_FORMAT``); any problem is one UsageError
    naming the file (and the line)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block: refused unopened
            raise UsageError(f"class hierarchy {path} is not a regular file")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"class hierarchy {path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read class hierarchy {path}: {exc.strerror or exc}") from None
    parents: dict[str, str] = {}

    def link(child: str, parent: str, where: str) -> None:
        if not child or not parent or child == parent:
            raise UsageError(f"{where}: expected two different non-empty names, got {child!r} -> {parent!r}")
        if parents.get(child, parent) != parent:
            raise UsageError(f"{where}: {child!r} has two parents ({parents[child]!r} and {parent!r})")
        parents[child] = parent

    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise UsageError(f"class hierarchy {path}: expected a JSON object; {HIERARCHY_FORMAT}")
        for key, value in data.items():
            if isinstance(value, str):
                link(key, value, str(path))
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                for member in value:
                    link(member, key, str(path))
            else:
                raise UsageError(f"class hierarchy {path}: {key!r} maps to {value!r}; {HIERARCHY_FORMAT}")
    else:
        for i, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
            if len(parts) != 2:
                raise UsageError(f"{path}:{i}: expected 'child parent', got {line!r}; {HIERARCHY_FORMAT}")
            link(*parts, f"{path}:{i}")
    if not parents:
        raise UsageError(f"class hierarchy {path} is empty; {HIERARCHY_FORMAT}")
    for node in parents:
        try:
            ancestors(node, parents)
        except ValueError as exc:
            raise UsageError(f"class hierarchy {path}: {exc}") from None
    return parents
