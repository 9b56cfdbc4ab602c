"""``lskd_bench.runners.status``: the rows of ``lskd-bench status``."""

from __future__ import annotations

import yaml

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.status import status_rows

from ..fixtures import REAL_RESULT


def test_a_cell_reused_from_another_data_path_is_one_row(tmp_path, tiny_cfg):
    """A cell found at another data path is reused through a link ``CELL-<new hash>`` to its folder
    (``moved.find_moved``): status lists it once, under its planned name, not once per name."""
    runs = tmp_path / "runs"
    cells = plan_cells(tiny_cfg)
    (runs / "digits" / "configs").mkdir(parents=True)
    (runs / "digits" / "configs" / "grid.yaml").write_text(yaml.safe_dump(tiny_cfg))
    student = next(c for c in cells if c.name.startswith("student_"))
    original = runs / "digits" / f"{student.name}-0123abcd"  # its folder, trained with the data at its old path
    original.mkdir()
    (original / store.RESULT).write_text(REAL_RESULT.read_text())
    student.dir(runs).symlink_to(original.name, target_is_directory=True)
    rows = status_rows(runs)
    assert [r["cell"] for r in rows] == sorted(c.dir(runs).name for c in cells)
    assert sum(r["state"] == "finished" for r in rows) == 1 and len(rows) == len(cells)
    # without the config that plans it, the link and its folder are still one cell: the folder
    (runs / "digits" / "configs" / "grid.yaml").unlink()
    assert [(r["cell"], r["state"]) for r in status_rows(runs)] == [(original.name, "finished")]


def test_fifos_and_foreign_json_in_a_cell_folder_never_block_or_break_status(tmp_path):
    """error.json, lock.json and data.json are untrusted like result.json: a FIFO in their place is not opened
    (reading it would block status for ever), and JSON of another shape is nothing, not an AttributeError."""
    import os
    import subprocess
    import sys

    from ..fixtures import HANG_GUARD_S

    cells = tmp_path / "runs" / "digits"
    for i, (fifo, other) in enumerate([("error.json", "lock.json"), ("lock.json", "error.json"), ("data.json", "")]):
        d = cells / f"student_kd_cnn_tiny_a0.1_T1_s{i}-0000000{i}"
        d.mkdir(parents=True)
        os.mkfifo(d / fifo)
        if other:
            (d / other).write_text("[1, 2]")
    (cells / "student_kd_cnn_tiny_a0.1_T1_s2-00000002" / store.RESULT).write_text(REAL_RESULT.read_text())
    p = subprocess.run(
        [sys.executable, "-m", "lskd_bench", "status", "--runs", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("1 finished, 2 "), p.stdout  # an unreadable lock: by its age
    assert "unreadable lock (cannot be read: not a regular file)" in p.stdout
