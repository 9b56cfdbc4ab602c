"""``lskd-bench`` command line: run, leaderboard, tasks, analyze, visualize, plot."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, results, store
from .analysis.curves import plot_curves
from .analysis.plot import visualize
from .analysis.report import analyze, write_report
from .analysis.runs import RunIndex
from .config import Resolved, describe_config, load_yaml, parse_override, set_dotted
from .errors import UsageError, raise_on_sigterm
from .leaderboard import collect, output_paths, write_outputs
from .leaderboard.compare import compare
from .leaderboard.compare import output_paths as compare_paths
from .methods import METHODS, TEACHER_METHOD, HintonKD
from .registry import EXECUTORS
from .report import write_report as write_html_report
from .runners.cells import plan_cells
from .runners.devices import parse_gpus, require_cuda
from .runners.grid import resolve, run_grid
from .runners.inference import find_cell, load_cell, read_text_lines, score_files, translate_lines
from .runners.progress import event, json_stream, output_format
from .runners.status import status_rows
from .runners.train import auto_cpu_reason, resolve_device
from .schema import RUN, _num, default_text
from .store import check_writable_dir
from .tasks import get_task, task_names

DEFAULT_RUNS = "runs"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too otherwise)
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _list_of(kind: Callable[[str], Any], flag: str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise UsageError(f"{flag} needs a comma-separated list, got {text!r}")
        try:
            return [kind(s) for s in items]
        except ValueError:
            raise UsageError(f"{flag}: invalid value in {text!r}") from None

    return parse


def _number(kind: type, flag: str, lo: float, hi: float, lo_open: bool = False) -> Callable[[str], Any]:
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


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if args.grid is not None:
        set_dotted(o, "grid.axes", _list_of(str, "--grid")(args.grid))
    for flag, key, kind in (
        ("alphas", "grid.alphas", float),
        ("temperatures", "grid.temperatures", float),
        ("seeds", "grid.seeds", int),
        ("methods", "methods", str),
    ):
        val = getattr(args, flag)
        if val is not None:
            set_dotted(o, key, _list_of(kind, f"--{flag}")(val))
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr")):
        val = getattr(args, flag)
        if val is not None:
            set_dotted(o, f"teacher.{key}", val)
            set_dotted(o, f"student.{key}", val)
    if args.kd_lambda is not None:
        set_dotted(o, "kd.lambda", args.kd_lambda)
    if args.no_t_squared:
        set_dotted(o, "kd.t_squared", False)
    if args.no_baseline:
        o["baseline"] = False
    if args.no_fuse:
        o["fuse"] = False
    for flag, key in (
        ("data_root", "data.root"),
        ("init_checkpoint", "teacher.init_checkpoint"),
        ("student_init_checkpoint", "student.init_checkpoint"),
        ("teacher_checkpoint", "teacher.checkpoint"),
    ):
        val = getattr(args, flag)
        if val is not None:
            set_dotted(o, key, str(Path(val).absolute()))
    for flag in ("pair", "executor", "jobs", "device", "nproc_per_node", "num_workers", "per_gpu", "threads"):
        val = getattr(args, flag)
        if val is not None:
            o[flag] = val
    if args.gpus is not None:
        o["gpus"] = ",".join(parse_gpus(args.gpus))
    if args.nproc_per_node and args.nproc_per_node > 1 and args.executor is None:
        o["executor"] = "torchrun"
    for flag in ("compile", "channels_last"):
        if getattr(args, flag):
            o[flag] = True
    if args.loggers is not None:
        set_dotted(o, "logging.loggers", _list_of(str, "--loggers")(args.loggers))
    if args.log_format is not None:
        set_dotted(o, "logging.format", args.log_format)
    for item in args.set or []:
        key, value = parse_override(item)
        set_dotted(o, key, value)
    return o


def _profile_layer(path: str, executor: str | None) -> tuple[str, dict[str, Any]]:
    """``--runner-profile FILE``: the config section of ``executor`` (default: the one registered executor
    that has a section, the slurm executor), as a config layer that also selects the executor."""
    if executor is None:
        with_section = [n for n, cls in EXECUTORS.items() if getattr(cls, "config_section", None)]
        if len(with_section) != 1:
            raise UsageError(f"--runner-profile needs --executor (executors with a profile: {', '.join(with_section)})")
        executor = with_section[0]
    section = getattr(EXECUTORS.get(executor), "config_section", None)
    if section is None:
        raise UsageError(f"executor {executor} takes no --runner-profile")
    raw = load_yaml(path)
    try:
        section.check(raw)  # checked here, to name the file in errors
    except UsageError as exc:
        raise UsageError(f"{exc} (runner profile {path})") from None
    return f"runner profile {path}", {"executor": executor, executor: raw}


def _resolve(args: argparse.Namespace, check_executor: bool = True) -> Resolved:
    """The run's config from the command line: one call into the resolver (``runners.grid.resolve``)."""
    return resolve(
        args.task,
        load_yaml(args.config) if args.config else {},
        _run_overrides(args),
        file_label=f"config {args.config}",
        check_executor=check_executor,
        profile=_profile_layer(args.runner_profile, args.executor) if getattr(args, "runner_profile", None) else None,
        wait=bool(getattr(args, "wait", False)),
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``--log-format json`` (or ``logging.format: json``): every line on stdout and stderr is a JSON object, from a
    ``start`` event to a ``summary`` event (also when every cell is reused, or the run stops on bad input)."""
    try:
        cfg = _resolve(args).cfg
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
            if isinstance(exc, OSError) and not _one_line_os_error(exc):
                raise
            text = (
                f"{exc.filename}: {exc.strerror}" if isinstance(exc, (IsADirectoryError, NotADirectoryError)) else exc
            )
            event("error", text=str(text))
            event("summary", ok=False, error=str(text), out=str(out))
            return 2


def _one_line_os_error(exc: OSError) -> bool:
    """An OSError that is the input's or the machine's (a folder where a file goes, a full disk): one line."""
    import errno

    return isinstance(exc, (IsADirectoryError, NotADirectoryError)) or exc.errno == errno.ENOSPC


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
            summary = run_grid(cfg, out, progress=not args.no_progress)
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


def cmd_config(args: argparse.Namespace) -> int:
    print(describe_config(_resolve(args, check_executor=False)), end="")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    resolved = _resolve(args, check_executor=False)
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


def _runs_dir(args: argparse.Namespace) -> Path:
    runs = Path(args.runs)
    if not runs.is_dir():
        raise UsageError(f"runs directory {runs} does not exist")
    return runs


def _check_outputs(named: str | None, paths: list[Path], several: str = "") -> None:
    """Before a command works: can it write each of its output files (``store.check_output``)? ``named``: the
    --out the user gave (None: the defaults inside RUNS, never followed through a link); ``several``: what a
    command that writes several files writes, where ``--out -`` (stdout) cannot be."""
    if named == store.STDOUT and several:
        raise UsageError(f"--out -: this command writes {several}: give a file name, not - (stdout)")
    for path in paths:
        store.check_output(path, "--out" if named else None, follow=bool(named))


def _warn(problems: list[str]) -> None:
    """The results a command skipped (unreadable result.json...), a ``warning:`` line each on stderr."""
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    runs = _runs_dir(args)
    problems: list[str] = []
    rows = collect(runs, args.select, problems)
    _warn(problems)
    if not rows:
        raise UsageError(f"no finished cells under {runs}")
    out = Path(args.out) if args.out else runs / "leaderboard"
    _check_outputs(args.out, output_paths(out), "OUT.csv, OUT.md and OUT_claims.csv")
    csv_path, md = write_outputs(rows, out, follow=bool(args.out))
    print(md, end="")
    print(f"wrote {csv_path}, .md and _claims.csv ({len(rows)} cells)", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    runs = _runs_dir(args)
    problems: list[str] = []
    df = results.load(runs, args.select, problems)
    _warn(problems)
    if df.empty:
        raise UsageError(f"no finished cells under {runs}")
    out = args.out or runs / f"results.{args.format}"
    _check_outputs(args.out, [out])
    results.export(df, out, args.format, follow=bool(args.out))
    where = "stdout" if str(out) == store.STDOUT else out
    print(f"wrote {where} ({len(df)} cells, {len(df.columns)} columns)", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    runs = _runs_dir(args)
    out = Path(args.out) if args.out else runs / "compare"
    if out.suffix in (".md", ".csv"):
        out = out.with_suffix("")
    _check_outputs(args.out, compare_paths(out), "OUT.md, OUT.csv, OUT_ls.csv and figures")
    problems: list[str] = []
    text, paths = compare(
        runs,
        out,
        baseline=args.baseline,
        metric=args.metric,
        task=args.task,
        select=args.select,
        problems=problems,
        follow=bool(args.out),
    )
    _warn(problems)
    print(text, end="")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    split = _list_of(str, "--target")
    problems: list[str] = []
    try:
        rows = analyze(
            Path(args.runs),
            split(args.target),
            similar=split(args.similar) if args.similar else None,
            dissimilar=split(args.dissimilar) if args.dissimilar else None,
            t1=args.t1,
            t2=args.t2,
            task=args.task,
            method=args.method,
            seed=args.seed,
            limit=args.limit,
            problems=problems,
            hierarchy=args.hierarchy,
        )
    finally:  # the results it skipped, also when what is left cannot be analysed
        _warn(problems)
    out = (
        Path(args.out)
        if args.out
        else Path(args.runs) / rows[0]["task"] / "analysis" / f"eta_T{args.t1:g}-T{args.t2:g}"
    )
    _check_outputs(args.out, list(store.csv_md_paths(out)), "OUT.csv and OUT.md")
    csv_path, md = write_report(rows, out, follow=bool(args.out))
    print(md, end="")
    print(f"wrote {csv_path} and .md", file=sys.stderr)
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    classes = _list_of(str, "--classes")(args.classes) if args.classes else []
    name = "_".join(classes) if classes else "default"
    problems: list[str] = []
    try:
        task = RunIndex(Path(args.runs), args.task, problems).task
    finally:
        _warn(problems)
    out = args.out or Path(args.runs) / task / "analysis" / f"projection_{name}_{args.split}.png"
    _check_outputs(args.out, [out])
    path, (w, h) = visualize(
        Path(args.runs),
        classes,
        out,
        split=args.split,
        task=task,
        method=args.method,
        seed=args.seed,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        follow=bool(args.out),
    )
    to_stdout = bool(args.out) and store.output_kind(args.out) == "stdout"  # the note goes to stderr then
    print(f"wrote {'stdout' if to_stdout else path} ({w}x{h} px)", file=sys.stderr if to_stdout else sys.stdout)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    if args.out:
        check_writable_dir(Path(args.out))
    problems: list[str] = []
    paths = plot_curves(_runs_dir(args), Path(args.out) if args.out else None, task=args.task, problems=problems)
    _warn(problems)
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    runs = _runs_dir(args)
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


def cmd_report(args: argparse.Namespace) -> int:
    runs = _runs_dir(args)
    out = args.out or runs / "report.html"
    _check_outputs(args.out, [out])
    kind, size = write_html_report(runs, out, follow=bool(args.out))
    if kind == "stdout":  # the page is on stdout: the note goes to stderr
        print(f"wrote the report to stdout ({size / 1e3:.0f} kB)", file=sys.stderr)
    else:
        print(f"wrote {out} ({size / 1e3:.0f} kB)")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    require_cuda({"device": args.device})
    cell_dir = find_cell(args.run, args.runs if args.cell else None, args.cell)
    if args.output:  # before translating, not after
        store.check_output(args.output, "-o/--output")
    device = resolve_device({"device": args.device})
    lines = read_text_lines(args.input)
    cell = load_cell(cell_dir, args.weights, device)
    gen = cell.cfg["generation"]
    for flag, key in (
        ("beam", "beam"),
        ("lenpen", "lenpen"),
        ("max_len_a", "max_len_a"),
        ("max_len_b", "max_len_b"),
        ("max_sentences", "max_sentences"),
    ):
        val = getattr(args, flag)
        if val is not None:
            if (flag in ("beam", "max_len_b", "max_sentences") and val < 1) or (flag == "max_len_a" and val < 0):
                raise UsageError(
                    f"--{flag.replace('_', '-')} must be {'>= 0' if flag == 'max_len_a' else '>= 1'}, got {val:g}"
                )
            gen[key] = val
    out, cut = translate_lines(cell, lines, device, progress=not args.no_progress)
    text = "".join(line + "\n" for line in out)
    if args.output:
        store.write_output(args.output, lambda f: f.write(text.encode("utf-8")))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    where = f"epoch {cell.epoch}" if cell.epoch is not None else "final weights"
    note = f"; {cut} line(s) cut to the model's longest input" if cut else ""
    if cell.weights != args.weights:
        where += f"; the cell predates {args.weights} weights"
    print(
        f"translated {len(lines)} line(s) with {cell_dir.name} ({cell.weights} weights, {where}) on {device}, "
        f"beam {gen['beam']}, lenpen {gen['lenpen']:g}{note}",
        file=sys.stderr,
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    for path in (args.ref, args.hyp):  # a missing file is the first thing to say, before the language
        if not Path(path).is_file():
            raise UsageError(f"cannot read {path}: no such file")
    lang = args.lang or Path(args.ref).suffix.lstrip(".")
    if not (lang.isalpha() and 2 <= len(lang) <= 3) or (not args.lang and len(lang) != 2):  # ref.txt is not 'txt'
        raise UsageError(
            f"give --lang (the target language, for the Moses tokeniser of bleu_tok): {args.ref} has no "
            "language suffix such as .de"
        )
    metrics, sig, n = score_files(args.ref, args.hyp, lang)
    for key in ("bleu", "chrf", "bleu_tok"):
        print(f"{key:<9}{metrics[key]:8.4f}  {sig[key]}")
    print(f"{n} segment(s)", file=sys.stderr)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    for name, cls in METHODS.items():
        if name == TEACHER_METHOD:
            continue
        axes = "alpha x T" if cls.uses_temperature else "alpha (no T axis)"
        kinds = "/".join(cls.task_kinds)
        print(f"{name:<10} {axes:<24} {kinds:<26} {cls.description}")
        print(f"{'':<10} needs: {cls.needs.describe()}")
    print("FEATURE+kd (e.g. crd+kd): a feature method plus compose.kd_weight*T^2*KL on the logits (alpha x T)")
    for tname in task_names():
        task = get_task(tname)
        per_pair, shared = task.pair_settings()
        if not per_pair and not shared:
            continue
        print(f"\n{tname} --pair NAME: method settings per pair ({task.pairs_source()}, each value cited):")
        for m, keys in per_pair.items():
            print(f"  {m:<10} per pair: {', '.join(keys)}")
        for m, why in shared.items():
            print(f"  {m:<10} {' '.join(why.split())}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    for name in task_names():
        task = get_task(name)
        print(f"{name:<18} {task.description}")
        pairs = task.pairs()
        if pairs:
            print(f"{'':<18} pairs (--pair): {', '.join(pairs)}")
    return 0


def _add_config_options(r: argparse.ArgumentParser) -> None:
    """The options that make up a run's config (shared by run, config and check-data)."""
    r.add_argument(
        "--task",
        help=f"task name (default: {default_text(RUN, 'task')}, or the config file's 'task'); see 'lskd-bench tasks'",
    )
    r.add_argument("--config", help="YAML config merged over the task's defaults")
    r.add_argument(
        "--pair",
        help="teacher-student pair whose published recipe (archs, lr, method hyper-parameters) "
        "is applied over the task's, e.g. resnet32x4-resnet8x4 (cifar100); 'lskd-bench tasks' lists them",
    )
    r.add_argument(
        "--grid",
        help=f"swept axes, comma-separated from {{alpha,T}} (default: {default_text(RUN, 'grid.axes')}); "
        f"an axis not swept takes grid.fixed (alpha {default_text(RUN, 'grid.fixed.alpha')}, "
        f"T {default_text(RUN, 'grid.fixed.T')})",
    )
    r.add_argument("--alphas", help=f"teacher label-smoothing values (default: {default_text(RUN, 'grid.alphas')})")
    r.add_argument("--temperatures", help=f"KD temperatures (default: {default_text(RUN, 'grid.temperatures')})")
    r.add_argument("--seeds", help="student seeds (default: the task's; 'lskd-bench config --task NAME' shows them)")
    r.add_argument(
        "--methods",
        help=f"KD methods to train students with, comma-separated (default: {default_text(RUN, 'methods')}); "
        "see 'lskd-bench methods'",
    )
    r.add_argument(
        "--data-root",
        help="data directory (ImageFolder for imagenet*, CUB_200_2011/ for cub200*, "
        "the raw IWSLT release or train/valid/test.<lang> for iwslt_*)",
    )
    r.add_argument(
        "--init-checkpoint", help="local weights to start the teacher from (e.g. ImageNet-pretrained for CUB)"
    )
    r.add_argument("--student-init-checkpoint", help="local weights to start the students from")
    r.add_argument(
        "--teacher-checkpoint", help="an already trained teacher (one alpha): evaluated and distilled, not trained"
    )
    r.add_argument("--epochs", type=int, help="epochs for teacher and student")
    r.add_argument("--batch-size", type=int, help="batch size for teacher and student")
    r.add_argument("--lr", type=float, help="base learning rate for teacher and student")
    r.add_argument(
        "--kd-lambda",
        type=float,
        help=f"kd method: weight of the KD term (default {default_text(HintonKD.params, 'lambda')}: pure KD, "
        "the paper's and the official code's objective)",
    )
    r.add_argument("--no-t-squared", action="store_true", help="do not scale the KD term by T^2")
    r.add_argument("--no-baseline", action="store_true", help="skip the no-KD baseline student")
    r.add_argument(
        "--executor",
        help="where cells train: auto (default: subprocess over every GPU on a machine with "
        "several, else local), local (in this process), subprocess, torchrun or slurm",
    )
    r.add_argument(
        "--runner-profile",
        help="executor profile YAML (runners/slurm.yaml: partition, GPUs, time...); implies --executor slurm",
    )
    r.add_argument("--wait", action="store_true", help="slurm: block with a progress bar until every cell settled")
    r.add_argument(
        "--jobs",
        type=int,
        help="at most N units at once (subprocess/torchrun; default: one per GPU slot, 1 on the CPU)",
    )
    r.add_argument(
        "--gpus",
        help="GPU ids to spread the grid over, comma-separated, e.g. 0,1,2,3 (default: "
        "CUDA_VISIBLE_DEVICES if set, else every GPU); each unit's worker sees only its own",
    )
    r.add_argument(
        "--per-gpu",
        type=int,
        help=f"units sharing one GPU at a time (default {default_text(RUN, 'per_gpu')}; small models: 2-8)",
    )
    r.add_argument(
        "--device",
        help="auto (default: cuda if available, except for models too small to gain from it, "
        "such as the NMT demo's, which stay on the CPU and say so), cpu or cuda",
    )
    r.add_argument(
        "--nproc-per-node",
        type=int,
        help="train each unit with DDP over N processes on N GPUs of its own "
        "(torchrun executor; units run side by side while GPUs are free)",
    )
    r.add_argument("--num-workers", type=int, help="data-loader worker processes (image tasks)")
    r.add_argument(
        "--threads",
        type=int,
        help="intra-op CPU threads per training process (default: the CPUs this "
        "process may use, divided among the units training at once x --nproc-per-node)",
    )
    r.add_argument("--compile", action="store_true", help="torch.compile the student/teacher being trained")
    r.add_argument("--channels-last", action="store_true", help="channels_last memory format on CUDA")
    r.add_argument(
        "--no-fuse",
        action="store_true",
        help="train every cell in its own data pass (default: the students "
        "of one teacher share each batch and the teacher forward)",
    )
    r.add_argument(
        "--loggers",
        help="experiment trackers, one run per cell, comma-separated: tensorboard, wandb, "
        "mlflow or a plugin (logging.loggers; W&B and MLflow read their own WANDB_* / MLFLOW_* variables)",
    )
    r.add_argument(
        "--log-format",
        choices=("auto", "bar", "plain", "json"),
        help="progress output (logging.format): bar, plain lines for batch logs (every logging.interval_s, "
        f"default {default_text(RUN, 'logging.interval_s')} s), json (one object a line); "
        f"{default_text(RUN, 'logging.format')} (default): bar on a terminal, else plain",
    )
    r.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config value, e.g. --set student.epochs=5 (repeatable)"
    )


