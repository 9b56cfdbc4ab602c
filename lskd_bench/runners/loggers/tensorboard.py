"""``tensorboard``: TensorBoard event files per cell, CELL/tensorboard/ (``tensorboard --logdir RUNS``).

Step axis: optimizer updates. A resumed cell purges the events written after its checkpoint, so each cell
shows one clean curve while the grid trains.
"""

from __future__ import annotations

from typing import Any

from . import LOGGERS, CellRun, Logger, epoch_scalars, final_scalars

DIRNAME = "tensorboard"


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    requires = ("tensorboard", "tensorboard")

    def __init__(self, run: CellRun):
        super().__init__(run)
        from torch.utils.tensorboard import SummaryWriter  # optional [tensorboard] extra: only when logging is on

        # every event up to the checkpoint's update was written before it; later ones are discarded
        start = run.start_update
        self.writer = SummaryWriter(str(run.dir / DIRNAME), purge_step=start + 1 if start else None)

    def step(self, update: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss_step", loss, update)
        self.writer.add_scalar("train/lr", lr, update)

    def epoch(self, update: int, entry: dict[str, Any]) -> None:
        for tag, value in epoch_scalars(entry, self.run.selection).items():
            self.writer.add_scalar(tag, value, update)
        self.writer.flush()

    def finish(self, result: dict[str, Any]) -> None:
        for tag, value in final_scalars(result).items():
            self.writer.add_scalar(tag, value, int(result.get("updates") or 0))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
