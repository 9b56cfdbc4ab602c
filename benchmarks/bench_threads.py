"""The thread policy under contention (issue 36): wall time of ``lskd-bench run --seeds 0`` (the default digits
grid, one seed) with the default threads and with ``--threads 1`` / ``--threads N`` / ``--jobs N``, quiet and with
BURNERS CPU-bound processes beside it, rounds alternated; prints the median of each and the ratios.

    python benchmarks/bench_threads.py [--rounds 2] [--burners 3] [--options default,1,2,2p,jobs2] [--epochs E]

Take it while nothing else runs on the machine. Each run trains from scratch in a fresh folder.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time


def burn(stop) -> None:
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x += i * i


def option_args(option: str) -> list[str]:
    """``default``: no option; ``jobsN``: ``--executor subprocess --jobs N`` (units as N processes at once); a
    number: ``--threads`` (a trailing ``p``: with ``OMP_WAIT_POLICY=PASSIVE``, see ``option_env``)."""
    option = option.removesuffix("p")
    if option == "default":
        return []
    if option.startswith("jobs"):
        return ["--executor", "subprocess", "--jobs", option[4:]]
    return ["--threads", option]


def option_env(option: str) -> dict[str, str]:
    """The environment of a run: OpenMP threads that sleep at once when idle (``OMP_WAIT_POLICY=PASSIVE``) for an
    option ending in ``p``, instead of spinning for a while."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return {**env, "OMP_WAIT_POLICY": "PASSIVE"} if option.endswith("p") else env


def run(option: str, epochs: int | None) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "lskd_bench", "run", "--seeds", "0", "--out", out, "--no-progress"]
        cmd += option_args(option)
        cmd += [] if epochs is None else ["--epochs", str(epochs)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=option_env(option))
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--burners", type=int, default=3)
    ap.add_argument(
        "--options",
        default="default,1,2",
        help="default, --threads values and jobsN (--jobs N), comma-separated; a trailing p: OMP_WAIT_POLICY=PASSIVE",
    )
    ap.add_argument("--epochs", type=int, help="epochs for teacher and student (default: the task's)")
    ap.add_argument("--loads", default="quiet,busy", help="quiet, busy or both (comma-separated)")
    args = ap.parse_args()
    loads = args.loads.split(",")
    options = args.options.split(",")
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for load in loads:
            stop = mp.Event()
            procs = [mp.Process(target=burn, args=(stop,)) for _ in range(args.burners if load == "busy" else 0)]
            for p in procs:
                p.start()
            try:
                for option in options if r % 2 == 0 else options[::-1]:  # rounds alternated
                    t = run(option, args.epochs)
                    times.setdefault((load, option), []).append(t)
                    print(f"round {r + 1} {load:5s} threads {option:8s} {t:7.1f} s", flush=True)
            finally:
                stop.set()
                for p in procs:
                    p.join()
    for load in loads:
        med = {o: statistics.median(times[(load, o)]) for o in options}
        best = min(med.values())
        line = ", ".join(f"{o} {med[o]:.1f} s" for o in options)
        ratios = ", ".join(f"{o}/best {med[o] / best:.2f}" for o in options)
        extra = f", default / --threads 1 {med['default'] / med['1']:.2f}" if "default" in med and "1" in med else ""
        print(f"{load} (medians of {args.rounds}): {line}; {ratios}{extra}")


if __name__ == "__main__":
    main()