def _parser_run(sub) -> None:

    r = sub.add_parser(
        "run",
        help="train the teacher/student grid of a task (resumable)",
        description="Train teachers (one per alpha, label smoothing), KD students (one per alpha x T x seed) "
        "and a no-KD baseline student per seed. Finished cells are reused; an interrupted run resumes. "
        "Exit codes: 0 all cells finished, 1 some cells failed (see error.json; re-run to retry), "
        "2 bad input (nothing trained), 130/143 stopped by SIGINT/SIGTERM (run again to resume). Damaged files in the "
        "run directory are repaired, one 'repaired:' line each.",
    )
    _add_config_options(r)
    r.add_argument("--out", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    r.add_argument("--dry-run", action="store_true", help="check the data layout, list the cell directories and exit")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)


def _parser_leaderboard(sub) -> None:
    lb = sub.add_parser("leaderboard", help="CSV + markdown leaderboard of finished cells")
    lb.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    lb.add_argument(
        "--out",
        help="output FILE: writes FILE.csv, FILE.md and FILE_claims.csv (the claims' verdicts, "
        "differences, Welch p-values and n) (default: RUNS/leaderboard)",
    )
    lb.add_argument(
        "--select",
        default="selected",
        choices=("selected", "last", "best"),
        help="metrics of the selected epoch (default: image tasks the best on val, which is their test set, as "
        "the paper; translation the epoch selected on the valid split, test metrics) or of the last epoch; "
        "best: the same as selected. A (paper P, ±D) delta is always at the epoch the paper reports (its best)",
    )
    lb.set_defaults(func=cmd_leaderboard)


