"""What the command modules share: the parser class, argument types, the run directory and output checks."""

from __future__ import annotations

import argparse
import errno
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import store
from ..errors import UsageError
from ..schema import _num

DEFAULT_RUNS = "runs"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too otherwise)
        raise UsageError(f"{message} (see '{self.prog} --help')")


def list_of(kind: Callable[[str], Any], flag: str) -> Callable[[str], list]:
    """A comma-separated list of ``kind`` values (UsageError naming ``flag`` otherwise)."""

    def parse(text: str) -> list:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise UsageError(f"{flag} needs a comma-separated list, got {text!r}")
        try:
            return [kind(s) for s in items]
        except ValueError:
            raise UsageError(f"{flag}: invalid value in {text!r}") from None

    return parse


def number(kind: type, flag: str, lo: float, hi: float, lo_open: bool = False) -> Callable[[str], Any]:
    """An argparse type for an option the schema does not check: a finite number within [lo, hi] (lo_open: > lo)."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise UsageError(f"{flag} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(v) or (v <= lo if lo_open else v < lo) or v > hi:
            raise UsageError(f"{flag} must be {'>' if lo_open else '>='} {_num(lo)} and <= {_num(hi)}, got {text}")
        return v

    return parse


def runs_dir(args: argparse.Namespace) -> Path:
    runs = Path(args.runs)
    if not runs.is_dir():
        raise UsageError(f"runs directory {runs} does not exist")
    return runs


def check_outputs(named: str | None, paths: list[Path], several: str = "") -> None:
    """Before a command works: can it write each of its output files (``store.check_output``)? ``named``: the
    --out the user gave (None: the defaults inside RUNS, never followed through a link); ``several``: what a
    command that writes several files writes, where ``--out -`` (stdout) cannot be."""
    if named == store.STDOUT and several:
        raise UsageError(f"--out -: this command writes {several}: give a file name, not - (stdout)")
    for path in paths:
        store.check_output(path, "--out" if named else None, follow=bool(named))


def warn(problems: list[str]) -> None:
    """The results a command skipped (unreadable result.json...), a ``warning:`` line each on stderr."""
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)


def one_line_os_error(exc: OSError) -> bool:
    """An OSError that is the input's or the machine's (a folder where a file goes, a full disk): one line."""
    return isinstance(exc, (IsADirectoryError, NotADirectoryError)) or exc.errno == errno.ENOSPC
