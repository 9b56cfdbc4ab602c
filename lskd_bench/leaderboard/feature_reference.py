"""The published CIFAR-100 numbers of the feature-distillation methods as data
(``lskd_bench/data/feature_reference.yaml``: RepDistiller's README tables, OFD's authors' table), for
``compare`` to print beside ours.

``load()`` returns ``{"pairs": {"teacher-student": {"teacher": row, "student": row, "methods": {name: row}}},
"unmapped": [row, ...]}`` where a row is ``{"top1": float, "source": "file:line", ...}``; ``rows()`` lists
every (pair, what, top1, source) of ``pairs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

FILE = "feature_reference.yaml"


def _check(row: Any, where: str) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("source"), str) or not row["source"].strip():
        raise ValueError(f"{FILE}: {where} has no source")
    top1 = row.get("top1")
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 < top1 <= 100:
        raise ValueError(f"{FILE}: {where} has no top-1 in (0, 100] (got {top1!r})")


@lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    """The reference data, checked: every row has a source and a top-1 number."""
    data = yaml.safe_load(resources.files("lskd_bench").joinpath("data", FILE).read_text())
    for pair, entry in data["pairs"].items():
        if pair.count("-") != 1 or not all(pair.split("-")):
            raise ValueError(f"{FILE}: pair {pair!r} is not 'teacher-student'")
        _check(entry.get("teacher"), f"{pair} teacher")
        _check(entry.get("student"), f"{pair} student")
        for method, row in entry["methods"].items():
            _check(row, f"{pair} {method}")
    for i, row in enumerate(data.get("unmapped", [])):
        _check(row, f"unmapped[{i}]")
    return data


def rows() -> Iterator[tuple[str, str, float, str]]:
    """(pair, "teacher" | "student" | method, top1, source) for every number of ``pairs``."""
    for pair, entry in load()["pairs"].items():
        for what in ("teacher", "student"):
            yield pair, what, float(entry[what]["top1"]), entry[what]["source"]
        for method, row in entry["methods"].items():
            yield pair, method, float(row["top1"]), row["source"]
