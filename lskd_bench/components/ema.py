"""An exponential moving average of a member's weights (``ema.decay`` > 0), one component and one config section.

After every optimizer step of the main schedule the average moves towards the model's parameters,
``avg = decay * avg + (1 - decay) * param`` (buffers, such as BatchNorm's running statistics, are copied); at each
evaluation the averaged weights are evaluated too (``ema_eval`` in the history entry) and the finished cell keeps
them (``model_ema.pt``) and their last metrics (result.json's ``ema``). The model the cell trains is unchanged: its
own weights, metrics and selected epoch are what they are without the average. ``decay: 0`` (the default) leaves it
off and out of the cell's hash.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .. import store
from ..schema import Field, Section
from . import COMPONENTS, CellComponent, StepInfo, Trainee

EMA_WEIGHTS = "model_ema.pt"


@COMPONENTS.register("ema")
class WeightAverage(CellComponent):
    key = "ema"
    section = Section(
        {
            "decay": Field(
                float,
                0.0,
                "exponential moving average of the student's weights: decay per step (0: off; e.g. 0.999)",
                min=0.0,
                max=1.0,
                max_exclusive=True,
            ),
        },
        "moving average of the weights",
    )

    def __init__(self, decay: float, model: torch.nn.Module):
        self.decay = decay
        self.average = copy.deepcopy(model).eval()
        for p in self.average.parameters():
            p.requires_grad_(False)
        self.floating = {n for n, p in self.average.named_parameters() if p.is_floating_point()}
        self.metrics: dict[str, float] | None = None

    @classmethod
    def build(cls, params: dict[str, Any], cell: Trainee) -> WeightAverage | None:
        return cls(params["decay"], cell.model) if params["decay"] > 0 else None

    @torch.no_grad()
    def on_step_end(self, cell: Trainee, step: StepInfo) -> None:
        avg, live = self.average.state_dict(), cell.model.state_dict()
        for name, value in live.items():
            if name in self.floating:
                avg[name].mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                avg[name].copy_(value)

    def on_epoch_end(self, cell: Trainee, entry: dict[str, Any]) -> None:
        if "eval" in entry:
            self.metrics = cell.assess(self.average)
            entry["ema_eval"] = self.metrics

    def on_finish(self, cell: Trainee, result: dict[str, Any]) -> None:
        if self.metrics is None:
            self.metrics = cell.assess(self.average)
        store.save_torch(cell.dir / EMA_WEIGHTS, {k: v.detach().cpu() for k, v in self.average.state_dict().items()})
        result["ema"] = {"decay": self.decay, "metrics": self.metrics, "weights": EMA_WEIGHTS}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.average.state_dict(), "metrics": self.metrics}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state["weights"])
        self.metrics = state["metrics"]