def _parser_export(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="every finished cell as one table row (CSV, Parquet or JSON Lines)",
        description="One row per finished cell: task, role, archs, method, teacher alpha, T, seed, every "
        "metric, the selected epoch, the teacher epoch a student used, cell hash, the config keys of a cell's "
        "hash that differ between the cells (kd.lambda, data.*, train.*) and environment columns "
        "(in Python: lskd_bench.results.load(RUNS), a pandas DataFrame). In CSV, a text cell that starts with "
        "= + - @, a tab or a carriage return gets a leading ' (OWASP's advice against formula injection: a "
        "spreadsheet shows it as text); numbers are written as numbers. Parquet and JSON Lines keep every "
        "value as it is.",
    )
    ex.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    ex.add_argument(
        "--format",
        default="csv",
        choices=results.FORMATS,
        help="csv (default; a text cell that would start a spreadsheet formula gets a leading '), "
        "parquet (pyarrow) or jsonl",
    )
    ex.add_argument(
        "--out",
        help="output file; - for stdout; a device or FIFO (/dev/null, a link to one) is written to, not replaced "
        "(default: RUNS/results.FORMAT)",
    )
    ex.add_argument(
        "--select",
        default="selected",
        choices=("selected", "last", "best"),
        help="metrics under their plain names: the selected epoch's (default) or the last epoch's; best: the same "
        "as selected",
    )
    ex.set_defaults(func=cmd_export)


