"""A cell's checkpoint files in its directory: ``state.pt`` (the last) and ``state.prev.pt`` (the one before,
resumed from when ``state.pt`` is damaged or missing). What a checkpoint holds is the member's
``state_dict()``; this module only reads, writes and removes the files, and repairs what does not load."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from .. import store
from ..components import Component


class StateFiles(Component):
    """``state.pt`` and ``state.prev.pt`` of one cell directory; ``notes`` collects the repairs made on reading
    (one line each, shown to the user)."""

    key = "checkpoint"

    def __init__(self, cell_dir: Path, name: str, notes: list[str]):
        self.path, self.prev = cell_dir / store.STATE, cell_dir / store.STATE_PREV
        self.name, self.notes = name, notes

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, else the one before it; one that does not load is moved aside (said once) and,
        with neither, None: the cell starts from scratch."""
        damaged = None
        for path in (self.path, self.prev):
            if not path.is_file():
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)  # plain data only (SECURITY.md)
            except Exception as exc:
                aside = store.move_aside(path)
                why = str(exc).splitlines()[0] if str(exc) else ""
                damaged = f"{damaged}; " if damaged else ""
                damaged += f"{path.name} is corrupt ({type(exc).__name__}: {why}): moved to {aside.name}"
                continue
            if path == self.prev:
                why = damaged or f"{store.STATE} is missing (the run stopped while checkpointing)"
                self.notes.append(
                    f"repaired: {self.name}: {why}; resumed from the previous checkpoint "
                    f"{store.STATE_PREV} (epoch {_where(state)['epoch'] + 1}, step {_where(state).get('step', 0)})"
                )
            return state
        if damaged:
            self.notes.append(f"repaired: {self.name}: {damaged}; the cell restarts from scratch")
        return None

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` as ``state.pt``, the previous one kept as ``state.prev.pt``."""
        store.keep_previous(self.path, self.prev)  # a damaged state.pt resumes from it
        store.save_torch(self.path, state)

    def remove(self) -> None:
        """The cell finished: its checkpoints go."""
        for path in (self.path, self.prev):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


FORMAT = 2  # state.pt's layout: {"format", "position", "model", "optimizer", "parts": {component key: state}}


def pack(position: dict[str, int], model: dict, optimizer: dict, parts: dict[str, Any]) -> dict[str, Any]:
    """A member's checkpoint: its position, model and optimizer states and each component's state by its key."""
    return {"format": FORMAT, "position": dict(position), "model": model, "optimizer": optimizer, "parts": parts}


# the flat checkpoint of lskd-bench before components (up to b9ee720 and after): which keys each component kept
_FLAT_PARTS = {
    "rng": ("rng", "cuda_rng"),
    "losses": ("loss_sum", "loss_count", "term_sums", "train_correct", "train_counted"),
    "selection": ("best",),
    "evaluation": ("eval_seconds",),
    "record": ("history", "train_seconds", "skipped", "resumes", "epoch_times"),
}


def _where(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's position (epoch, step) in either layout."""
    return state["position"] if "position" in state else state


def unpack(state: dict[str, Any]) -> tuple[dict[str, int], dict, dict, dict[str, Any]]:
    """(position, model, optimizer, parts) of a checkpoint, in this layout or the flat one written before
    components existed: one dict of the member's and its collaborators' keys, the method's parameters under
    ``method`` and an initialisation stage's optimizer and start of the main schedule under ``init``."""
    if "parts" in state:
        return state["position"], state["model"], state["optimizer"], state["parts"]
    init = state.get("init") or {}
    position = {
        "epoch": state["epoch"],
        "step": state.get("step", 0),
        "update": state.get("update", 0),
        "main_from": init.get("updates", 0),
    }
    parts = {key: {k: state[k] for k in keys if k in state} for key, keys in _FLAT_PARTS.items()}
    parts["method"] = state.get("method")
    if init:
        parts["init"] = {"optimizer": init["optimizer"]}
    return position, state["model"], state["optimizer"], parts
