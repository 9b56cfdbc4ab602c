"""What became of each cell of a fused group: its result or its error (``error.json``), with the repairs made while
starting it."""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import store
from ..errors import DataError, Interrupted
from .cells import Cell
from .epoch_loss import CellFailed
from .member import Member


@dataclass
class Outcome:
    cell: Cell
    result: dict[str, Any] | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # repairs made while starting the cell


class Outcomes:
    """The group's cells' outcomes by hash; ``fail`` records a member's error and takes it out of the pass, writing
    its ``error.json`` (rank 0)."""

    def __init__(self, cells: Sequence[Cell], rank: int):
        self.by_hash = {c.hash: Outcome(c) for c in cells}
        self.cells, self.rank = cells, rank
        self.members: list[Member] = []

    def joined(self, m: Member) -> None:
        self.members.append(m)
        self.by_hash[m.cell.hash].notes = m.notes

    def ordered(self) -> list[Outcome]:
        return [self.by_hash[c.hash] for c in self.cells]

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around the pass: a failure of the shared work fails every unfinished member (a ``DataError`` is re-raised
        after: bad input stops the grid); a stop by signal is written for each of them and re-raised."""
        try:
            yield
        except DataError as exc:
            self.fail_unfinished(exc)
            raise
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM through errors.raise_on_sigterm
            self.interrupted(getattr(exc, "signal_name", "SIGINT"))
            raise
        except SystemExit:
            raise
        except Exception as exc:
            self.fail_unfinished(exc)
            if os.environ.get("LSKD_DEBUG"):
                traceback.print_exc()

    @contextlib.contextmanager
    def attempt(self, m: Member) -> Iterator[None]:
        """Around a member's own work (a step, an epoch's end): its failure (non-finite loss, out of memory, a file
        not written) fails the member alone; the others carry on."""
        try:
            yield
        except (CellFailed, torch.OutOfMemoryError, OSError) as exc:
            self.fail(m, exc)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def fail(self, m: Member, exc: BaseException) -> None:
        self.by_hash[m.cell.hash].error = f"{type(exc).__name__}: {exc}"
        m.finished = True
        if self.rank == 0:
            store.write_error(m.dir, m.cell, exc, epoch=m.pos.epoch, update=m.pos.update)

    def unfinished(self) -> list[Member]:
        return [m for m in self.members if not m.finished]

    def finish_all(self) -> None:
        for m in self.unfinished():
            try:
                self.by_hash[m.cell.hash].result = m.finish()
            except OSError as exc:  # weights or result could not be written: no result.json
                self.fail(m, exc)

    def fail_unfinished(self, exc: BaseException) -> None:
        for m in self.unfinished():
            self.fail(m, exc)

    def interrupted(self, sig: str) -> None:
        """Stopped by ``sig``: each unfinished member's ``error.json`` says where, to resume from (rank 0)."""
        if self.rank != 0:
            return
        for m in self.unfinished():
            where = f"stopped by {sig} at epoch {m.pos.epoch + 1}, step {m.pos.step}"
            message = f"{where}: run again to resume from the last checkpoint"
            store.write_error(m.dir, m.cell, Interrupted(sig), epoch=m.pos.epoch, update=m.pos.update, message=message)
