"""What a task read from its data files, kept while those files are unchanged.

``run`` checks the data layout before it writes anything (``Task.check_layout``) and then trains from the same
files: a task keeps what the check read in a ``KeyedCache`` instead of reading it twice. The key says what the
value was read from: ``files_key`` of the files (each one's resolved path, size and modification time) plus
the settings the reader used, so a file rewritten, replaced or touched, another folder or other settings give
another key and a fresh read. Nothing is kept anywhere else: a task's caches are the ``KeyedCache`` objects it
names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_EMPTY: Any = object()


def files_key(paths: Iterable[Path]) -> tuple[tuple[str, int | None, int | None], ...]:
    """(resolved path, size, modification time in ns) of each file, in the given order; a file that cannot be
    stat'ed (missing) has (path, None, None), so its appearing later changes the key."""
    key = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            key.append((str(Path(p).resolve()), None, None))
        else:
            key.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return tuple(key)


class KeyedCache(Generic[T]):
    """One value and the key it was made for (one slot: a new key replaces the old value).

    ``get(key, make)``: the kept value if its key equals ``key``, else ``make()``, kept under ``key``;
    ``put(key, value)`` keeps a value; ``take(key)`` hands the kept value out once (None if its key differs) and
    empties the slot, for a value that is used once and should not stay in memory; ``clear()`` empties it."""

    def __init__(self) -> None:
        self._key: Hashable = _EMPTY
        self._value: T | None = None

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        if self._key is not _EMPTY and self._key == key:
            return self._value  # type: ignore[return-value]
        self.clear()  # a failed make() leaves nothing behind
        value = make()
        self.put(key, value)
        return value

    def put(self, key: Hashable, value: T) -> None:
        self._key, self._value = key, value

    def take(self, key: Hashable) -> T | None:
        kept, value = self._key, self._value
        self.clear()
        return value if kept is not _EMPTY and kept == key else None

    def clear(self) -> None:
        self._key, self._value = _EMPTY, None

    @property
    def key(self) -> Hashable | None:
        """The key of the kept value (None: nothing kept)."""
        return None if self._key is _EMPTY else self._key
