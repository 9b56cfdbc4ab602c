"""``lskd-bench run``, ``config``, ``check-data`` and ``status``: train a task's grid, show its config, check its
data, and the state of every cell of a run directory."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from ..config import describe_config
from ..errors import UsageError, raise_on_sigterm
from ..leaderboard import collect, write_outputs
from ..runners.cells import plan_cells
from ..runners.grid import Outline, run_grid
from ..runners.progress import event, json_stream, output_format
from ..runners.status import status_rows
from ..runners.train import auto_cpu_reason
from ..store import check_writable_dir
from ..tasks import get_task
from .common import DEFAULT_RUNS, one_line_os_error, runs_dir
from .options import add_config_options, resolve_args


def cmd_run(args: argparse.Namespace) -> int:
    """``--log-format json`` (or ``logging.format: json``): every line on stdout and stderr is a JSON object, from a
    ``start`` event to a ``summary`` event (also when every cell is reused, or the run stops on bad input)."""
    try:
        cfg = resolve_args(args).cfg
    except UsageError as exc:
        if args.log_format != "json":
            raise
        cfg = None
        error: UsageError | None = exc
    else:
        error = None
        if output_format(cfg) != "json":
            return _run(args, cfg)
    out = Path(args.out)
    with json_stream():
        event("start", command="run", task=cfg["task"] if cfg else args.task, out=str(out), dry_run=args.dry_run)
        try:
            if error is not None:
                raise error
            return _run(args, cfg, json_events=True)
        except (UsageError, OSError) as exc:  # what _main says in one line, said as events
            if isinstance(exc, OSError) and not one_line_os_error(exc):
                raise
            text = (
                f"{exc.filename}: {exc.strerror}" if isinstance(exc, (IsADirectoryError, NotADirectoryError)) else exc
            )
            event("error", text=str(text))
            event("summary", ok=False, error=str(text), out=str(out))
            return 2


def _run(args: argparse.Namespace, cfg: dict[str, Any], json_events: bool = False) -> int:
    out = Path(args.out)
    check_writable_dir(out)
    reason = auto_cpu_reason(cfg)
    if reason:
        print(f"device auto: training on the CPU: {reason}", file=sys.stderr)
    if args.dry_run:
        get_task(cfg["task"]).check_layout(cfg)  # the data check run makes before writing anything
        cells = plan_cells(cfg)
        for cell in cells:
            print(cell.dir(out))
        if json_events:
            event("summary", ok=True, dry_run=True, cells=len(cells), out=str(out))
        return 0
    try:
        with raise_on_sigterm():
            summary = run_grid(
                cfg, out, progress=not args.no_progress, on_plan=partial(_header, json_events, not args.no_progress)
            )
    except KeyboardInterrupt as exc:
        sig = getattr(exc, "signal_name", "SIGINT")
        print(
            f"\ninterrupted ({sig}): finished cells are saved, unfinished ones resume from their last checkpoint; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        if json_events:
            event("summary", ok=False, interrupted=sig, out=str(out))
        return int(getattr(exc, "code", 130))
    rows = [r for r in collect(out) if r["task"] == cfg["task"]]
    md, board = "", None
    if rows:
        board, md = write_outputs(rows, out / cfg["task"] / "leaderboard", follow=False)
    if json_events:  # the leaderboard's markdown is in its file; the lines below are the summary's fields
        event(
            "summary",
            ok=summary.ok,
            text=summary.line(),
            cells=len(summary.cells),
            trained=len(summary.trained),
            reused=len(summary.reused),
            failed=[{"cell": c.name, "reason": r} for c, r in summary.failed],
            not_run=[{"cell": c.name, "teacher": c.teacher.name} for c in summary.blocked],
            repairs=summary.repairs,
            notes=summary.notes,
            wall_s=round(summary.wall_s, 3),
            out=str(out),
            leaderboard=str(board) if board else None,
        )
        return 0 if summary.ok else 1
    print(md, end="")
    for line in summary.repairs:
        print(line)
    print(summary.line())
    for line in summary.notes:  # the executor's (the Slurm job ids to watch...)
        print(line)
    if not summary.ok:
        for line in summary.failure_lines():
            print(line, file=sys.stderr)
        print("run the same command again to retry the failed cells", file=sys.stderr)
        return 1
    return 0


def _header(json_events: bool, show: bool, outline: Outline) -> None:
    """Before the first cell trains: the cells to train and to reuse, the executor, the run directory and an
    estimate of the training's wall time when finished cells of the task allow one (stderr, as progress is:
    not with --no-progress; a ``plan`` event with --log-format json, always). Nothing to train: no header (the
    summary line says it)."""
    if json_events:
        estimate = None if outline.estimate_s is None else round(outline.estimate_s, 1)
        fields = {k: v for k, v in vars(outline).items() if k not in ("out", "estimate_s")}
        event("plan", **fields, out=str(outline.out), estimate_s=estimate)
    elif show and outline.train:
        for line in outline.lines():
            print(line, file=sys.stderr, flush=True)


def cmd_config(args: argparse.Namespace) -> int:
    print(describe_config(resolve_args(args, check_executor=False)), end="")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    resolved = resolve_args(args, check_executor=False)
    task = get_task(resolved.cfg["task"])
    report = task.check_data(resolved.cfg, progress=not args.no_progress)
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items())
    for line in report.notes:
        print(line)
    for line in report.problems:
        print(f"problem: {line}")
    if report.ok:
        print(f"{task.name}: data OK ({counts})")
        return 0
    print(f"lskd-bench: error: {task.name}: {len(report.problems)} problem(s) in the data ({counts})", file=sys.stderr)
    return 2


def cmd_status(args: argparse.Namespace) -> int:
    runs = runs_dir(args)
    rows = status_rows(runs, args.task)
    if not rows:
        raise UsageError(f"no cells of task {args.task!r} under {runs}" if args.task else f"no cells under {runs}")
    width = max(len(r["cell"]) for r in rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
        detail = r["detail"].replace("\n", "\n" + " " * (width + 28))
        print(f"{r['cell']:<{width}}  {r['state']:<11}  {r['job'] or '-':>9}  {detail}".rstrip())
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


def add_run(sub) -> None:

    r = sub.add_parser(
        "run",
        help="train the teacher/student grid of a task (resumable)",
        description="Train teachers (one per alpha, label smoothing), KD students (one per alpha x T x seed) "
        "and a no-KD baseline student per seed. Finished cells are reused; an interrupted run resumes. "
        "Exit codes: 0 all cells finished, 1 some cells failed (see error.json; re-run to retry), "
        "2 bad input (nothing trained), 130/143 stopped by SIGINT/SIGTERM (run again to resume). Damaged files in the "
        "run directory are repaired, one 'repaired:' line each.",
    )
    add_config_options(r)
    r.add_argument("--out", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    r.add_argument("--dry-run", action="store_true", help="check the data layout, list the cell directories and exit")
    r.add_argument(
        "--no-progress", action="store_true", help="no progress output: bars (or plain lines) and the header"
    )
    r.set_defaults(func=cmd_run)


def add_config(sub) -> None:
    c = sub.add_parser(
        "config",
        help="print the resolved config of a run, with where each value came from",
        description="Resolve the config as 'run' would (schema defaults <- task recipe <- --config FILE <- "
        "flags and --set) and print every key with its value and source.",
    )
    add_config_options(c)
    c.set_defaults(func=cmd_config)


def add_check_data(sub) -> None:
    cd = sub.add_parser(
        "check-data",
        help="scan a task's data root: layout, every file decoded, duplicates",
        description="Check the data root of a task before training: the layout (class folders, CUB index "
        "files, IWSLT line counts), then decode every file with a progress bar. Exit 0 when clean, 2 with "
        "one line per problem otherwise.",
    )
    add_config_options(cd)
    cd.add_argument("--no-progress", action="store_true", help="no progress bar")
    cd.set_defaults(func=cmd_check_data)


def add_status(sub) -> None:
    st = sub.add_parser(
        "status",
        help="per cell: finished / running / queued / failed / pending, with the cells of the newest run not "
        "started yet (Slurm job ids, log tails)",
    )
    st.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    st.add_argument("--task", help="only this task")
    st.set_defaults(func=cmd_status)
