"""One cell trains in one process at a time, across processes and machines that share the run directory.

A cell is locked by creating ``DIR/<task>/<cell>/lock.json`` with ``O_CREAT | O_EXCL`` (atomic on local
filesystems and on NFSv3+). The file names its owner (host, pid, a random token) and the owner touches it
every ``heartbeat_s`` seconds from a background thread. A lock is *stale* when its owner is a dead
process on this host, or when its heartbeat is older than ``stale_s`` (an owner on another machine that
crashed). A stale lock is taken over by renaming it away (only one contender's rename succeeds) and
creating a fresh one.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

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


@dataclass
class LockInfo:
    host: str
    pid: int
    token: str
    since: float
    age: float  # seconds since the last heartbeat
    devices: Optional[str] = None  # the GPU ids the owner was given (LSKD_GPUS), e.g. "2" or "2,3"

    def describe(self) -> str:
        gpus = f", GPU{'s' if ',' in self.devices else ''} {self.devices}" if self.devices else ""
        return f"pid {self.pid} on {self.host}{gpus}, heartbeat {self.age:.0f} s ago"


def read_lock(cell_dir: Path) -> Optional[LockInfo]:
    path = Path(cell_dir) / LOCK
    try:
        data = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    try:
        devices = data.get("devices")
        return LockInfo(str(data["host"]), int(data["pid"]), str(data["token"]), float(data["since"]), age,
                        str(devices) if devices else None)
    except (KeyError, TypeError, ValueError):
        return LockInfo("?", -1, "?", 0.0, age)  # unreadable content: judged by its age only


def is_stale(info: LockInfo, stale_s: float) -> bool:
    if info.host == _host() and info.pid > 0 and not _pid_alive(info.pid):
        return True
    return info.age > stale_s


class CellLock:
    """The lock of one cell directory, held by this process."""

    def __init__(self, cell_dir: Path):
        self.dir = Path(cell_dir)
        self.path = self.dir / LOCK
        self.token = uuid.uuid4().hex
        self.held = False

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
        return False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            body = {"host": _host(), "pid": os.getpid(), "token": self.token, "since": time.time()}
            if os.environ.get(ENV_GPUS):
                body["devices"] = os.environ[ENV_GPUS]
            json.dump(body, f)
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

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
