"""``wandb``: one Weights & Biases run per cell. W&B's own settings apply: ``WANDB_MODE=offline`` works with
no account (run files under ``WANDB_DIR``/wandb/, uploaded later with ``wandb sync``), ``WANDB_PROJECT`` (else
``logging.project``), ``WANDB_ENTITY``. Config: the resolved config and the cell; tags: task, role, method,
alpha, T, seed; group: the task; metrics against ``update`` (optimizer updates); the selected and last
epochs' metrics in the run summary. A resumed cell reopens its run (id in CELL/loggers.json).
"""

from __future__ import annotations

import os
from typing import Any

from . import LOGGERS, CellRun, Logger, epoch_scalars, final_scalars


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    requires = ("wandb", "wandb")

    def __init__(self, run: CellRun):
        super().__init__(run)
        import wandb  # optional [wandb] extra: only when this logger is on

        tags = run.tags()
        prior = run.recall("wandb")
        kw: dict[str, Any] = {
            "project": os.environ.get("WANDB_PROJECT") or run.cfg.get("logging", {}).get("project"),
            "name": run.name,
            "group": tags.get("task"),
            "job_type": tags.get("role"),
            "tags": [
                f"{k}={tags[k]}" if k not in ("task", "role") else tags[k]
                for k in ("task", "role", "method", "alpha", "T", "seed")
                if tags.get(k)
            ],
            "reinit": "create_new",  # several cells (a fused group) log at once
            "settings": wandb.Settings(console="off", silent=True),
        }
        if prior and prior.get("id"):
            kw.update(id=prior["id"], resume="allow")
        else:
            kw["config"] = {**run.cfg, "cell": tags}
        self.wb = wandb.init(**kw)
        self.wb.define_metric("update")
        self.wb.define_metric("*", step_metric="update")
        run.remember("wandb", {"id": self.wb.id})
        self.finished = False

    def step(self, update: int, loss: float, lr: float) -> None:
        self.wb.log({"update": update, "train/loss_step": loss, "train/lr": lr})

    def epoch(self, update: int, entry: dict[str, Any]) -> None:
        self.wb.log({"update": update, **epoch_scalars(entry, self.run.selection)})

    def finish(self, result: dict[str, Any]) -> None:
        self.wb.summary.update(final_scalars(result))
        self.wb.finish()
        self.finished = True

    def close(self) -> None:
        if not self.finished:
            self.wb.finish(exit_code=1)  # failed or interrupted: a resume reopens it
