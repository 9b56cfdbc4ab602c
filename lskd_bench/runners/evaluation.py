"""A member's evaluations: the task's assessment of the model (in the member's random stream), the selected
epoch updated through its ``Selector`` (its weights kept as ``model_selected.pt``), the task's output files
(``{which}`` in a name: ``last`` every time, ``selected`` when the evaluation is selected) and the time spent."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import store
from ..components import Component
from ..tasks import Task, TaskData
from .rng import RngState
from .selection import Selector


def save_weights(path: Path, model: nn.Module) -> None:
    """The model's parameters and buffers, on the CPU."""
    store.save_torch(path, {k: v.detach().cpu() for k, v in model.state_dict().items()})


def write_outputs(cell_dir: Path, outputs: dict[str, list[str]], selected: bool) -> None:
    """The task's files of one evaluation; a name with ``{which}`` is written as ``last`` and, when the
    evaluation is the selected one, as ``selected`` too."""
    for name, lines in outputs.items():
        for which in (("last", "selected") if selected else ("last",)) if "{which}" in name else ("",):
            store.write_lines(cell_dir / name.format(which=which), lines)


class Evaluator(Component):
    """Evaluates one member's model after an epoch; ``seconds``: the time spent evaluating (checkpointed)."""

    key = "evaluation"

    def __init__(
        self,
        task: Task,
        data: TaskData,
        cfg: dict[str, Any],
        hp: dict[str, Any],
        cell_dir: Path,
        device: torch.device,
        selector: Selector,
    ):
        self.task, self.data, self.cfg, self.hp, self.dir, self.device = task, data, cfg, hp, cell_dir, device
        self.selector = selector
        self.seconds = 0.0
        self.last_loss: float | None = None  # the last evaluation's loss, when the task computes one

    def __call__(
        self, model: nn.Module, epoch: int, rng: RngState, deployed: nn.Module | None = None
    ) -> dict[str, float]:
        """Evaluate ``model`` after ``epoch`` epochs, in the random stream ``rng``; its metrics. ``deployed``: the
        model the cell is evaluated as when it is not ``model`` itself (``Component.deployed``): it is assessed,
        and a selected epoch keeps its weights (``deployed_selected.pt``) besides the student's."""
        t0 = time.perf_counter()
        served = model if deployed is None else deployed
        with rng.scope():
            ev = self.task.assess(served, self.data, self.cfg, self.device, self.hp)
        self.last_loss = float(ev.loss) if getattr(ev, "loss", None) is not None else None
        selected = self.selector.update(epoch, ev.metrics, ev.selection)
        if selected:
            save_weights(self.dir / store.SELECTED, model)
            if served is not model:
                save_weights(self.dir / store.DEPLOYED_SELECTED, served)
        write_outputs(self.dir, ev.outputs, selected)
        self.seconds += time.perf_counter() - t0
        return ev.metrics

    def state_dict(self) -> dict[str, Any]:
        return {"eval_seconds": self.seconds}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.seconds = st.get("eval_seconds", 0.0)
