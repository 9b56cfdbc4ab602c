"""Optional TensorBoard event files per cell (``logging.tensorboard: true``): CELL_DIR/tensorboard/.

Step axis: optimizer updates. Every ``logging.every_updates`` updates: ``train/loss_step`` and
``train/lr``; at every epoch end: ``epoch/loss`` (the epoch's mean), ``epoch/lr``, ``epoch/epoch``, every
other number the epoch's history entry holds (method terms such as a learned temperature) as
``epoch/<name>``, and the evaluated metrics tagged by the split they are computed on: ``val/<metric>`` for a
task that selects its epoch on ``val`` (the image tasks: their validation split is the paper's test set),
``test/<metric>`` for one that selects on a split of its own (translation: the test split's BLEU), whose
selection score is logged as ``select/<metric>`` (e.g. ``select/valid_bleu``). A resumed cell purges the events written
after its checkpoint, so ``tensorboard --logdir RUNS`` shows one clean curve per cell while the grid trains.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

DIRNAME = "tensorboard"


class TensorBoardLog:
    def __init__(self, cell_dir: Path, every: int, start_update: int = 0, selection: Optional[dict[str, Any]] = None):
        from torch.utils.tensorboard import SummaryWriter  # optional [tensorboard] extra: only when logging is on

        # every event up to the checkpoint's update was written before it; later ones are discarded
        self.writer = SummaryWriter(str(Path(cell_dir) / DIRNAME), purge_step=start_update + 1 if start_update else None)
        self.every = max(1, int(every))
        selection = selection or {}
        # the metrics are on data.val: the test set itself unless the task selects on a split of its own
        self.eval_prefix = "val" if selection.get("split", "val") == "val" else "test"
        self.select_tag = f"select/{selection.get('metric', 'score')}"

    def step(self, update: int, loss: Any, lr: float) -> None:
        """``loss``: a float or a 0-d tensor, read (a host sync on CUDA) only on the updates written."""
        if update % self.every == 0:
            self.writer.add_scalar("train/loss_step", float(loss), update)
            self.writer.add_scalar("train/lr", lr, update)

    def epoch(self, update: int, entry: dict[str, Any]) -> None:
        for key, value in entry.items():
            if key in ("updates", "eval", "selection") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(f"epoch/{key}", value, update)
        for key, value in (entry.get("eval") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{self.eval_prefix}/{key}", value, update)
        if isinstance(entry.get("selection"), (int, float)):
            self.writer.add_scalar(self.select_tag, entry["selection"], update)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_log(cell_dir: Path, cfg: dict[str, Any], start_update: int, rank: int,
             selection: Optional[dict[str, Any]] = None) -> Optional[TensorBoardLog]:
    """The cell's TensorBoard log when ``logging.tensorboard`` is on (rank 0 only), else None. ``selection``:
    the task's ``selection()`` (which split the best epoch is chosen on)."""
    log_cfg = cfg["logging"]
    if rank != 0 or not log_cfg["tensorboard"]:
        return None
    return TensorBoardLog(cell_dir, log_cfg["every_updates"], start_update, selection)
