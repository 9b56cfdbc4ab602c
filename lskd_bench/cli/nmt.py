"""``lskd-bench translate`` and ``score``: translate with a finished translation cell, score a hypothesis file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import store
from ..errors import UsageError
from ..runners.devices import require_cuda
from ..runners.inference import find_cell, load_cell, read_text_lines, score_files, translate_lines
from ..runners.train import resolve_device
from .common import DEFAULT_RUNS, number


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


def add_translate(sub) -> None:
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
        "--beam", type=number(int, "--beam", 1, 1024), help="beam size (default: the cell's generation.beam)"
    )
    tr.add_argument(
        "--lenpen",
        type=number(float, "--lenpen", -1e3, 1e3),
        help="length penalty (default: the cell's generation.lenpen)",
    )
    tr.add_argument(
        "--max-len-a",
        type=number(float, "--max-len-a", 0, 1e3),
        help="max output length = a * source length + b (default: the cell's)",
    )
    tr.add_argument(
        "--max-len-b",
        type=number(int, "--max-len-b", 1, 2**31 - 1),
        help="max output length = a * source length + b (default: the cell's)",
    )
    tr.add_argument(
        "--max-sentences",
        type=number(int, "--max-sentences", 1, 2**31 - 1),
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


def add_score(sub) -> None:
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
