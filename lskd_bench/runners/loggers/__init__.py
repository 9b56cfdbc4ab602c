"""Experiment trackers ("loggers") as a registry: one tracker run per cell (``logging.loggers``).

Built-in: ``tensorboard`` (event files in CELL/tensorboard/), ``wandb`` (Weights & Biases; offline with
``WANDB_MODE=offline``, files under ``WANDB_DIR``) and ``mlflow`` (to ``MLFLOW_TRACKING_URI``). Third-party
packages register a ``Logger`` subclass through the ``lskd_bench.loggers`` entry-point group::

    [project.entry-points."lskd_bench.loggers"]
    my_tracker = "my_pkg.track:MyLogger"

A logger gets every call through ``CellLoggers``, which runs them on one background thread per process, in
order: the training loop only puts events on a queue (a float read every ``logging.every_updates`` updates,
as before), so a slow tracker (a server far away or gone) never slows training, and a logger that raises
(no disk, no server) is switched off for that cell with one warning per logger and process: training never
fails because of a tracker. A full queue drops events (one warning).

Each tracker run holds the cell's grid values, typed (``CellRun.grid``: ``alpha`` and ``T`` floats, ``seed`` an
int, ``method``, ``arch``, ``pair``, ``teacher_cell``...) and the config sections the cell uses (``CellRun.config``:
its own role's recipe and method section, not the other methods') as parameters, the cell (hash, task, role,
method, alpha, T, seed) as tags, ``train/loss_step`` and ``train/lr`` every ``logging.every_updates`` updates,
every number of an epoch's history entry as ``epoch/<key>``, the epoch's training loss and top-1 as
``train/loss`` and ``train/top1``, the evaluated metrics as ``val/<metric>`` and the evaluation's loss as
``val/loss`` (``test/<metric>`` for translation, its selection score as ``select/<metric>``), and at the end the
selected epoch's metrics (``selected/<metric>``, ``selected/epoch``) and the last epoch's (``last/<metric>``), and with
``logging.artifacts: true`` the final weights as artifacts (``CellRun.weight_files``: MLflow, W&B). A logger
that names a run keeps its id in CELL/loggers.json, so a resumed cell continues the same run.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import queue
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ... import store
from ...errors import UsageError
from ...registry import Registry
from ...schema import flatten

LOGGERS: Registry[type] = Registry(
    "logger",
    "lskd_bench.loggers",
    builtin=(
        "lskd_bench.runners.loggers.tensorboard",
        "lskd_bench.runners.loggers.wandb_run",
        "lskd_bench.runners.loggers.mlflow_run",
    ),
)
STATE = "loggers.json"  # CELL/loggers.json: each logger's run id, for a resumed cell
STATE_MAX_BYTES = 1 << 20
QUEUE_MAX = 100_000  # events waiting for the logger thread before new ones are dropped
CONNECT_TIMEOUT_S = 5.0  # check_server: one TCP connection to a tracker's server, before its run is opened


@dataclass
class CellRun:
    """What a logger knows of the cell it logs: its folder, the cell, the resolved config, the update the
    training (re)starts from (0: a new cell), the task's selection (which split the selected epoch is chosen on)."""

    dir: Path
    cell: Any = None  # runners.cells.Cell
    cfg: dict[str, Any] = field(default_factory=dict)
    start_update: int = 0
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cell.name if self.cell is not None else Path(self.dir).name

    def tags(self) -> dict[str, str]:
        """The cell's identity and grid values, as strings."""
        if self.cell is None:
            return {}
        d = self.cell.describe()
        keys = ("task", "role", "method", "arch", "alpha", "T", "seed", "teacher")
        return {"cell": d["name"], "cell_hash": d["hash"], **{k: "" if d[k] is None else str(d[k]) for k in keys}}

    def grid(self) -> dict[str, Any]:
        """The cell's grid values, typed: ``alpha`` and ``T`` floats (absent: a baseline's alpha, a method without
        a temperature's T), ``seed`` an int, ``task``, ``role``, ``method``, ``arch``, ``teacher_arch``, ``pair``
        (teacher_arch-arch, students), ``teacher_cell`` (a student's teacher), ``cell_name``, ``cell_hash``."""
        if self.cell is None:
            return {}
        d = self.cell.describe()
        out: dict[str, Any] = {"task": d["task"], "role": d["role"], "method": d["method"], "arch": d["arch"]}
        if d["teacher_arch"]:
            out["teacher_arch"] = d["teacher_arch"]
        if d["role"] != "teacher" and d["teacher_arch"]:
            out["pair"] = f"{d['teacher_arch']}-{d['arch']}"
        if d["alpha"] is not None and d["role"] != "baseline":
            out["alpha"] = float(d["alpha"])
        if d["T"] is not None:
            out["T"] = float(d["T"])
        out["seed"] = int(d["seed"])
        if d["teacher"]:
            out["teacher_cell"] = d["teacher"]
        return {**out, "cell_name": d["name"], "cell_hash": d["hash"]}

    def config(self) -> dict[str, Any]:
        """The sections of the resolved config the cell uses: every setting but the other role's recipe (a teacher
        gets ``teacher``, a student ``student``), the methods' sections but its own method's (a kd student gets
        ``kd``, not ``crd``; ``X+kd``: X's and ``compose``) and ``slurm`` unless the executor is slurm."""
        if self.cell is None:
            return dict(self.cfg)
        from ...methods import method_sections  # the registry: imported when a cell is logged

        own = self.cell.method.partition("+")[0]
        drop = {s for s in method_sections() if s != own and not (s == "compose" and "+" in self.cell.method)}
        drop.add("student" if self.cell.role == "teacher" else "teacher")
        if self.cfg.get("executor") != "slurm":
            drop.add("slurm")
        return {k: v for k, v in self.cfg.items() if k not in drop}

    def params(self) -> dict[str, str]:
        """The grid values (``grid``) and the used config sections (``config``, flattened: ``student.lr``) as
        strings, the form tracker params take: a float in its canonical form (``3.0``, what ``str(float)``
        writes, so MLflow's ``params.T = '3.0'`` finds the T = 3 cells), lists and mappings as JSON."""
        return {k: _param(v) for k, v in {**flatten(self.config()), **self.grid()}.items()}

    def weight_files(self, result: dict[str, Any]) -> list[Path]:
        """With ``logging.artifacts: true``, the finished cell's weights files (result.json's ``weights``: last and
        selected) that exist in its folder; else none."""
        if not (self.cfg.get("logging") or {}).get("artifacts"):
            return []
        names = (result.get("weights") or {}).values()
        files = [Path(self.dir) / n for n in dict.fromkeys(names) if store.safe_name(n)]
        return [f for f in files if f.is_file()]

    def recall(self, logger: str) -> dict[str, str] | None:
        """What ``logger`` remembered of this cell's run (its id: string values only), or None. CELL/loggers.json
        is untrusted like the rest of a run directory: anything but a small JSON object is nothing remembered."""
        value = _read_state(Path(self.dir) / STATE).get(logger)
        if not isinstance(value, dict):
            return None
        return {str(k): v for k, v in value.items() if isinstance(v, str)} or None

    def remember(self, logger: str, value: dict[str, Any]) -> None:
        """Best effort: a cell whose loggers.json cannot be written (a folder in its place, a full disk) still
        logs; only a resume would open a new tracker run."""
        path = Path(self.dir) / STATE
        state = _read_state(path)
        state[logger] = value
        try:
            store.write_json(path, state)
        except OSError:
            pass