def _parser_compare(sub) -> None:
    cp = sub.add_parser(
        "compare",
        help="KD methods side by side vs a baseline method: mean ± std over seeds, Welch t-test",
        description="One table per task: a row per KD method (plus teacher and no-KD student), a column "
        "per (alpha, T) cell, mean ± std over seeds, difference to the baseline method and Welch's t-test "
        "over seeds; a second table asks whether the LS teacher beats alpha = 0 at each T; where the run's pairs "
        "have published numbers (mdistiller, RepDistiller...), a third sets each beside ours at the epoch its "
        "source reports (RepDistiller the last, mdistiller's own runs the best: the table names the rule); a PNG "
        "of the metric vs T per method. Writes OUT.md, OUT.csv, OUT_ls.csv, OUT_reference.csv and OUT_<task>.png.",
    )
    cp.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    cp.add_argument(
        "--baseline",
        help="the method the others are compared with (default: kd, or the first method a task ran when it ran no kd)",
    )
    cp.add_argument("--metric", help="metric to compare (default: the task's primary: top1, bleu)")
    cp.add_argument("--task", help="only this task")
    cp.add_argument(
        "--select",
        default="selected",
        choices=("selected", "last", "best"),
        help="epoch of tables 1 and 2: selected (default; translation: selected on the valid split) or last; best: "
        "the same as selected. The published references always use their source's epoch (last or best), whatever "
        "this says",
    )
    cp.add_argument("--out", help="output prefix (default: RUNS/compare)")
    cp.set_defaults(func=cmd_compare)


