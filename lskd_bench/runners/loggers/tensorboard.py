"""``tensorboard``: TensorBoard event files per cell, CELL/tensorboard/ (``tensorboard --logdir RUNS``).

Step axis: optimizer updates. A resumed cell purges the events written after its checkpoint, so each cell
shows one clean curve while the grid trains. A finished cell writes an hparams summary (the HParams dashboard:
one session per cell): its grid values (``CellRun.grid``: alpha, T, seed, method, arch, pair...) against the
selected epoch's metrics (``selected/<metric>``).
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
        from torch.utils.tensorboard.summary import hparams

        final = final_scalars(result)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, int(result.get("updates") or 0))
        selected = {k: v for k, v in final.items() if k.startswith("selected/")}
        hp = {k: v for k, v in self.run.grid().items() if isinstance(v, (int, float, str, bool))}
        if hp:  # in this run's own event file (add_hparams would open a sub-run): the dashboard lists the cell
            for summary in hparams(hp, selected):
                self.writer._get_file_writer().add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
