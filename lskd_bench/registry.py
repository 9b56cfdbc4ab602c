"""One registry pattern for tasks, KD methods and executors.

Built-in entries register with the ``@REGISTRY.register("name")`` decorator when their module is
imported; a registry lists its built-in modules (``builtin``) and imports them the first time it is looked
up, so the package that defines a registry never imports its plugins at module level. Third-party packages add
entries through Python entry points: a package declares, e.g.::

    [project.entry-points."lskd_bench.methods"]
    my_kd = "my_pkg.kd:MyKD"

and ``lskd-bench`` loads it the first time the registry is looked up.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from typing import Generic, TypeVar

from .errors import UsageError

T = TypeVar("T")


@functools.lru_cache(maxsize=2)
def _entry_points(path: tuple[str, ...]) -> metadata.EntryPoints:
    """Every installed entry point, read once for the registries (a scan of every installed distribution, ~15 ms):
    again only when ``sys.path`` changes."""
    return metadata.entry_points()


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str, builtin: Sequence[str] = ()):
        self.kind = kind
        self.group = entry_point_group
        self.builtin = tuple(builtin)  # modules whose import registers the built-in entries
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for module in self.builtin:
            importlib.import_module(module)
        for ep in _entry_points(tuple(sys.path)).select(group=self.group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()

    def get(self, name: str) -> T:
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UsageError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._items[name]

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items


# The executor registry lives here, below the config layer, so that the config schema can collect each
# executor's own section (``config_section``) as it does each method's; the executors themselves
# (runners/executors.py, runners/slurm.py) register when it is first looked up.
EXECUTORS: Registry[type] = Registry(
    "executor", "lskd_bench.executors", builtin=("lskd_bench.runners.executors", "lskd_bench.runners.slurm")
)
