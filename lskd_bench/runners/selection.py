"""Which evaluated epoch a cell reports: the selected epoch (result.json's ``best``, ``model_selected.pt``).

One rule for every task, ``Selector(metric, mode, split)``: an evaluation improves the selection when its score
on ``split`` is higher (``mode`` "max") or lower ("min") than the selected one's, the first evaluation always.
Image tasks select on their ``val`` split by their primary metric (``val`` is the test set, the paper's
convention); translation on the validation split by BLEU or loss (``select_on``), a score the task computes
besides the test metrics (``Evaluation.selection``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..components import Component


@dataclass
class Selector(Component):
    """``metric``, ``mode`` ("max" or "min") and ``split`` of the selection; ``note`` says how (result.json).
    ``selected``: the selected epoch so far, ``{"epoch", "metrics", "score"}`` or None;
    ``last_score``: the task's own selection score of the last evaluation (None: it reports none)."""

    key = "selection"
    metric: str
    mode: str
    split: str
    note: str = ""
    selected: dict[str, Any] | None = None
    last_score: float | None = None

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Selector:
        """From a task's ``selection(cfg, hp)``."""
        return cls(spec["metric"], spec["mode"], spec["split"], spec.get("note", ""))

    def spec(self) -> dict[str, Any]:
        """How the epoch is chosen: split, metric, mode (and the note), as ``Task.selection`` gives it."""
        return {
            "split": self.split,
            "metric": self.metric,
            "mode": self.mode,
            **({"note": self.note} if self.note else {}),
        }

    def update(self, epoch: int, metrics: dict[str, float], score: float | None) -> bool:
        """One evaluation after ``epoch`` epochs: its ``metrics`` and the task's selection ``score`` (None: the
        metric ``metric`` of ``metrics``). True when it becomes the selected epoch."""
        self.last_score = None if score is None else float(score)
        value = float(metrics[self.metric] if score is None else score)
        prev = None if self.selected is None else self.selected.get("score")
        if prev is None and self.selected is not None and score is None:
            prev = self.selected["metrics"][self.metric]  # selected before the score was stored
        if prev is not None and not (value < prev if self.mode == "min" else value > prev):
            return False
        self.selected = {"epoch": epoch, "metrics": metrics, "score": value}
        return True

    def record(self) -> dict[str, Any]:
        """result.json's ``selection``: the spec, the selected epoch and its score (None before any)."""
        return {**self.spec(), "epoch": (self.selected or {}).get("epoch"), "score": (self.selected or {}).get("score")}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.selected}  # the checkpoint's key since the first version

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.selected = st.get("best")
