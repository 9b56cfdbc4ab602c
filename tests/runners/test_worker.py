"""``lskd_bench.runners.worker``: the process a subprocess/torchrun/Slurm unit trains in."""

from __future__ import annotations

import os
import time

from lskd_bench.errors import DataError
from lskd_bench.runners import units, worker
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.lock import LOCK
from lskd_bench.runners.units import GridPlan
from lskd_bench.tasks import get_task


def test_a_lock_taken_over_is_said_even_when_the_unit_then_stops(tiny_cfg, tmp_path, monkeypatch, capsys):
    """The worker prints the claim's 'repaired:' line (an unreadable, long-dead lock taken over) at once, so a
    unit that then stops on bad data still tells the parent what it repaired; exit 2 with the data error."""
    cell = next(c for c in plan_cells(tiny_cfg) if c.role == "teacher")
    d = cell.dir(tmp_path)
    d.mkdir(parents=True)
    (d / LOCK).write_text("")  # a lock torn by a crash, untouched for a day: stale
    os.utime(d / LOCK, (time.time() - 86400, time.time() - 86400))
    spec = GridPlan(get_task("digits"), tiny_cfg, tmp_path, progress=False).write_spec()

    def bad_data(*a, **k):
        raise DataError("sample 3 is unreadable")

    monkeypatch.setattr(units, "_train_claimed", bad_data)
    rc = worker.main(["--spec", str(spec), "--cells", cell.hash])
    err = capsys.readouterr().err
    assert rc == 2 and "lskd-bench: error: sample 3 is unreadable" in err
    assert f"repaired: {cell.name}: " in err and not (d / LOCK).exists()  # said, and the lock released