def _read_state(path: Path) -> dict[str, Any]:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > STATE_MAX_BYTES:  # a FIFO would block the logger thread
            return {}
        with open(path, "rb") as f:
            state = json.loads(f.read(STATE_MAX_BYTES).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return state if isinstance(state, dict) else {}


class Logger:
    """One tracker run for one cell. A subclass opens (or, for a resumed cell, reopens) its run in
    ``__init__``; every method may raise: the caller warns once and stops calling it. ``requires``: the
    module it imports and the pip extra that installs it (checked before a grid starts)."""

    requires: tuple[str, str] | None = None

    def __init__(self, run: CellRun):
        self.run = run

    def step(self, update: int, loss: float, lr: float) -> None:
        """Every ``logging.every_updates`` updates: the step's loss and learning rate."""

    def epoch(self, update: int, entry: dict[str, Any]) -> None:
        """At the end of an epoch: its history entry (``epoch_scalars``)."""

    def finish(self, result: dict[str, Any]) -> None:
        """The cell finished: its result.json (``final_scalars``)."""

    def close(self) -> None:
        """The training process leaves the cell (finished, failed or interrupted)."""


def _param(v: Any) -> str:
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return repr(float(v)) if isinstance(v, float) else str(v)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def epoch_scalars(entry: dict[str, Any], selection: dict[str, Any] | None = None) -> dict[str, float]:
    """The numbers of one history entry, named as every logger writes them: ``epoch/<key>``, ``train/loss`` and
    ``train/top1`` (the epoch's mean training loss and training top-1), the metrics and the evaluation's loss by
    the split they are computed on (``val/<metric>``, ``val/loss``, or ``test/<metric>`` for a task that selects
    on a split of its own, whose score is ``select/<metric>``)."""
    selection = selection or {}
    prefix = "val" if selection.get("split", "val") == "val" else "test"
    own = ("updates", "eval", "selection", "train_top1", "eval_loss")
    out = {f"epoch/{k}": float(v) for k, v in entry.items() if k not in own and _number(v)}
    if _number(entry.get("loss")):
        out["train/loss"] = float(entry["loss"])
    if _number(entry.get("train_top1")):
        out["train/top1"] = float(entry["train_top1"])
    out.update({f"{prefix}/{k}": float(v) for k, v in (entry.get("eval") or {}).items() if _number(v)})
    if _number(entry.get("eval_loss")) and "loss" not in (entry.get("eval") or {}):
        out[f"{prefix}/loss"] = float(entry["eval_loss"])
    if _number(entry.get("selection")):
        out[f"select/{selection.get('metric', 'score')}"] = float(entry["selection"])
    return out


def final_scalars(result: dict[str, Any]) -> dict[str, float]:
    """The selected epoch's metrics and the last epoch's, from a result.json."""
    best = store.selected_epoch(result) or {}
    chosen = best.get("metrics") or result.get("metrics") or {}
    out = {f"selected/{k}": float(v) for k, v in chosen.items() if _number(v)}
    if _number(best.get("epoch")):
        out["selected/epoch"] = float(best["epoch"])
    out.update({f"last/{k}": float(v) for k, v in (result.get("metrics") or {}).items() if _number(v)})
    return out


def check_server(url: str, what: str) -> None:
    """ConnectionError unless the server of the ``http(s)`` URL ``url`` takes a TCP connection within
    ``CONNECT_TIMEOUT_S`` (``what`` names it in the message: "the MLflow tracking server"); other URLs: nothing to
    check here."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConnectionError(f"{what} {url} does not answer ({why})") from None


# ------------------------------------------------------------------------------------------ names
def logger_names(cfg: dict[str, Any]) -> list[str]:
    """The loggers a config turns on: ``logging.loggers``, plus ``tensorboard`` for ``logging.tensorboard: true``."""
    names = list(cfg["logging"]["loggers"])
    if cfg["logging"]["tensorboard"] and "tensorboard" not in names:
        names.append("tensorboard")
    return list(dict.fromkeys(names))


def check_loggers(cfg: dict[str, Any]) -> None:
    """UsageError for an unknown logger or one whose package is not installed."""
    for name in logger_names(cfg):
        cls = LOGGERS.get(name)
        req = getattr(cls, "requires", None)
        if req and importlib.util.find_spec(req[0]) is None:
            key = (
                "logging.tensorboard"
                if name == "tensorboard" and name not in cfg["logging"]["loggers"]
                else f"logger {name}"
            )
            raise UsageError(f"{key} needs the {req[0]} package: pip install 'lskd-bench[{req[1]}]'")


# ------------------------------------------------------------------------------------------ the thread
_warned: set[str] = set()
_warn_lock = threading.Lock()


def warn_once(key: str, line: str) -> None:
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    try:
        print(f"lskd-bench: warning: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed
        pass


class _Worker:
    """One logger's thread in this process: runs its queued calls one at a time, in order (a logger that hangs
    holds up only its own calls)."""

    def __init__(self, name: str) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_MAX)
        self.thread = threading.Thread(target=self._loop, name=f"lskd-loggers-{name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            fn = self.queue.get()
            try:
                fn()
            except BaseException:
                pass

    def submit(self, fn: Callable[[], None]) -> bool:
        try:
            self.queue.put_nowait(fn)
            return True
        except queue.Full:
            return False


_workers: dict[str, _Worker] = {}
_worker_lock = threading.Lock()
# Loggers switched off for the rest of this process, and why: one whose tracker could not be reached when it opened
# a run (ConnectionError, TimeoutError) or did not answer within logging.close_timeout_s. Warned once; the next
# cells do not try again, so a tracker that is gone costs the grid seconds, not a wait per cell. (A logger that
# fails for one cell's sake, a file where its folder belongs, is warned of once and tried again in the next cell.)
_off: dict[str, str] = {}
OFF_ENV = "LSKD_BENCH_LOGGERS_OFF"  # set by the grid's process for its workers: loggers off for the whole grid


def _get_worker(name: str = "") -> _Worker:
    with _worker_lock:
        w = _workers.get(name)
        if w is None or not w.thread.is_alive():
            w = _workers[name] = _Worker(name)
        return w


def new_run() -> None:
    """A grid starts in this process: every logger may be tried again, and warned of again."""
    with _warn_lock:
        _off.clear()
        _warned.clear()
    os.environ.pop(OFF_ENV, None)


def preflight(cfg: dict[str, Any]) -> None:
    """Before any unit trains: each logger's ``preflight(cfg)`` (a server that does not answer raises), once for
    the grid. One that fails is switched off here and, through ``OFF_ENV``, in the worker processes the executors
    start, so a tracker that is gone is warned of once per grid, not once per process."""
    for name in logger_names(cfg):
        check = getattr(LOGGERS.get(name), "preflight", None)
        if check is None or name in _off:
            continue
        try:
            check(cfg)
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
            _off[name] = why
            warn_once(f"logger:{name}", f"logger {name} failed ({why}); it logs nothing more in this run "
                      "(training goes on)")  # fmt: skip
    if _off:
        os.environ[OFF_ENV] = ",".join(sorted(_off))


def _inherited_off() -> None:
    """In a worker: the loggers its grid switched off (``OFF_ENV``)."""
    for name in filter(None, os.environ.get(OFF_ENV, "").split(",")):
        _off.setdefault(name, "switched off by the grid")


def switched_off() -> dict[str, str]:
    """The loggers this process no longer opens (name: why)."""
    return dict(_off)


class CellLoggers:
    """The loggers of one cell, called from the training loop; each call is queued for its logger's thread."""

    def __init__(self, names: list[str], run: CellRun, every: int, close_timeout_s: float):
        self.run, self.every, self.close_timeout_s = run, max(1, int(every)), close_timeout_s
        self.live: dict[str, Logger] = {}
        _inherited_off()
        self.names = [n for n in names if n not in _off]
        self.workers = {n: _get_worker(n) for n in self.names}
        for name in self.names:
            cls = LOGGERS.get(name)  # checked before the grid started
            self._submit(name, lambda name=name, cls=cls: self._open(name, cls))

    def _open(self, name: str, cls: type) -> None:
        if name in _off:  # switched off while this call waited
            return
        try:
            self.live[name] = cls(self.run)
        except Exception as exc:
            self._failed(name, exc, opening=True)

    def _failed(self, name: str, exc: BaseException, opening: bool = False) -> None:
        self.live.pop(name, None)
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        if opening and isinstance(exc, (ConnectionError, TimeoutError)):  # the tracker, not this cell: gone for all
            _off[name] = why
        warn_once(
            f"logger:{name}",
            f"logger {name} failed ({self.run.name}: {why}); it logs nothing more "
            f"{'in this run' if name in _off else 'for that cell'} (training goes on)",
        )

    def _call(self, name: str, method: str, *args: Any) -> None:
        logger = self.live.get(name)
        if logger is None:
            return
        try:
            getattr(logger, method)(*args)
        except Exception as exc:
            self._failed(name, exc)
            if method != "close":
                try:
                    logger.close()
                except Exception:
                    pass

    def _each(self, method: str, *args: Any) -> None:
        for name in self.names:
            self._submit(name, lambda name=name: self._call(name, method, *args))

    def _submit(self, name: str, fn: Callable[[], None]) -> None:
        if not self.workers[name].submit(fn):
            warn_once("logger-queue", f"the loggers fall behind: events dropped ({QUEUE_MAX} waiting)")

    def step(self, update: int, loss: Any, lr: float) -> None:
        """``loss``: a float or a 0-d tensor, read (a host sync on CUDA) only on the updates logged."""
        if update % self.every == 0 and self.names:
            self._each("step", update, float(loss), float(lr))

    def epoch(self, update: int, entry: dict[str, Any]) -> None:
        self._each("epoch", update, copy.deepcopy(entry))

    def finish(self, result: dict[str, Any]) -> None:
        self._each("finish", result)

    def close(self) -> None:
        """Close every logger, waiting at most ``logging.close_timeout_s`` in all for the queued events; a logger
        still busy then is switched off for the rest of this process (one warning)."""
        done: dict[str, threading.Event] = {}
        for name in self.names:
            event = threading.Event()

            def close_one(name: str = name, event: threading.Event = event) -> None:
                try:
                    self._call(name, "close")
                finally:
                    self.live.pop(name, None)
                    event.set()

            if self.workers[name].submit(close_one):
                done[name] = event
        deadline = time.monotonic() + self.close_timeout_s
        for name, event in done.items():
            if not event.wait(max(0.0, deadline - time.monotonic())):
                _off[name] = "does not answer"
                warn_once(
                    f"logger:{name}",
                    f"logger {name} does not answer ({self.run.name}: still busy after {self.close_timeout_s:g} s, "
                    "logging.close_timeout_s): it logs nothing more in this run (training goes on)",
                )


def open_loggers(
    cell_dir: Path,
    cell: Any,
    cfg: dict[str, Any],
    start_update: int,
    rank: int,
    selection: dict[str, Any] | None = None,
) -> CellLoggers | None:
    """The cell's loggers (rank 0 only), or None when the config turns none on."""
    names = logger_names(cfg)
    if rank != 0 or not names:
        return None
    log_cfg = cfg["logging"]
    run = CellRun(Path(cell_dir), cell, cfg, start_update, selection or {})
    return CellLoggers(names, run, log_cfg["every_updates"], log_cfg["close_timeout_s"])
