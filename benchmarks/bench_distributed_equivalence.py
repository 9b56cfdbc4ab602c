"""Prints the distributed-equivalence matrix: for every method, how far N gloo processes (same global batch) end
from one process after 2 epochs on a digits split (or a tiny translation corpus), killed at the end of epoch 1
and resumed (tests/distributed_worker.py trains it; tests/runners/test_distributed.py asserts the bounds).

    python benchmarks/bench_distributed_equivalence.py [--kind images|translation] [--worlds 2,4] [--out DIR]

Columns per process count N: ``state`` the largest difference of any weight, method-state or optimizer tensor,
relative to the tensor's largest magnitude (at least 1e-2); ``loss`` the largest relative difference of an epoch's
mean loss; ``metric`` the selected epoch's top-1 (BLEU) difference in points; ``ranks`` whether every rank held
bit for bit rank 0's state at every checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.distributed_worker import differences, launch, train_teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="2,4", help="process counts compared with one process (default 2,4)")
    ap.add_argument("--kind", default="images", choices=("images", "translation"), help="which matrix (default images)")
    ap.add_argument("--out", help="work folder (default: a temporary one)")
    args = ap.parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lskd-ddp-"))
    train_teacher(out, args.kind)
    for w in [1, *worlds]:
        launch(out, w, args.kind)
    rows = {w: differences(out, w) for w in worlds}
    head = " | ".join(f"{k} 1 vs {w}" for w in worlds for k in ("state", "loss", "metric", "ranks"))
    print(f"| cell | {head} |")
    print("|---" * (1 + 4 * len(worlds)) + "|")
    for name in rows[worlds[0]]:
        cells = []
        for w in worlds:
            d = rows[w][name]
            cells += [
                f"{d['state']:.1e}",
                f"{d['loss']:.1e}",
                f"{d['metric']:.2f}",
                "equal" if d["ranks_equal"] else "DIFFER",
            ]
        print(
            f"| {name.split('_transformer')[0].split('_cnn_tiny')[0].removeprefix('student_')} | {' | '.join(cells)} |"
        )


if __name__ == "__main__":
    main()