def _parser_analyze(sub) -> None:
    an = sub.add_parser(
        "analyze",
        help="diffusion index eta of the KD students' penultimate features",
        description="eta(T1,T2; target, S) = mean over k in S of [d(c_t(T2), c_k(T2)) - d(c_t(T1), c_k(T1))] "
        "/ d(c_t(T1), c_k(T1)), c = class centroids of the student's penultimate features, d = Euclidean; "
        "per teacher alpha, on train and val features. Systematic diffusion: eta(S1) < 0 and eta(S2) > 0.",
    )
    an.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    an.add_argument("--target", required=True, help="target class name(s) or index(es), comma-separated")
    an.add_argument("--similar", help="S1: semantically similar classes (default: from the task's class hierarchy)")
    an.add_argument("--dissimilar", help="S2: dissimilar classes (default: from the task's class hierarchy)")
    an.add_argument(
        "--hierarchy",
        metavar="FILE",
        help="class hierarchy the default S1 / S2 are chosen from, over the task's (and imagefolder's data.hierarchy): "
        "'child parent' lines or a JSON mapping",
    )
    an.add_argument(
        "--t1", type=_number(float, "--t1", 0, 1e6, lo_open=True), default=1.0, help="lower temperature (default 1)"
    )
    an.add_argument(
        "--t2", type=_number(float, "--t2", 0, 1e6, lo_open=True), default=3.0, help="higher temperature (default 3)"
    )
    an.add_argument(
        "--limit",
        type=_number(int, "--limit", 1, 2**31 - 1),
        help="at most this many classes in S1 and S2 when chosen from the hierarchy",
    )
    an.add_argument("--task", help="task, when the run directory holds several")
    an.add_argument("--method", default="kd", help="KD method of the students (default kd)")
    an.add_argument("--seed", type=_number(int, "--seed", 0, 2**31 - 1), help="student seed (default: the lowest)")
    an.add_argument(
        "--out", help="output FILE: writes FILE.csv and FILE.md (default: RUNS/<task>/analysis/eta_T<t1>-T<t2>)"
    )
    an.set_defaults(func=cmd_analyze)


