"""benchmarks/bench_repdistiller.py --quick, its smallest configuration (KD, 2 train / 1 test images a class, one
round): both sides train and evaluate in their own processes and the table has a row of positive ratios.
Correctness only: no figure is compared with a speed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ..fixtures import ROOT


@pytest.mark.slow
def test_quick_mode_prints_one_row_of_ratios_per_method():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = ROOT / "benchmarks" / "bench_repdistiller.py"
    p = subprocess.run(
        [sys.executable, str(script), "--quick", "--methods", "kd", "--per-class", "2,1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0].startswith("load before:") and any(line.startswith("load after:") for line in lines)
    assert "200 train / 100 test images, median of 1 round(s)" in p.stdout
    header = "| method | training | start-up (first step) | start-up without the teacher's validation | evaluation |"
    assert header in lines
    (row,) = [line for line in lines if line.startswith("| kd |")]
    ratios = [float(v) for v in re.findall(r"\d+\.\d+", row)]
    assert len(ratios) == 4 and all(r > 0 for r in ratios), row
