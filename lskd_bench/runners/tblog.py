"""Optional TensorBoard event files per cell (``logging.tensorboard: true``): CELL_DIR/tensorboard/.

Step axis: optimizer updates. Every ``logging.every_updates`` updates: ``train/loss_step`` and
``train/lr``; at every epoch end: ``epoch/loss`` (the epoch's mean), ``epoch/lr``, ``epoch/epoch``, every
other number the epoch's history entry holds (method terms such as a learned temperature) as
``epoch/<name>``, and the evaluated metrics as ``val/<metric>``. A resumed cell purges the events written
after its checkpoint, so ``tensorboard --logdir RUNS`` shows one clean curve per cell while the grid trains.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

DIRNAME = "tensorboard"


class TensorBoardLog:
    def __init__(self, cell_dir: Path, every: int, start_update: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # optional [tensorboard] extra: only when logging is on

        # every event up to the checkpoint's update was written before it; later ones are discarded
        self.writer = SummaryWriter(str(Path(cell_dir) / DIRNAME), purge_step=start_update + 1 if start_update else None)
        self.every = max(1, int(every))

    def step(self, update: int, loss: Any, lr: float) -> None:
        """``loss``: a float or a 0-d tensor, read (a host sync on CUDA) only on the updates written."""
        if update % self.every == 0:
            self.writer.add_scalar("train/loss_step", float(loss), update)
            self.writer.add_scalar("train/lr", lr, update)

    def epoch(self, update: int, entry: dict[str, Any]) -> None:
        for key, value in entry.items():
            if key in ("updates", "eval") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(f"epoch/{key}", value, update)
        for key, value in (entry.get("eval") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"val/{key}", value, update)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_log(cell_dir: Path, cfg: dict[str, Any], start_update: int, rank: int) -> Optional[TensorBoardLog]:
    """The cell's TensorBoard log when ``logging.tensorboard`` is on (rank 0 only), else None."""
    log_cfg = cfg["logging"]
    if rank != 0 or not log_cfg["tensorboard"]:
        return None
    return TensorBoardLog(cell_dir, log_cfg["every_updates"], start_update)
