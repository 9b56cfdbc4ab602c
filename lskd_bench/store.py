"""On-disk layout of a run directory; every file is written atomically (temp file + rename).

DIR/<task>/<cell-name>-<hash>/
    result.json   metrics + config + timings; written last: its presence means "finished"
    model.pt      final weights (teachers are reused by their students from here)
    model_selected.pt  weights of the selected epoch (result.json's ``best``), when it is not the last one
    test.*        translation: test hypotheses of the selected and last epochs, references, sources
    state.pt      last epoch checkpoint while the cell trains; removed once it finishes
    features.npz  penultimate features/labels and head weights for `lskd-bench analyze` (written when first read)
    lock.json     present while a process trains the cell (see runners/lock.py)
    error.json    why the cell's last attempt failed (removed when it is retried)
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError

RESULT = "result.json"
MODEL = "model.pt"
SELECTED = "model_selected.pt"
DEPLOYED = "deployed.pt"  # the model a cell is evaluated as, where it is not the student (SimKD)
DEPLOYED_SELECTED = "deployed_selected.pt"
STATE = "state.pt"
STATE_PREV = "state.prev.pt"  # the checkpoint before state.pt: resumed from when state.pt is damaged
FEATURES = "features.npz"
ERROR = "error.json"


class DiskFull(OSError):
    """A write failed for lack of space; the message names the file (``no space left on device while writing X``)."""

    def __init__(self, path: Path):
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def umask() -> int:
    """The process umask, read without changing it (``/proc``), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(fileobj)`` to a temp file beside ``path``, fsync, then rename over it.

    The file gets the mode a plain ``open()`` would give (0666 less the umask; ``mkstemp`` alone makes 0600).
    A full disk raises ``DiskFull`` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(path) from exc
        raise
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not isinstance(exc, DiskFull):
            raise DiskFull(path) from exc
        raise


# ------------------------------------------------------------------------------------------ output files
# A file a command writes for the user (report --out, export --out, leaderboard/compare/analyze OUT.*, translate
# -o). ``-`` is stdout. A path that is, or reaches through symlinks, a character device (/dev/null, /dev/full, a
# terminal), a FIFO, the process's stdout, or another open file through /proc/PID/fd (/dev/stdout, /dev/fd/N)
# is written through: opened and written, never replaced (as root, replacing /dev/null would destroy the
# device). A directory, socket or block device is refused with one line naming the option. Anything else (a
# regular file, a symlink to one, nothing yet) is replaced atomically (``atomic_write``: the link itself, never
# the file it points to). Paths the user did not name (the defaults inside RUNS, which may hold planted links)
# are never followed: ``follow=False`` treats them by what the entry itself is.
STDOUT = "-"
_PROC_FD = re.compile(r"/proc/(\d+|self|thread-self)(/task/\d+)?/fd")


def _same_as_stdout(st: os.stat_result) -> bool:
    fds = {1}
    with contextlib.suppress(AttributeError, ValueError, OSError):
        fds.add(sys.stdout.fileno())
    for fd in fds:
        with contextlib.suppress(OSError):
            out = os.fstat(fd)
            if (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino):
                return True
    return False


def _through_proc_fd(path: Path) -> bool:
    """Does ``path`` reach, through its symlinks, an entry of ``/proc/PID/fd`` (an open file of a process)?"""
    p = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on symlinks in one lookup
        parent = os.path.realpath(os.path.dirname(p))
        if _PROC_FD.fullmatch(parent):
            return True
        p = os.path.join(parent, os.path.basename(p))
        if not os.path.islink(p):
            return False
        p = os.path.join(parent, os.readlink(p))
    return False


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    if stat.S_ISBLK(mode):
        return "is a block device"
    if stat.S_ISFIFO(mode):
        return "is a FIFO"
    if stat.S_ISCHR(mode):
        return "is a character device"
    if stat.S_ISREG(mode):
        return "is a regular file"
    return "is not a regular file"


