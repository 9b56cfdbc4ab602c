"""Pick semantically similar / dissimilar classes from a class hierarchy given as child -> parent links.

Similar classes of a target: its siblings (same parent); if it has none, the nearest ancestor's other
descendants. Dissimilar classes: those whose lowest common ancestor with the target is the shallowest
one available (for a tree with one root: a different top-level branch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources


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