def _parser_visualize(sub) -> None:
    vz = sub.add_parser(
        "visualize",
        help="penultimate-layer projection plots (PNG)",
        description="The official algorithm: features with a constant 1 appended, orthonormal basis of the "
        "3 classes' final-layer rows [w | b] (QR), features and centroids projected onto it, PCA to 2-D "
        "fitted on the train projections + centroids and reused for val; one panel per teacher alpha x "
        "(teacher, student at each T).",
    )
    vz.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    vz.add_argument(
        "--classes",
        help="exactly three class names or indexes, comma-separated (default: the task's; "
        "ImageNet: miniature poodle, standard poodle, submarine, as the paper)",
    )
    vz.add_argument("--split", default="train", choices=("train", "val"), help="features of this split (default train)")
    vz.add_argument(
        "--per-class",
        type=_number(int, "--per-class", 1, 2**31 - 1),
        default=150,
        help="first N train samples per class (default 150, as the official code)",
    )
    vz.add_argument(
        "--val-per-class",
        type=_number(int, "--val-per-class", 1, 2**31 - 1),
        default=50,
        help="first N val samples per class (default 50, as the official code)",
    )
    vz.add_argument("--task", help="task, when the run directory holds several")
    vz.add_argument("--method", default="kd", help="KD method of the students (default kd)")
    vz.add_argument("--seed", type=_number(int, "--seed", 0, 2**31 - 1), help="student seed (default: the lowest)")
    vz.add_argument("--out", help="PNG path (default: RUNS/<task>/analysis/projection_<A>_<B>_<C>_<split>.png)")
    vz.set_defaults(func=cmd_visualize)