def output_kind(path: Path | str, option: str | None = None, follow: bool = True) -> str:
    """How the output file ``path`` is written: "stdout", "through" (opened and written) or "replace" (atomically);
    UsageError (``OPTION PATH: is a directory``) for what cannot be written. ``follow=False``: a path the user did
    not name: only nothing, a regular file or a symlink (itself replaced) is written."""
    where = f"{option} {path}" if option else str(path)
    if follow and str(path) == STDOUT:
        return "stdout"
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet (or a link to nothing: replaced like a
        return "replace"  # file); a parent that is a file: check_output's check_writable_dir says so
    except OSError as exc:  # a loop of links, no permission...
        raise UsageError(f"{where}: {exc.strerror or exc}") from None
    if not follow:
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            return "replace"
        raise UsageError(f"{where}: {_what(st.st_mode)}")
    if _same_as_stdout(st):
        return "stdout"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return "through"
    if stat.S_ISREG(st.st_mode):
        return "through" if _through_proc_fd(Path(path)) else "replace"
    raise UsageError(f"{where}: {_what(st.st_mode)}")


def check_output(path: Path | str, option: str, follow: bool = True) -> str:
    """Before a command works: can it write the output file ``path`` (given as ``option``, or its default when
    ``follow`` is False)? Its ``output_kind``; for a file to be replaced, its folder must be writable."""
    kind = output_kind(path, option, follow)
    if kind == "replace":
        check_writable_dir(Path(path).absolute().parent)
    return kind


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_output(path: Path | str, write: Callable[[Any], None], mode: str = "wb", follow: bool = True) -> str:
    """Write the output file ``path`` through ``write(fileobj)`` by the rules above (``output_kind``); return the
    kind. A full disk or device (/dev/full) raises ``DiskFull`` naming the path."""
    kind = output_kind(path, follow=follow)
    if kind == "replace":
        atomic_write(Path(path), write, mode)
        return kind
    buf: Any = io.BytesIO() if "b" in mode else io.StringIO()
    write(buf)
    data = buf.getvalue()
    data = data.encode("utf-8") if isinstance(data, str) else data
    name = "stdout" if str(path) == STDOUT else path
    try:
        if kind == "stdout":
            sys.stdout.flush()
            try:
                fd = sys.stdout.fileno()
            except (AttributeError, ValueError, OSError):  # a stream without a descriptor (captured, in tests)
                if hasattr(sys.stdout, "buffer"):
                    sys.stdout.buffer.write(data)
                else:
                    sys.stdout.write(data.decode("utf-8"))
                sys.stdout.flush()
            else:
                _write_all(fd, data)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)  # no O_CREAT: it exists; FIFO: waits for a reader
            try:
                st = os.fstat(fd)  # what was opened, which may not be what was looked at a moment before
                if stat.S_ISREG(st.st_mode) and _through_proc_fd(Path(path)):  # an open file: as a shell's '>'
                    os.ftruncate(fd, 0)
                elif not (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                    raise UsageError(f"{path}: {_what(st.st_mode)} now (it changed while being opened)")
                _write_all(fd, data)
            finally:
                os.close(fd)
    except BrokenPipeError:  # the reader went away: the CLI ends quietly, as for any closed pipe
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(Path(str(name))) from None
        raise UsageError(f"cannot write {name}: {exc.strerror or exc}") from None  # no permission, I/O error...
    return kind


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"), mode="w")


def write_lines(path: Path, lines: list[str]) -> None:
    """One text line per item (UTF-8, '\\n' endings), written atomically."""
    atomic_write(path, lambda f: f.write("".join(line + "\n" for line in lines).encode("utf-8")))


def csv_md_paths(out: Path) -> tuple[Path, Path]:
    """``OUT.csv`` and ``OUT.md``; ``out`` may already end in .csv or .md (other dots are kept)."""
    out = Path(out)
    base = out.parent / out.stem if out.suffix in (".csv", ".md") else out
    return base.with_name(base.name + ".csv"), base.with_name(base.name + ".md")


def write_csv_md(out: Path, csv_text: str, md_text: str, follow: bool = True) -> tuple[Path, Path]:
    """Write ``OUT.csv`` and ``OUT.md`` (``csv_md_paths``) as output files (``write_output``)."""
    paths = csv_md_paths(out)
    for path, text in zip(paths, (csv_text, md_text)):
        write_output(path, lambda f, text=text: f.write(text), mode="w", follow=follow)
    return paths


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV Injection"): '=', '+', '-',
# '@', tab, carriage return (and line feed); the full-width forms too, which some spreadsheets fold to them.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|nan)", re.IGNORECASE)


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell no spreadsheet runs: a string that starts (after blanks) with a formula character
    (``FORMULA_START``) gets a leading ``'``, as OWASP recommends, so it is shown as the text it is. Numbers, and
    strings that are plain numbers (``-1.500``, how the tables write metrics), are kept as they are."""
    if not isinstance(value, str) or not value or _PLAIN_NUMBER.fullmatch(value):
        return value
    if value.lstrip(" \t\r\n").startswith(FORMULA_START) or value[0] in "\t\r\n":
        return "'" + value
    return value


def csv_row(values: Any) -> list[Any]:
    """Every cell of a CSV row through ``csv_cell``."""
    return [csv_cell(v) for v in values]


# The tables' CSV rows end in '\n'; a writer told so quotes a cell that holds '\n' but not one that holds a bare
# '\r', which a spreadsheet reads as a row end (the rest of the cell a new row, its first cell a formula). So the
# writers are given '\r\n' (every cell with either is quoted) and ``csv_newlines`` turns the row ends into '\n'.
CSV_LINETERMINATOR = "\r\n"


def csv_newlines(text: str) -> str:
    """CSV ``text`` written with ``CSV_LINETERMINATOR`` with '\n' row ends (line breaks inside quoted cells kept:
    outside quotes is every even-numbered piece between '"'; a doubled quote inside a cell leaves an empty one)."""
    parts = text.split('"')
    parts[::2] = [p.replace("\r\n", "\n") for p in parts[::2]]
    return '"'.join(parts)


def csv_dict(row: dict[str, Any]) -> dict[str, Any]:
    """A ``csv.DictWriter`` row with every value through ``csv_cell`` (the keys are the writer's field names)."""
    return {k: csv_cell(v) for k, v in row.items()}


class _KeepWriteError:
    """A file wrapper that remembers the ``OSError`` its ``write`` raised: torch's zip writer turns it into
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, which hides a full disk."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def keep_previous(path: Path, prev: Path) -> None:
    """Before ``path`` is replaced: make ``prev`` the file ``path`` holds now (a hard link, no copy; a copy where
    the file system has no links). ``path`` itself stays in place until its replacement is complete."""
    if not path.is_file():
        return
    with contextlib.suppress(FileNotFoundError):
        prev.unlink()
    try:
        os.link(path, prev)
    except OSError:
        with contextlib.suppress(OSError):
            shutil.copyfile(path, prev)


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` streamed to a temp file and renamed (no copy of a checkpoint in memory); a full disk stays an
    ``OSError`` (``DiskFull``)."""

    def write(f: Any) -> None:
        out = _KeepWriteError(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise

    atomic_write(path, write)


RESULT_KEYS = ("cell", "metrics", "epochs", "timings")
RESULT_MAX_BYTES = 64 << 20  # a result.json is kilobytes; a larger file is not one lskd-bench wrote


def load_result(cell_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(result, problem): the cell's result.json if it fits ``RESULT_SPEC``, else why not (both None: the cell has
    none). The one gate every reader of results passes through (SECURITY.md: a run directory is untrusted)."""
    p = Path(cell_dir) / RESULT
    try:
        st = p.stat()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader, a device never end
        return None, "is not a regular file"
    if st.st_size > RESULT_MAX_BYTES:
        return None, f"is larger than any result ({st.st_size >> 20} MiB; {RESULT_MAX_BYTES >> 20} MiB at most)"
    try:
        with open(p, "rb") as f:
            res = json.loads(f.read(RESULT_MAX_BYTES + 1).decode("utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON (truncated?): {exc}"
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting deeper than the stack
        return None, f"is not JSON lskd-bench reads ({type(exc).__name__}: {str(exc)[:80]})"
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"
    if not isinstance(res, dict):
        return None, "does not hold a JSON object"
    missing = [k for k in RESULT_KEYS if k not in res]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    problem = result_shape_problem(res)
    return (None, problem) if problem else (res, None)


ROLES = ("teacher", "student", "baseline")


def safe_name(value: Any) -> bool:
    """Can ``value`` be one component of a file name (no separator, not '.' or '..', no control characters)?
    Names read from a run directory are untrusted (SECURITY.md): one with '../' would write outside the output."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and "/" not in value
        and "\\" not in value
        and value.isprintable()
    )


# ------------------------------------------------------------------------------------------ what a result.json is
# A rule takes one value and says why it does not fit (None: it fits). ``RESULT_SPEC``, built from them below, is the
# one description of a valid result.json: the types and ranges every reader (leaderboard, compare, analyze, plot,
# status, report, export, ``results.load``) relies on; ``load_result`` refuses any file that does not fit it. Keys it
# does not name are free. A result this version writes fits it unchanged (tests/data/result.json).
Rule = Callable[[Any], "str | None"]
INT64 = 2**63 - 1  # pandas and Parquet hold integers as int64
_FLOAT_MAX = 1e308  # a larger integer is no float (OverflowError)
_EPOCHS = 10**9


def _show(v: Any) -> str:
    text = repr(v)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"a list {text}" if isinstance(v, list) else text  # a problem that starts with '[' names an item


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _at(where: str, problem: str) -> str:
    return where + (problem if problem[:1] in (".", "[") else ": " + problem)


def nullable(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def integer(lo: int = 0, hi: int = INT64) -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return f"{_show(v)} is not an integer"
        return None if lo <= v <= hi else f"{_show(v)} is not in [{lo}, {hi}]"

    return check


def number(lo: float | None = None, hi: float | None = None, hi_open: bool = False, finite: bool = True) -> Rule:
    """An int or a float (not a bool) that a float holds; ``finite``: no NaN or infinity; ``lo``/``hi``: a range."""

    def check(v: Any) -> str | None:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return f"{_show(v)} is not a number"
        if isinstance(v, int) and abs(v) > _FLOAT_MAX:
            return f"{_show(v)} is too large for a number"
        if finite and not math.isfinite(v):
            return f"{v} is not a finite number"
        if (lo is not None and v < lo) or (hi is not None and (v >= hi if hi_open else v > hi)):
            return f"{v} is not in [{lo:g}, {hi if hi is None else format(hi, 'g')}{')' if hi_open else ']'}"
        return None

    return check


def real(v: Any) -> str | None:
    """A float (a JSON number with a point)."""
    return None if isinstance(v, float) else f"{_show(v)} is not a float"


def text(choices: tuple[str, ...] | None = None, max_len: int = 4096) -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return f"{_show(v)} is not a string"
        if choices is not None and v not in choices:
            return f"{_show(v)} is not one of {', '.join(choices)}"
        return None if len(v) <= max_len else f"a string of {len(v)} characters (at most {max_len})"

    return check


NAME_MAX_BYTES = 100  # with the prefixes and suffixes added to it, a file name stays under 255 bytes


def name(v: Any) -> str | None:
    """A plain name: one component of a file name (``safe_name``), short enough to be one with more added."""
    if not safe_name(v):
        return f"{_show(v)} is not a plain name (no path separators)"
    return None if len(v.encode("utf-8", "surrogateescape")) <= NAME_MAX_BYTES else f"{_show(v)} is too long a name"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"{_show(v)} is not true or false"


def anything(v: Any) -> str | None:
    return None


def one_of(*rules: Rule, what: str) -> Rule:
    def check(v: Any) -> str | None:
        return None if any(r(v) is None for r in rules) else f"{_show(v)} is not {what}"

    return check


def list_of(item: Rule) -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"{_show(v)} is not a list"
        for i, x in enumerate(v):
            problem = item(x)
            if problem:
                return _at(f"[{i}]", problem)
        return None

    return check


def mapping(
    fields: dict[str, Rule] | None = None,
    required: tuple[str, ...] = (),
    other: Rule = anything,
    nonempty: bool = False,
    key: Rule | None = None,
) -> Rule:
    """A JSON object: the keys in ``fields`` fit their rules (those in ``required`` present), every other key fits
    ``key`` and its value ``other``."""
    fields = fields or {}
    key = key or text(max_len=256)

    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"{_show(v)} is not a mapping"
        if nonempty and not v:
            return "is empty"
        missing = [k for k in required if k not in v]
        if missing:
            return f"lacks {', '.join(missing)}"
        for k, x in v.items():
            rule = fields.get(k)
            problem = rule(x) if rule else (key(k) and f"key {key(k)}") or other(x)
            if problem:
                return _at(f".{k}", problem) if rule or not key(k) else problem
        return None

    return check


# The columns of a row of ``results.load`` and of the leaderboard: a metric may not take one of these names.
ROW_KEYS = frozenset(
    "task role cell teacher_arch student_arch method alpha T seed config_hash primary_metric select epoch "
    "selected_epoch epochs selected_on teacher_cell teacher_weights teacher_epoch wall_s finished_at cell_dir".split()
)


def metric_name(v: Any) -> str | None:
    if not isinstance(v, str) or not v or len(v) > 64 or not v.isprintable():
        return f"{_show(v)} is not a metric name (1 to 64 printable characters)"
    if v in ROW_KEYS or v.startswith("env_"):
        return f"{_show(v)} is a table column, not a metric name"
    return None


def _number_format(v: Any) -> str | None:
    try:
        ok = isinstance(v, str) and len(v) <= 16 and isinstance(format(1.5, v), str)
    except (TypeError, ValueError):
        ok = False
    return None if ok else f"{_show(v)} is not a number format (like .2f)"


_METRICS = mapping(other=number(finite=False), key=metric_name, nonempty=True)  # a diverged loss may be NaN
_EPOCH = integer(0, _EPOCHS)
_SCALAR = nullable(one_of(text(), boolean, real, integer(-INT64, INT64), what="a string, number, true or false"))

RESULT_SPEC: dict[str, Rule] = {
    "cell": mapping(
        {
            "role": text(ROLES),
            "task": name,
            "arch": name,
            "method": name,
            "hash": name,
            "name": nullable(name),
            "teacher_arch": nullable(name),
            "teacher": nullable(name),  # the teacher's cell folder
            "alpha": nullable(number(0.0, 1.0, hi_open=True)),  # null only for a baseline (checked below)
            "T": nullable(number(0.0, 1e6)),
            "seed": integer(0, INT64),
        },
        required=("role", "task", "arch", "method", "hash", "alpha", "seed"),
    ),
    "metrics": _METRICS,
    "best": nullable(
        mapping(
            {"epoch": nullable(_EPOCH), "metrics": _METRICS, "score": nullable(number(finite=False))},
            required=("metrics",),
        )
    ),
    "epochs": _EPOCH,
    "init_epochs": _EPOCH,
    "updates": nullable(integer()),
    "num_params": nullable(integer()),
    "timings": mapping(
        {"wall_s": number(0.0), "train_s": number(0.0), "eval_s": number(0.0), "export_s": number(0.0)},
        required=("wall_s",),
    ),
    "history": nullable(
        list_of(
            mapping(
                {
                    "epoch": number(0, _EPOCHS),
                    "loss": number(finite=False),
                    "eval": nullable(_METRICS),
                    "lr": nullable(number(finite=False)),
                    "updates": nullable(integer()),
                    "train_top1": number(0.0, 100.0),  # optional (results before it lack it): training top-1, %
                    "eval_loss": number(finite=False),  # optional: the evaluation's cross-entropy (image tasks)
                },
                required=("epoch", "loss"),
            )
        )
    ),
    "primary_metric": nullable(metric_name),
    "metric_names": nullable(list_of(metric_name)),
    "metric_specs": nullable(
        list_of(
            mapping(
                {
                    "name": metric_name,
                    "label": text(max_len=200),
                    "higher_is_better": boolean,
                    "format": _number_format,
                    "shown": boolean,
                },
                required=("name",),
            )
        )
    ),
    "metric_info": nullable(mapping({"split": text(max_len=64)})),
    "selection": nullable(
        mapping(
            {
                "split": text(max_len=64),
                "metric": metric_name,
                "mode": text(("max", "min")),
                "epoch": nullable(_EPOCH),
                "score": nullable(number(finite=False)),
                "note": text(),
            }
        )
    ),
    "weights": nullable(mapping({"last": name, "selected": name})),
    "teacher_weights": nullable(
        mapping(
            {
                "cell": nullable(name),
                "which": text(("last", "selected")),
                "file": nullable(name),
                "epoch": nullable(_EPOCH),
                "last_epoch": nullable(_EPOCH),
            }
        )
    ),
    "files": nullable(mapping()),
    "config": nullable(
        mapping(
            {
                "task": nullable(text()),
                "train": nullable(mapping()),
                "method": nullable(mapping()),
                "data": nullable(mapping()),
            }
        )
    ),
    "run_config": nullable(mapping({"teacher_weights": text(), "pair": nullable(text(max_len=256))})),
    "env": nullable(
        mapping(
            {"threads": nullable(integer(0, 2**31)), "processes": nullable(integer(0, 2**31))},
            other=one_of(_SCALAR, list_of(_SCALAR), what="a string, number, true, false, null or a list of them"),
            key=text(max_len=64),
        )
    ),
    "skipped_samples": nullable(list_of(text())),
    "resumes": nullable(list_of(anything)),
    "finished_at": text(max_len=64),
}


def _declared_metrics(res: dict[str, Any]) -> list[str]:
    """The metrics a result declares (its tables' columns): ``metric_specs``, else ``metric_names``."""
    if res.get("metric_specs"):
        return [d["name"] for d in res["metric_specs"]]
    return list(res.get("metric_names") or [])


def result_shape_problem(res: dict[str, Any]) -> str | None:
    """Why a parsed result.json (hand-edited, or from another program) does not fit ``RESULT_SPEC`` (None: it
    fits): the rule of each key, then what holds across keys."""
    for key, rule in RESULT_SPEC.items():
        problem = rule(res[key]) if key in res else None
        if problem:
            return _at(key, problem)
    c = res["cell"]
    sel = res.get("selection") or {}
    if sel.get("split") == "valid" and "metric" not in sel:
        return "selection: lacks metric (a selection on the valid split names it)"
    if c["alpha"] is None and c["role"] != "baseline":
        return f"cell.alpha: null in a {c['role']} cell (only a baseline has none)"
    best = selected_epoch(res)
    need = [*_declared_metrics(res), *([res["primary_metric"]] if res.get("primary_metric") else [])]
    for where, metrics in (("metrics", res["metrics"]), ("best.metrics", (best or {}).get("metrics"))):
        lacking = [m for m in dict.fromkeys(need) if metrics is not None and m not in metrics]
        if lacking:
            return f"{where}: lacks {', '.join(map(str, lacking))} (the metrics the result declares)"
    return None


def result_problem(cell_dir: Path) -> str | None:
    """Why the cell's result.json cannot be used (None: absent or fine)."""
    return load_result(cell_dir)[1]


def read_result(cell_dir: Path) -> dict[str, Any] | None:
    """The cell's result, or None when it has none or an unusable one (``result_problem`` says why)."""
    return load_result(cell_dir)[0]


def selected_epoch(result: dict[str, Any]) -> dict[str, Any] | None:
    """The selected epoch of a result: ``{"epoch", "metrics", "score"}`` (``score`` absent in results written
    before it was stored), or None when none was evaluated. result.json keeps it under the key ``best``, the name
    it has had since the first version, so that every result reads alike; read it through this function only."""
    return result.get("best")


def selected_weights(result: dict[str, Any]) -> str | None:
    """The file of the selected epoch's weights a result records (``weights.selected``: ``model_selected.pt``, or
    ``model.pt`` when the selected epoch is the last); None for a result written before lskd-bench recorded it."""
    return (result.get("weights") or {}).get("selected")


def torch_file_problem(path: Path, full: bool = False) -> str | None:
    """Why a file written by ``torch.save`` is unusable (None: fine): missing, or not a complete archive
    (a truncated file lacks the zip's central directory). ``full`` also loads it (weights only)."""
    path = Path(path)
    if not path.is_file():
        return "is missing"
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"is corrupt ({exc or type(exc).__name__})"
    if full:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            return f"is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def move_aside(path: Path, tag: str = "corrupt") -> Path:
    """Rename a damaged file to ``NAME.<tag>-<UTC time>`` beside it (kept, never deleted); return the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
    os.rename(path, aside)
    return aside


def iter_results(root: Path, problems: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every finished cell's result under ``root`` (any depth), sorted by path; an unusable result.json is
    skipped, with a line appended to ``problems`` if given."""
    for p in sorted(Path(root).rglob(RESULT)):
        res, problem = load_result(p.parent)
        if problem and problems is not None:
            problems.append(f"skipped: {p} ({problem}; 'lskd-bench run' trains the cell again)")
        if res is not None:
            res["cell_dir"] = str(p.parent)  # where it lies, never what the file claims
            yield res


def write_error(cell_dir: Path, cell: Any, exc: BaseException, **where: Any) -> None:
    """Record why a cell failed; best effort (the disk may be what failed)."""
    try:
        write_json(Path(cell_dir) / ERROR, {
            "cell": cell.describe(),
            "error": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **where,
        })  # fmt: skip
    except OSError:
        pass


def read_small_json(path: Path, max_bytes: int = 1 << 20) -> Any:
    """The JSON in a small regular file of a run directory, or None: absent, not a regular file (a FIFO would block
    the reader), larger than ``max_bytes``, unreadable or not JSON. For files no reader may fail or wait on."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        with open(path, "rb") as f:
            return json.loads(f.read(max_bytes).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def read_error(cell_dir: Path) -> dict[str, Any] | None:
    err = read_small_json(Path(cell_dir) / ERROR)
    return err if isinstance(err, dict) else None


def clear_error(cell_dir: Path) -> None:
    (Path(cell_dir) / ERROR).unlink(missing_ok=True)


def check_writable_dir(path: Path) -> None:
    """Raise UsageError unless ``path`` is (or can be created as) a writable directory.

    Creates nothing: it probes the nearest existing ancestor with a temp file it removes at once.
    """
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"output directory {path} is not writable: {probe} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UsageError(f"output directory {path} is not writable: {exc.strerror or exc}") from None
