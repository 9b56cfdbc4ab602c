"""``state.cell_state``: the one function that says what a cell is (status, the scheduler, the executors)."""

from __future__ import annotations

import pytest

from lskd_bench import store
from lskd_bench.runners.lock import CellLock
from lskd_bench.runners.state import cell_state, outcome_from_disk


@pytest.fixture
def cell(tiny_cfg, tmp_path):
    from lskd_bench.runners.cells import plan_cells

    return plan_cells(tiny_cfg)[0]


def _error(d, error, message):
    store.write_json(d / store.ERROR, {"error": error, "message": message})


def test_each_state_from_the_cell_folder(cell, tmp_path):
    d = cell.dir(tmp_path)
    assert cell_state(d, stale_s=300).state == "pending" and cell_state(d, stale_s=300).detail == "not started"
    assert cell_state(d, stale_s=300, view={"live": "queued", "detail": "PENDING"}).state == "queued"
    assert cell_state(d, stale_s=300, view={"ended": "job 7 left"}).state == "failed"
    (d / store.STATE).parent.mkdir(parents=True)
    (d / store.STATE_PREV).write_bytes(b"")
    assert cell_state(d, stale_s=300, damage=False).state == "interrupted"
    _error(d, "Interrupted", "SIGTERM")
    st = cell_state(d, stale_s=300, damage=False)
    assert (st.state, st.detail, st.reason) == ("interrupted", "SIGTERM", "Interrupted: SIGTERM")
    _error(d, "RuntimeError", "nan loss")
    assert cell_state(d, stale_s=300, damage=False).state == "failed"
    lock = CellLock(d)
    assert lock.try_acquire(300.0)
    assert cell_state(d, stale_s=300, damage=False).state == "running"  # the lock before an old error
    lock.release()
    (d / store.RESULT).write_text("{}")
    assert cell_state(d, stale_s=300).state == "damaged"
    store.write_json(
        d / store.RESULT, {"cell": cell.describe(), "metrics": {"top1": 1.0}, "epochs": 1, "timings": {"wall_s": 1}}
    )
    assert cell_state(d, stale_s=300, view={"live": "running"}, damage=False).state == "finished"  # result first


def test_outcome_of_a_process_that_ended(cell, tmp_path):
    d = cell.dir(tmp_path)
    assert outcome_from_disk(cell, tmp_path, 300, "exit 3").reason == "exit 3"
    d.mkdir(parents=True)
    _error(d, "Interrupted", "SIGTERM")
    got = outcome_from_disk(cell, tmp_path, 300, "exit 3")
    assert (got.state, got.reason) == ("failed", "Interrupted: SIGTERM")
