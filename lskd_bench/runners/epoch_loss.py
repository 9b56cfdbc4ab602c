"""A member's running loss within an epoch, kept on the device (no host sync per step), and its deferred check
for a non-finite loss (on CUDA the check waits for a sync point: a checkpoint, the epoch's end)."""

from __future__ import annotations

from typing import Any

import torch

from ..components import Component


class CellFailed(Exception):
    """One member of a group failed (non-finite loss, out of memory...): the others carry on."""


class NonFiniteWatch:
    """The first update whose loss was not finite. On the CPU ``see`` raises ``CellFailed`` at once; on CUDA it
    records (update, loss) on the device with fill kernels and no copies, and ``check`` raises it later."""

    def __init__(self) -> None:
        self._bad: torch.Tensor | None = None  # CUDA: (first non-finite update or -1, its loss)

    def see(self, loss: torch.Tensor, epoch: int, update: int) -> None:
        """``loss`` of ``update`` (0-based) in ``epoch`` (0-based)."""
        if loss.device.type != "cuda":
            if not torch.isfinite(loss):
                raise CellFailed(f"non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, update {update + 1}")
            return
        if self._bad is None:
            self._bad = torch.full((2,), -1.0, dtype=torch.float64, device=loss.device)
        first = (self._bad[0] < 0) & ~torch.isfinite(loss.detach())
        now = torch.stack(
            [torch.full((), float(update), dtype=torch.float64, device=loss.device), loss.detach().double()]
        )
        self._bad = torch.where(first, now, self._bad)

    def check(self, epoch: int) -> None:
        """Raise ``CellFailed`` if a loss seen since the start went non-finite (a host sync on CUDA)."""
        if self._bad is not None:
            bad, value = int(self._bad[0]), float(self._bad[1])
            if bad >= 0:
                raise CellFailed(f"non-finite loss ({value}) at update {bad + 1} (epoch {epoch + 1})")


def hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The number of rows of ``logits`` (N, K) whose integer target (N,) has the highest logit: a 0-d tensor on
    their device (no host sync)."""
    return logits.detach().argmax(dim=-1).eq(targets).sum()


class LossSums(Component):
    """The epoch's loss sum, sample count and named-term sums (a method returning a dict of terms), and the number
    of training samples (rows: tokens for translation) whose target had the highest logit (training top-1). Steps
    add on the device in float64, so the sum equals the Python-float sum of earlier versions bit for bit; ``sync``
    brings it to the host (checkpoints and the epoch's end). ``watch``: the steps' deferred non-finite check."""

    key = "losses"

    def __init__(self) -> None:
        self.watch = NonFiniteWatch()
        self.loss_sum, self.loss_count = 0.0, 0
        self.term_sums: dict[str, float] = {}
        self.correct, self.counted = 0.0, 0  # rows predicted right this epoch, of the rows counted
        self._loss_acc: torch.Tensor | None = None  # the epoch's loss sum, on the device
        self._term_acc: dict[str, torch.Tensor] | None = None  # the named terms' sums, on the device
        self._correct_acc: torch.Tensor | None = None  # the rows predicted right, on the device

    def add(self, loss: torch.Tensor, terms: Any, n: int, correct: torch.Tensor | None = None) -> None:
        """A step's mean ``loss`` (and its named ``terms``, when a dict) over ``n`` samples; ``correct``: how many of
        the ``n`` rows had their target's logit highest (a 0-d tensor: ``hits(logits, targets)``), added on the
        device."""
        if self._loss_acc is None:  # torch.full: a fill kernel, not a host-to-device copy (which would sync)
            self._loss_acc = torch.full((), self.loss_sum, dtype=torch.float64, device=loss.device)
        self._loss_acc += loss.detach().double() * n
        if correct is not None:
            if self._correct_acc is None:
                self._correct_acc = torch.full((), self.correct, dtype=torch.float64, device=loss.device)
            self._correct_acc += correct.detach().double()
            self.counted += n
        if isinstance(terms, dict):
            if self._term_acc is None:
                self._term_acc = {
                    k: torch.full((), v, dtype=torch.float64, device=loss.device) for k, v in self.term_sums.items()
                }
            for k, v in terms.items():
                if k not in self._term_acc:
                    self._term_acc[k] = torch.zeros((), dtype=torch.float64, device=loss.device)
                self._term_acc[k] += v.detach().double() * n
        self.loss_count += n

    def sync(self, epoch: int | None = None) -> None:
        """Bring the sums to the host; with ``epoch`` (0-based) first raise ``CellFailed`` if a step since the start
        had a non-finite loss."""
        if epoch is not None:
            self.watch.check(epoch)
        if self._loss_acc is not None:
            self.loss_sum = float(self._loss_acc)
        if self._term_acc is not None:
            self.term_sums = {k: float(v) for k, v in self._term_acc.items()}
        if self._correct_acc is not None:
            self.correct = float(self._correct_acc)

    def top1(self) -> float | None:
        """Training top-1 of the epoch so far, in percent (after ``sync``); None when no step counted it."""
        return 100.0 * self.correct / self.counted if self.counted else None

    def reset(self) -> None:
        """A new epoch."""
        self.loss_sum, self.loss_count, self.term_sums, self.correct, self.counted = 0.0, 0, {}, 0.0, 0
        self._loss_acc, self._term_acc, self._correct_acc = None, None, None

    def state_dict(self) -> dict[str, Any]:
        st = {"loss_sum": self.loss_sum, "loss_count": self.loss_count, "term_sums": self.term_sums}
        return {**st, "train_correct": self.correct, "train_counted": self.counted} if self.counted else st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.loss_sum, self.loss_count = st.get("loss_sum", 0.0), st.get("loss_count", 0)
        self.term_sums = st.get("term_sums", {})
        # absent in checkpoints written before it was counted: the epoch's top-1 counts the rows from the resume on
        self.correct, self.counted = float(st.get("train_correct", 0.0)), int(st.get("train_counted", 0))
