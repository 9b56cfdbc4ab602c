"""One cell trains in one process at a time, across processes and machines that share the run directory.

A cell is locked by creating ``DIR/<task>/<cell>/lock.json`` with ``O_CREAT | O_EXCL`` (atomic on local
filesystems and on NFSv3+). The file names its owner (host, pid, a random token) and the owner touches it
every ``heartbeat_s`` seconds from a background thread. A lock is *stale* when its owner is a dead
process on this host (a live one on this host never is), or, for an owner on another machine, when its heartbeat
is older than ``stale_s`` (it crashed). The record also holds the owner's process start time, so a pid that a new
process reused after the owner died is not mistaken for it. A stale lock is taken over by renaming it away (only
one contender's rename succeeds) and creating a fresh one.

The lock is written complete before it appears (a temp file hard-linked to ``lock.json``, which fails if the
name exists), so a full disk never leaves an empty lock behind. A lock whose content cannot be read (empty,
truncated: left by an older version or a damaged disk) names no owner: it is judged by its age alone, stale
once its mtime is older than ``stale_s``; ``describe()`` says so, and whoever takes it over reports it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store import DiskFull

LOCK = "lock.json"
ENV_GPUS = "LSKD_GPUS"  # set by the subprocess/torchrun executors: the GPU ids given to a worker


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process of this host (a zombie that nobody reaped yet counts as dead)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/PID/stat field 22); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class LockInfo:
    host: str
    pid: int
    token: str
    since: float
    age: float  # seconds since the last heartbeat
    devices: str | None = None  # the GPU ids the owner was given (LSKD_GPUS), e.g. "2" or "2,3"
    problem: str | None = None  # why the content could not be read (then judged by its age only)
    start: int | None = None  # the owner's process start time (``_start_time``), where recorded

    def describe(self) -> str:
        if self.problem:
            return f"unreadable lock ({self.problem}), last touched {self.age:.0f} s ago"
        gpus = f", GPU{'s' if ',' in self.devices else ''} {self.devices}" if self.devices else ""
        return f"pid {self.pid} on {self.host}{gpus}, heartbeat {self.age:.0f} s ago"


def read_lock(cell_dir: Path) -> LockInfo | None:
    """The lock of ``cell_dir``; None only when there is none."""
    path = Path(cell_dir) / LOCK
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the reader
            raise OSError(errno.EINVAL, "not a regular file")
        raw = path.read_bytes()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            age = 0.0
        return LockInfo("?", -1, "?", 0.0, age, problem=f"cannot be read: {exc.strerror or exc}")
    try:
        data = json.loads(raw.decode())
        devices, start = data.get("devices"), data.get("start")
        return LockInfo(
            str(data["host"]),
            int(data["pid"]),
            str(data["token"]),
            float(data["since"]),
            age,
            str(devices) if devices else None,
            start=int(start) if start is not None else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return LockInfo("?", -1, "?", 0.0, age, problem="empty" if not raw.strip() else "not a lock record")


def is_stale(info: LockInfo, stale_s: float) -> bool:
    """An owner on this host is judged by its process alone: dead is stale, alive is never (however old its
    heartbeat: a heartbeat interval as long as ``stale_s`` must not hand a live owner's cell to a second run).
    An owner elsewhere, or an unreadable lock, is stale once untouched for ``stale_s``."""
    if info.host == _host() and info.pid > 0:
        if not _pid_alive(info.pid):
            return True
        now = _start_time(info.pid) if info.start is not None else None
        return now is not None and now != info.start  # the pid was reused: its owner is gone
    return info.age > stale_s


class CellLock:
    """The lock of one cell directory, held by this process."""

    def __init__(self, cell_dir: Path):
        self.dir = Path(cell_dir)
        self.path = self.dir / LOCK
        self.token = uuid.uuid4().hex
        self.held = False
        self.took_over: str | None = None  # set when a stale lock with unreadable content was taken over

    def try_acquire(self, stale_s: float) -> bool:
        """Take the lock if it is free or stale; False if another live process holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                return True
            info = read_lock(self.dir)
            if info is None:  # released between our attempts
                continue
            if not is_stale(info, stale_s):
                return False
            aside = self.dir / f".{LOCK}.stale-{self.token}"
            try:
                os.rename(self.path, aside)  # only one contender wins this rename
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            if info.problem:
                self.took_over = (
                    f"{self.path} was unreadable ({info.problem}) and untouched for {info.age:.0f} s "
                    f"(> lock.stale_s {stale_s:g} s): taken over"
                )
        return False

    def _create(self) -> bool:
        """Publish a complete lock record under ``lock.json`` unless the name exists (link is atomic and
        exclusive, NFS included): the lock never exists half-written."""
        tmp = self.dir / f".{LOCK}.{self.token}.tmp"
        body = {"host": _host(), "pid": os.getpid(), "token": self.token, "since": time.time()}
        start = _start_time(os.getpid())
        if start is not None:
            body["start"] = start
        if os.environ.get(ENV_GPUS):
            body["devices"] = os.environ[ENV_GPUS]
        record = json.dumps(body)
        try:
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(record)
                    f.flush()
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFull(self.path) from exc
                raise
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError as exc:  # a filesystem without hard links: exclusive create, then write
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                return self._create_excl(record)
        finally:
            tmp.unlink(missing_ok=True)
        self.held = True
        return True

    def _create_excl(self, record: str) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                f.write(record)
        except OSError:
            self.path.unlink(missing_ok=True)  # never leave an empty lock behind
            raise
        self.held = True
        return True

    def owned(self) -> bool:
        info = read_lock(self.dir)
        return info is not None and info.token == self.token

    def heartbeat(self) -> None:
        if self.held:
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.held = False

    def release(self) -> None:
        if self.held and self.owned():
            self.path.unlink(missing_ok=True)
        self.held = False


class Heartbeat:
    """Touches every held lock every ``interval`` seconds until stopped (a daemon thread)."""

    def __init__(self, locks: Iterable[CellLock], interval: float):
        self.locks = list(locks)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lskd-lock-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for lock in self.locks:
                lock.heartbeat()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