def _parser_plot(sub) -> None:
    pl = sub.add_parser(
        "plot",
        help="training curves (loss and validation metric vs epoch) of every finished cell (PNG)",
        description="One PNG per task and group (the teachers of an architecture; the students of one "
        "method and seed, with the no-KD student in black), from the history in each result.json: "
        "training loss and the task's metric against epoch; colour: alpha, line style: T. Live "
        "curves: run --loggers tensorboard, then tensorboard --logdir RUNS (or wandb, mlflow).",
    )
    pl.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    pl.add_argument("--task", help="only this task")
    pl.add_argument("--out", help="folder (default: RUNS/<task>/curves; else OUT/<task>/)")
    pl.set_defaults(func=cmd_plot)


def _parser_config(sub) -> None:
    c = sub.add_parser(
        "config",
        help="print the resolved config of a run, with where each value came from",
        description="Resolve the config as 'run' would (schema defaults <- task recipe <- --config FILE <- "
        "flags and --set) and print every key with its value and source.",
    )
    _add_config_options(c)
    c.set_defaults(func=cmd_config)


def _parser_check_data(sub) -> None:
    cd = sub.add_parser(
        "check-data",
        help="scan a task's data root: layout, every file decoded, duplicates",
        description="Check the data root of a task before training: the layout (class folders, CUB index "
        "files, IWSLT line counts), then decode every file with a progress bar. Exit 0 when clean, 2 with "
        "one line per problem otherwise.",
    )
    _add_config_options(cd)
    cd.add_argument("--no-progress", action="store_true", help="no progress bar")
    cd.set_defaults(func=cmd_check_data)


def _parser_status(sub) -> None:
    st = sub.add_parser(
        "status",
        help="per cell: finished / running / queued / failed / pending, with the cells of the newest run not "
        "started yet (Slurm job ids, log tails)",
    )
    st.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    st.add_argument("--task", help="only this task")
    st.set_defaults(func=cmd_status)


