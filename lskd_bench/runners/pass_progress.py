"""A fused group's progress: a bar (or plain / JSON lines) over its epochs, a line within an epoch at most every
few seconds (``StepMeter``), a line per finished epoch with each member's losses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .progress import line_interval, progress_bar


class GroupProgress:
    """The progress of one pass: ``start`` opens the bar (``show``: rank 0 with progress on), ``step`` notes a line
    within an epoch when the meter says one is due, ``epoch_done`` notes an epoch's losses."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.bar: Any = None  # progress.progress_bar
        self.show = False
        interval = line_interval(cfg)  # plain/json lines: logging.interval_s; bars: StepMeter's own rate
        self.meter = StepMeter() if interval is None else StepMeter(interval)

    def start(self, total: int, initial: int, desc: str, show: bool) -> None:
        self.show = show
        self.bar = progress_bar(self.cfg, total=total, initial=initial, desc=desc, unit="ep", leave=False, show=show)

    def step(self, epoch: int, epochs: int, done: int, losses: dict[str, float]) -> None:
        """``done`` batches of (0-based) ``epoch`` done; ``losses``: each member's last step loss."""
        if not self.show or self.bar is None:
            return
        line = self.meter.update(done, losses)
        if line is not None:
            self.bar.note(
                f"epoch {epoch + 1}: {line}",
                line=f"epoch {epoch + 1}/{epochs} {line}",
                event="step",
                epoch=epoch + 1,
                epochs=epochs,
                **self.meter.fields,
            )

    def epoch_done(self, epoch: int, epochs: int, done: dict[str, dict[str, Any]]) -> None:
        """(0-based) ``epoch`` finished; ``done``: each member's history entry, by its short name."""
        self.bar.update(1)
        text = " ".join(f"{k}={_losses(h)}" for k, h in done.items())
        line = f"epoch {epoch + 1}/{epochs} done, loss {text}"
        self.bar.note(
            text, line=line, throttle=epoch + 1 < epochs, event="epoch", epoch=epoch + 1, epochs=epochs, members=done
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _losses(entry: dict[str, Any]) -> str:
    """``0.512`` or, for a method with named terms, ``0.512(ce 0.201 kd 0.311)``."""
    terms = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in entry.items() if k.startswith("loss_"))
    return f"{entry['loss']:.3f}" + (f"({terms})" if terms else "")


class StepMeter:
    """Progress within an epoch, at most once every ``interval`` seconds: ``step i/n, R steps/s, loss L``
    (long epochs would otherwise look hung). ``clock`` is injectable for tests."""

    def __init__(self, interval: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock = interval, clock
        self.total, self.t0, self.first, self.last = 0, 0.0, 0, float("-inf")
        self.fields: dict[str, Any] = {}  # the last line's numbers (JSON progress)

    def start(self, first: int, total: int) -> None:
        self.first, self.total, self.t0 = first, total, self.clock()
        self.last = self.t0

    def update(self, step: int, losses: dict[str, float]) -> str | None:
        """``step``: batches done so far in the epoch. A line when ``interval`` passed since the last one."""
        now = self.clock()
        if now - self.last < self.interval:
            return None
        self.last = now
        rate = (step - self.first) / max(now - self.t0, 1e-9)
        loss = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
        self.fields = {
            "step": step,
            "steps": self.total,
            "steps_per_s": rate,
            "loss": {k: float(v) for k, v in losses.items()},
        }
        return f"step {step}/{self.total}, {rate:.2f} steps/s, loss {loss}"
