"""Train one unit (a cell, or a fused group of cells) of a grid in its own process.

Used by the ``subprocess`` and ``torchrun`` executors; under torchrun every rank runs it and rank 0 holds
the cells' locks (``units.train_unit``). The parent reads the outcome from the run directory (result.json /
error.json). Exit code 2: a data error (bad input for the whole grid).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..errors import DataError, Interrupted, raise_on_sigterm
from ..tasks import get_task
from .cells import Cell, plan_cells
from .progress import json_stream, output_format
from .units import UnitContext, distributed, read_spec, train_unit


def _say(notes: list[tuple[Cell, str]]) -> None:
    """Repair lines ('repaired: ...') on stderr, which the parent shows."""
    for _, line in notes:
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lskd_bench.runners.worker")
    ap.add_argument("--spec", required=True, help="run spec JSON written by the grid runner")
    ap.add_argument("--cells", "--cell", required=True, help="comma-separated hashes of the cells to train together")
    args = ap.parse_args(argv)
    spec = read_spec(args.spec)
    if output_format(spec["config"]) == "json":  # every line the parent passes on is a JSON object too
        with json_stream():
            return _train(args, spec)
    return _train(args, spec)


def _train(args: argparse.Namespace, spec: dict) -> int:
    cfg = spec["config"]
    by_hash = {c.hash: c for c in plan_cells(cfg)}
    unit = [by_hash[h] for h in args.cells.split(",")]
    raise_on_sigterm()  # SIGTERM (Slurm, timeout) unwinds like SIGINT: locks released, cells recorded interrupted
    if cfg["threads"]:  # else OMP_NUM_THREADS, set by the executor for this worker's share of the CPUs
        torch.set_num_threads(int(cfg["threads"]))
    ctx = UnitContext(get_task(cfg["task"]), cfg, Path(spec["out"]), progress=bool(spec["progress"]))
    with distributed(cfg):  # launched by torchrun: one process per GPU (gloo on the CPU)
        try:
            done = train_unit(ctx, unit, claimed=_say)  # the claim's repair lines at once: said even if it stops
        except DataError as exc:
            print(f"lskd-bench: error: {exc}", file=sys.stderr)
            return 2
        except Interrupted as exc:
            return exc.code
    _say([(o.cell, line) for o in done.outcomes for line in o.notes])  # the cells' own (a checkpoint moved aside)
    return 0


if __name__ == "__main__":
    sys.exit(main())
