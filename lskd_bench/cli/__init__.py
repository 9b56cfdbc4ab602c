"""``lskd-bench`` command line: one module per group of commands (``run``: run, config, check-data, status;
``results``: leaderboard, export, compare, report; ``analysis``: analyze, visualize, plot; ``nmt``: translate,
score; ``catalog``: methods, tasks), the run's config options generated from the schema (``options``)."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from .. import __version__
from ..errors import UsageError
from . import analysis, catalog, nmt, results, run
from .common import Parser
from .options import add_config_options

_add_config_options = add_config_options  # the name it had in the one-module CLI


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="lskd-bench", description="Label smoothing x knowledge distillation benchmark suite.")
    p.add_argument("--version", action="version", version=f"lskd-bench {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=Parser)
    for add in (
        run.add_run,
        results.add_leaderboard,
        results.add_export,
        results.add_compare,
        analysis.add_analyze,
        analysis.add_visualize,
        analysis.add_plot,
        run.add_config,
        run.add_check_data,
        run.add_status,
        results.add_report,
        nmt.add_translate,
        nmt.add_score,
        catalog.add_methods,
        catalog.add_tasks,
    ):
        add(sub)
    return p


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away (| head)


def main(argv: list[str] | None = None) -> int:
    """Every command goes through here: bad input is one line and exit 2; a closed output pipe (``| head -1``)
    ends the command quietly."""
    for stream in (sys.stdout, sys.stderr):  # an ASCII locale (LANG=C) cannot print 'α': escape, never fail
        if hasattr(stream, "reconfigure") and stream.encoding.lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="backslashreplace")
    try:
        try:
            rc = _main(argv)
        except SystemExit as exc:  # --help, --version: their text may meet a closed pipe too
            rc = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe prints "Exception ignored..."
        return rc
    except BrokenPipeError:
        try:  # nothing more reaches the reader: send what is still buffered nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return SIGPIPE_EXIT


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"lskd-bench: error: {exc}", file=sys.stderr)
        return 2
    except (IsADirectoryError, NotADirectoryError) as exc:  # an output path that is a folder, or under a file
        print(f"lskd-bench: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine, not the input: a full disk (DiskFull names the file)...
        if exc.errno != errno.ENOSPC:
            raise
        print(f"lskd-bench: error: {exc}", file=sys.stderr)
        return 1


__all__ = ["SIGPIPE_EXIT", "build_parser", "main"]
