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


def load_result(cell_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(result, problem): the cell's result.json if usable, else why not (both None: the cell has none)."""
    p = Path(cell_dir) / RESULT
    if not p.exists():
        return None, None
    try:
        res = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON (truncated?): {exc}"
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
_NAME_KEYS = ("task", "arch", "method", "hash")  # each becomes part of a file name somewhere
_OPTIONAL_NAME_KEYS = ("name", "teacher_arch")  # absent from results of older versions (or None)


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


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metrics_problem(m: Any, what: str) -> str | None:
    if not isinstance(m, dict) or not m:
        return f"has {what} that are not a non-empty mapping of names to numbers ({type(m).__name__})"
    bad = next((k for k, v in m.items() if not isinstance(k, str) or not _number(v)), None)
    return None if bad is None else f"has {what} with a non-numeric value ({bad}: {m[bad]!r})"


def result_shape_problem(res: dict[str, Any]) -> str | None:
    """Why a parsed result.json (hand-edited, or from another program) cannot be read as train.py writes it: the
    types every reader (leaderboard, compare, plot, analyze, status) relies on, and names safe as file names."""
    c = res["cell"]
    if not isinstance(c, dict):
        return f"has a cell entry that is not a mapping ({type(c).__name__})"
    if c.get("role") not in ROLES:
        return f"has cell.role {c.get('role')!r}, not one of {', '.join(ROLES)}"
    for key in _NAME_KEYS + _OPTIONAL_NAME_KEYS:
        if not safe_name(c.get(key)) and (key in _NAME_KEYS or c.get(key) is not None):
            return f"has cell.{key} {c.get(key)!r}, not a plain name (no path separators)"
    if not (_number(c.get("alpha")) or (c["role"] == "baseline" and c.get("alpha") is None)):
        return f"has cell.alpha {c.get('alpha')!r}, not a number"
    if not (c.get("T") is None or _number(c["T"])):
        return f"has cell.T {c['T']!r}, not a number"
    if not isinstance(c.get("seed"), int) or isinstance(c.get("seed"), bool):
        return f"has cell.seed {c.get('seed')!r}, not an integer"
    problem = _metrics_problem(res["metrics"], "metrics")
    if problem:
        return problem
    best = selected_epoch(res)
    if best is not None and (not isinstance(best, dict) or _metrics_problem(best.get("metrics"), "best.metrics")):
        return _metrics_problem(best.get("metrics") if isinstance(best, dict) else None, "best.metrics")
    if not isinstance(res["epochs"], int) or isinstance(res["epochs"], bool):
        return f"has epochs {res['epochs']!r}, not an integer"
    if not isinstance(res["timings"], dict) or not _number(res["timings"].get("wall_s")):
        return "has timings without a numeric wall_s"
    history = res.get("history")
    if history is not None:
        if not isinstance(history, list):
            return f"has a history that is not a list ({type(history).__name__})"
        for i, h in enumerate(history):
            ok = isinstance(h, dict) and _number(h.get("epoch")) and _number(h.get("loss"))
            if not ok or ("eval" in h and h["eval"] is not None and _metrics_problem(h["eval"], "eval")):
                return f"has history row {i + 1} without a numeric epoch, loss and eval metrics ({str(h)[:60]})"
    for key in ("selection", "metric_info", "env", "run_config", "config"):
        if res.get(key) is not None and not isinstance(res[key], dict):
            return f"has a {key} entry that is not a mapping ({type(res[key]).__name__})"
    if res.get("primary_metric") is not None and not isinstance(res["primary_metric"], str):
        return f"has primary_metric {res['primary_metric']!r}, not a name"
    specs = res.get("metric_specs")
    if specs is not None and not (
        isinstance(specs, list) and all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in specs)
    ):
        return "has metric_specs that are not a list of {name: ...} mappings"
    names = res.get("metric_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return "has metric_names that are not a list of names"
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
            problems.append(f"{p} {problem}: skipped ('lskd-bench run' trains the cell again)")
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


def read_error(cell_dir: Path) -> dict[str, Any] | None:
    p = Path(cell_dir) / ERROR
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


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
