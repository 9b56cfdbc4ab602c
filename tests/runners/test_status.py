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
