"""Run the default grid (digits: 2 teachers + 8 KD students + baseline) from scratch; print seconds per cell.

python benchmarks/bench_default_grid.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lskd_bench import store
from lskd_bench.runners.grid import resolve_config, run_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="digits")
    ap.add_argument("--keep", help="run directory to keep (default: a temporary one)")
    args = ap.parse_args()
    cfg = resolve_config(args.task, {}, {})
    print(f"training the default {args.task} grid from scratch (a progress bar per cell group follows)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or tmp)
        t0 = time.perf_counter()
        summary = run_grid(cfg, out, progress=True)
        total = time.perf_counter() - t0
        print(f"{'cell':<40} {'train_s':>8} {'eval_s':>7} {'top1':>7}")
        for cell in summary.cells:
            res = json.loads((cell.dir(out) / store.RESULT).read_text())
            tm = res["timings"]
            print(f"{cell.name:<40} {tm['train_s']:8.2f} {tm['eval_s']:7.2f} {res['metrics']['top1']:7.2f}")
        print(f"cells trained: {len(summary.trained)}, reused: {len(summary.reused)}")
        print(f"total wall seconds (incl. data load and process work): {total:.1f}")


if __name__ == "__main__":
    main()
