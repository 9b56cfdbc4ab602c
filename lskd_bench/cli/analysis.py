"""``lskd-bench analyze``, ``visualize`` and ``plot``: the diffusion index, projection plots and training curves
of a run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import store
from ..analysis.curves import plot_curves
from ..analysis.plot import visualize
from ..analysis.report import analyze, write_report
from ..analysis.runs import RunIndex
from ..store import check_writable_dir
from .common import DEFAULT_RUNS, check_outputs, list_of, number, runs_dir, warn


def cmd_analyze(args: argparse.Namespace) -> int:
    split = list_of(str, "--target")
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
        warn(problems)
    out = (
        Path(args.out)
        if args.out
        else Path(args.runs) / rows[0]["task"] / "analysis" / f"eta_T{args.t1:g}-T{args.t2:g}"
    )
    check_outputs(args.out, list(store.csv_md_paths(out)), "OUT.csv and OUT.md")
    csv_path, md = write_report(rows, out, follow=bool(args.out))
    print(md, end="")
    print(f"wrote {csv_path} and .md", file=sys.stderr)
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    classes = list_of(str, "--classes")(args.classes) if args.classes else []
    name = "_".join(classes) if classes else "default"
    problems: list[str] = []
    try:
        task = RunIndex(Path(args.runs), args.task, problems).task
    finally:
        warn(problems)
    out = args.out or Path(args.runs) / task / "analysis" / f"projection_{name}_{args.split}.png"
    check_outputs(args.out, [out])
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
    paths = plot_curves(runs_dir(args), Path(args.out) if args.out else None, task=args.task, problems=problems)
    warn(problems)
    for p in paths:
        print(f"wrote {p}")
    return 0


def add_analyze(sub) -> None:
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
        "--t1", type=number(float, "--t1", 0, 1e6, lo_open=True), default=1.0, help="lower temperature (default 1)"
    )
    an.add_argument(
        "--t2", type=number(float, "--t2", 0, 1e6, lo_open=True), default=3.0, help="higher temperature (default 3)"
    )
    an.add_argument(
        "--limit",
        type=number(int, "--limit", 1, 2**31 - 1),
        help="at most this many classes in S1 and S2 when chosen from the hierarchy",
    )
    an.add_argument("--task", help="task, when the run directory holds several")
    an.add_argument("--method", default="kd", help="KD method of the students (default kd)")
    an.add_argument("--seed", type=number(int, "--seed", 0, 2**31 - 1), help="student seed (default: the lowest)")
    an.add_argument(
        "--out", help="output FILE: writes FILE.csv and FILE.md (default: RUNS/<task>/analysis/eta_T<t1>-T<t2>)"
    )
    an.set_defaults(func=cmd_analyze)


def add_visualize(sub) -> None:
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
        type=number(int, "--per-class", 1, 2**31 - 1),
        default=150,
        help="first N train samples per class (default 150, as the official code)",
    )
    vz.add_argument(
        "--val-per-class",
        type=number(int, "--val-per-class", 1, 2**31 - 1),
        default=50,
        help="first N val samples per class (default 50, as the official code)",
    )
    vz.add_argument("--task", help="task, when the run directory holds several")
    vz.add_argument("--method", default="kd", help="KD method of the students (default kd)")
    vz.add_argument("--seed", type=number(int, "--seed", 0, 2**31 - 1), help="student seed (default: the lowest)")
    vz.add_argument("--out", help="PNG path (default: RUNS/<task>/analysis/projection_<A>_<B>_<C>_<split>.png)")
    vz.set_defaults(func=cmd_visualize)


def add_plot(sub) -> None:
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