def _parser_translate(sub) -> None:
    tr = sub.add_parser(
        "translate",
        help="translate a file or stdin with a finished translation cell",
        description="Rebuild a finished translation cell from its result.json (config, weights, spm.model "
        "beside them) and translate one sentence per input line: detokenised, one output line per input line "
        "(an empty line stays empty), in input order; beam search batched as in evaluation, on CUDA when "
        "available. The weights of the selected epoch by default (the leaderboard's number), or --weights last.",
    )
    tr.add_argument("--run", help="the cell directory, RUNS/TASK/CELL-HASH")
    tr.add_argument(
        "--runs", default=DEFAULT_RUNS, help=f"run directory to look --cell up in (default: {DEFAULT_RUNS})"
    )
    tr.add_argument("--cell", help="cell name, with or without -HASH (e.g. teacher_transformer_tiny_a0.1_s0)")
    tr.add_argument("--input", "-i", help="UTF-8 text file, one sentence a line (default: stdin)")
    tr.add_argument(
        "--output", "-o", help="write the translations here (default, or -: stdout; a device or FIFO is written to)"
    )
    tr.add_argument(
        "--weights",
        default="selected",
        choices=("selected", "last"),
        help="weights of the selected epoch (default) or of the last epoch",
    )
    tr.add_argument(
        "--beam", type=_number(int, "--beam", 1, 1024), help="beam size (default: the cell's generation.beam)"
    )
    tr.add_argument(
        "--lenpen",
        type=_number(float, "--lenpen", -1e3, 1e3),
        help="length penalty (default: the cell's generation.lenpen)",
    )
    tr.add_argument(
        "--max-len-a",
        type=_number(float, "--max-len-a", 0, 1e3),
        help="max output length = a * source length + b (default: the cell's)",
    )
    tr.add_argument(
        "--max-len-b",
        type=_number(int, "--max-len-b", 1, 2**31 - 1),
        help="max output length = a * source length + b (default: the cell's)",
    )
    tr.add_argument(
        "--max-sentences",
        type=_number(int, "--max-sentences", 1, 2**31 - 1),
        help="sentences decoded at once (default: the cell's)",
    )
    tr.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto (default: CUDA when available), cpu or cuda",
    )
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_translate)


def _parser_score(sub) -> None:
    sc = sub.add_parser(
        "score",
        help="sacreBLEU BLEU, chrF2 and tokenised BLEU of a hypothesis file against references",
        description="Score a hypothesis file against a reference file (one segment a line) exactly as the "
        "runner scores the test split: detokenised sacreBLEU (13a), chrF2, and BLEU over Moses-tokenised "
        "lower-cased text; prints each score with its signature. A cell's test.hyp.selected.<lang> against "
        "its test.ref.<lang> gives the numbers stored in result.json.",
    )
    sc.add_argument("--ref", required=True, help="reference file, e.g. RUNS/TASK/CELL/test.ref.de")
    sc.add_argument("--hyp", required=True, help="hypothesis file, e.g. RUNS/TASK/CELL/test.hyp.selected.de")
    sc.add_argument("--lang", help="target language for the Moses tokeniser (default: the reference file's suffix)")
    sc.set_defaults(func=cmd_score)


def _parser_methods(sub) -> None:
    mt = sub.add_parser("methods", help="list the KD methods: grid axes, task kinds, objective")
    mt.set_defaults(func=cmd_methods)


def _parser_report(sub) -> None:
    rp = sub.add_parser(
        "report",
        help="one self-contained HTML page of a run directory (tables, heatmaps, curves)",
        description="One static HTML file, opened offline in any browser (CSS, JavaScript and images "
        "inline, no network): per-cell status, the leaderboard with the paper's numbers and deltas, "
        "per task the alpha x T heatmap of the students and the methods' comparison with its tests, "
        "the training curves and the environment. Click a column header to sort a table.",
    )
    rp.add_argument("--runs", default=DEFAULT_RUNS, help=f"run directory (default: {DEFAULT_RUNS})")
    rp.add_argument(
        "--out",
        help="HTML file; - for stdout; a device or FIFO (/dev/null, a link to one) is written to, not replaced "
        "(default: RUNS/report.html)",
    )
    rp.set_defaults(func=cmd_report)


def _parser_tasks(sub) -> None:
    t = sub.add_parser("tasks", help="list registered tasks")
    t.set_defaults(func=cmd_tasks)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lskd-bench", description="Label smoothing x knowledge distillation benchmark suite.")
    p.add_argument("--version", action="version", version=f"lskd-bench {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    for add in (
        _parser_run,
        _parser_leaderboard,
        _parser_export,
        _parser_compare,
        _parser_analyze,
        _parser_visualize,
        _parser_plot,
        _parser_config,
        _parser_check_data,
        _parser_status,
        _parser_report,
        _parser_translate,
        _parser_score,
        _parser_methods,
        _parser_tasks,
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
        import errno

        if exc.errno != errno.ENOSPC:
            raise
        print(f"lskd-bench: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
