"""``lskd_bench.runners.result_file``: what result.json records of a finished cell; here its timings."""

from __future__ import annotations

import json

import pytest
import torch

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.train import load_model, train_group
from lskd_bench.tasks import get_task

from ..fixtures import tiny_overrides


@pytest.mark.slow
def test_timings_split_the_wall_time_of_each_epoch_and_survive_a_resume(tmp_path):
    """Two students fused, 3 epochs, killed after epoch 2 and resumed: each result.json has one timing per epoch
    (the pass's wall shared by 2, its data and teacher parts, the member's own steps within it), the resumed cell
    keeps the epochs timed before the kill, and the totals are the epochs' sums plus its evaluations."""
    cfg = resolve_config("digits", {}, tiny_overrides(epochs=3, grid={"alphas": [0.1], "temperatures": [1.0, 4.0]}))
    task = get_task("digits")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    (o,) = train_group(task, [teacher], cfg, data, [teacher.dir(tmp_path)], progress=False)
    assert o.error is None
    tmodel = load_model(task, teacher.arch, data, cfg, teacher.dir(tmp_path) / store.MODEL, torch.device("cpu"))
    students = [c for c in cells if c.role == "student"]
    dirs = [c.dir(tmp_path) for c in students]

    def stop(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(task, students, cfg, data, dirs, teacher=tmodel, progress=False, on_epoch_end=stop)
    train_group(task, students, cfg, data, dirs, teacher=tmodel, progress=False)
    for d in dirs:
        t = json.loads((d / store.RESULT).read_text())["timings"]
        assert [e["epoch"] for e in t["epochs"]] == [1, 2, 3] and {e["shared_by"] for e in t["epochs"]} == {2}
        for e in t["epochs"]:
            assert 0 < e["steps_s"] < e["wall_s"] and e["data_s"] + e["teacher_s"] < e["wall_s"]
        assert t["wall_s"] == pytest.approx(sum(e["wall_s"] for e in t["epochs"]) + t["eval_s"])
        assert t["train_s"] == pytest.approx(sum(e["steps_s"] for e in t["epochs"]))
        assert t["synced"] is True  # the CPU: every part is wall time
