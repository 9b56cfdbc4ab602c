"""Progress output of a grid and of its training units (``logging.format``).

``bar``: tqdm bars on the terminal (stderr), as always. ``plain``: for batch systems (Slurm logs, ``nohup``,
``| tee``): no carriage returns, one line per event: a cell settled (grid); within an epoch at most every
``logging.interval_s`` seconds; at an epoch's end when ``interval_s`` passed since the unit's previous line,
and always at its last epoch (so epochs longer than the interval each get a line, short ones do not flood the
log), e.g.
``2026-01-05 10:00:00 teacher_cnn_wide_a0_s0: epoch 3/30 step 120/400, 11.52 steps/s, loss a0=0.512``; an
epoch's line ends with the unit's ETA at the pace of its epochs so far (``, ETA 10:42:10 (40 min left)``).
``json``: the same events as one JSON object a line. ``auto``: ``bar`` when stdout and stderr are both
terminals, else ``plain``. Lines go to stderr, where the bars go.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from tqdm.auto import tqdm


def _tty() -> bool:
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def output_format(cfg: dict[str, Any]) -> str:
    """``bar``, ``plain`` or ``json`` (``auto`` resolved against the terminal)."""
    fmt = cfg.get("logging", {}).get("format", "auto")
    return ("bar" if _tty() else "plain") if fmt == "auto" else fmt


def line_interval(cfg: dict[str, Any]) -> float | None:
    """Seconds between progress lines within an epoch; None for bars (they keep their own rate)."""
    return None if output_format(cfg) == "bar" else float(cfg["logging"]["interval_s"])


def _emit(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: progress is not worth failing for
        pass


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    try:
        return float(v)  # numbers, 0-d tensors
    except (TypeError, ValueError):
        return str(v)


class Bar:
    """tqdm's bar, plus ``note`` (the postfix text; ``fields`` are for the line formats)."""

    def __init__(self, **kw: Any):
        self.bar = tqdm(**kw)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def note(self, text: str, line: str | None = None, throttle: bool = False, **fields: Any) -> None:
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        self.bar.close()


class Lines:
    """The same interface as ``Bar``, writing a line (``plain``) or a JSON object (``json``) at each ``note``."""

    def __init__(self, fmt: str, desc: str, total: int, unit: str, initial: int = 0, interval: float = 0.0):
        self.fmt, self.desc, self.total, self.unit, self.n, self.initial = fmt, desc, total, unit, initial, initial
        self.interval = interval
        self.t0 = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n

    def note(self, text: str, line: str | None = None, throttle: bool = False, **fields: Any) -> None:
        """``line``: the plain line's text (default ``n/total units, text``); ``throttle``: only when ``interval``
        seconds passed since this bar's previous line."""
        mono = time.monotonic()
        if throttle and mono - self.last < self.interval:
            return
        self.last = mono
        now = datetime.now(timezone.utc).astimezone()
        eta = self.eta(mono) if fields.get("event") == "epoch" else None
        if self.fmt == "json":
            record = {
                "time": now.isoformat(timespec="seconds"),
                "source": self.desc,
                "n": self.n,
                "total": self.total,
                "unit": self.unit,
                "elapsed_s": round(mono - self.t0, 3),
                **_jsonable(fields),
            }
            if "event" not in record:
                record["event"] = "progress"
            if eta is not None:
                record["eta_s"] = round(eta, 1)
            _emit(json.dumps(record))
        else:
            body = line if line is not None else f"{self.n}/{self.total} {self.unit}s, {text}"
            if eta is not None:
                body += f", ETA {now + timedelta(seconds=eta):%H:%M:%S} ({duration(eta)} left)"
            _emit(f"{now:%Y-%m-%d %H:%M:%S} {self.desc}: {body}")

    def eta(self, mono: float) -> float | None:
        """Seconds until the last of ``total``, at the mean pace since this bar began (None: none done since, or
        every one done)."""
        done = self.n - self.initial
        if done <= 0 or self.n >= self.total:
            return None
        return (mono - self.t0) / done * (self.total - self.n)

    def close(self) -> None:
        pass


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


class Off:
    def update(self, n: int = 1) -> None:
        pass

    def note(self, text: str, line: str | None = None, throttle: bool = False, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(
    cfg: dict[str, Any], *, total: int, desc: str, unit: str, show: bool = True, initial: int = 0, leave: bool = True
):
    """A ``Bar``, ``Lines`` or ``Off`` (``show`` false) for ``total`` steps of ``unit``."""
    if not show:
        return Off()
    fmt = output_format(cfg)
    if fmt == "bar":
        return Bar(total=total, initial=initial, desc=desc, unit=unit, leave=leave)
    return Lines(fmt, desc, total, unit, initial, float(cfg["logging"]["interval_s"]))


def say(cfg: dict[str, Any], text: str) -> None:
    """A message for the user while the grid runs (stderr; above any bar; a JSON object with ``json``)."""
    fmt = output_format(cfg)
    if fmt == "bar":
        tqdm.write(text, file=sys.stderr)
    elif fmt == "json":
        _emit(
            json.dumps(
                {
                    "time": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
                    "event": "message",
                    "text": text,
                }
            )
        )
    else:
        _emit(text)


# ------------------------------------------------------------------------------------------ the JSON stream
def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def event(kind: str, **fields: Any) -> None:
    """One JSON object on stderr: ``{"time", "event": kind, ...fields}`` (``json`` format: start, summary...)."""
    _emit(json.dumps({"time": _now(), "event": kind, **_jsonable(fields)}))


_PREFIXES = (("lskd-bench: warning: ", "warning"), ("lskd-bench: error: ", "error"))


class JsonLines:
    """A text stream in place of ``sys.stdout``/``sys.stderr`` while a run writes JSON lines: a line that is a
    JSON object passes as it is; any other (a warning, a summary, a tracker library's own INFO line) becomes
    ``{"time", "event": "message" (or "warning", "error"), "stream", "text"}``; blank lines are dropped. After
    ``close_lines`` it passes everything through (a library may keep a handle on it)."""

    def __init__(self, stream: Any, name: str):
        self.stream, self.name, self.buf, self.on = stream, name, "", True

    def write(self, s: str) -> int:
        if not self.on:
            return self.stream.write(s)
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(line)
        return len(s)

    def _line(self, line: str) -> None:
        text = line.rstrip("\r")
        if not text.strip():
            return
        if text.startswith("{"):
            try:
                if isinstance(json.loads(text), dict):
                    self.stream.write(text + "\n")
                    return
            except ValueError:
                pass
        kind = next((k for prefix, k in _PREFIXES if text.startswith(prefix)), "message")
        text = next((text[len(p) :] for p, k in _PREFIXES if k == kind), text)
        self.stream.write(json.dumps({"time": _now(), "event": kind, "stream": self.name, "text": text}) + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def close_lines(self) -> None:
        if self.buf:
            self._line(self.buf)
            self.buf = ""
        self.on = False
        try:
            self.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, errors...: the stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def json_stream() -> Iterator[None]:
    """While active, every line on stdout and stderr is a JSON object (``JsonLines``)."""
    saved = sys.stdout, sys.stderr
    wrapped = JsonLines(saved[0], "stdout"), JsonLines(saved[1], "stderr")
    sys.stdout, sys.stderr = wrapped
    try:
        yield
    finally:
        for w in wrapped:
            w.close_lines()
        sys.stdout, sys.stderr = saved
