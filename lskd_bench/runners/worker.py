"""Train one unit (a cell, or a fused group of cells) of a grid in its own process.

Used by the ``subprocess`` and ``torchrun`` executors; under torchrun every rank runs it and rank 0 holds
the cells' locks. The parent reads the outcome from the run directory (result.json / error.json).
Exit code 2: a data error (bad input for the whole grid).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import DataError
from ..tasks import get_task
from .cells import plan_cells
from .executors import claim, read_spec
from .lock import Heartbeat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lskd_bench.runners.worker")
    ap.add_argument("--spec", required=True, help="run spec JSON written by the grid runner")
    ap.add_argument("--cells", "--cell", required=True, help="comma-separated hashes of the cells to train together")
    args = ap.parse_args(argv)
    spec = read_spec(args.spec)
    cfg, out = spec["config"], spec["out"]
    by_hash = {c.hash: c for c in plan_cells(cfg)}
    unit = [by_hash[h] for h in args.cells.split(",")]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    import torch

    from ..errors import Interrupted, raise_on_sigterm

    raise_on_sigterm()
    if cfg.get("threads"):  # else OMP_NUM_THREADS, set by the executor for this worker's share of the CPUs
        torch.set_num_threads(int(cfg["threads"]))

    if world > 1:  # launched by torchrun: one process per GPU (gloo on the CPU)
        backend = "nccl" if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.distributed.init_process_group(backend)
    from pathlib import Path

    from .grid import GridJob, unit_inputs
    from .train import resolve_device, train_group

    job = GridJob(get_task(cfg["task"]), cfg, Path(out), progress=bool(spec.get("progress", False)))
    rank = torch.distributed.get_rank() if world > 1 else 0
    mine, locks = [], []
    if rank == 0:
        mine, locks, _ = claim(job, unit)
    if world > 1:
        box = [[c.hash for c in mine]]
        torch.distributed.broadcast_object_list(box, src=0)
        mine = [by_hash[h] for h in box[0]]
    try:
        if not mine:
            return 0
        with Heartbeat(locks, float(cfg.get("lock", {}).get("heartbeat_s", 10.0))):
            device = resolve_device(cfg)
            if world > 1 and rank != 0:
                torch.distributed.barrier()  # rank 0 builds shared caches (sub-words, teacher targets) first
            data, teacher = unit_inputs(job, mine, device)
            if world > 1 and rank == 0:
                torch.distributed.barrier()
            train_group(job.task, mine, cfg, data, [c.dir(job.out) for c in mine], teacher=teacher, progress=job.progress)
    except DataError as exc:
        print(f"lskd-bench: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        return exc.code
    finally:
        for line in job.repairs:
            print(line, file=sys.stderr)
        for lock in locks:
            lock.release()
        if world > 1:
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
