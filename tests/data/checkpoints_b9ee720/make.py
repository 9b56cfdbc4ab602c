"""How ab.pt and kd.pt were written, with lskd-bench at b9ee720 (run from a checkout of that commit):
``python make.py OUT``. Digits, a teacher (alpha 0.1, 3 epochs), students ab and kd (T 4) of 3 epochs stopped by an
interrupt at the end of epoch 2: their state.pt, in the flat layout of checkpoints before components."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.train import load_model, train_group
from lskd_bench.tasks import get_task

OVERRIDES = {
    "grid": {"alphas": [0.1], "temperatures": [4.0], "seeds": [0]},
    "teacher": {"epochs": 3},
    "student": {"epochs": 3},
    "methods": ["ab", "crd", "kd"],
    "baseline": False,
}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    cfg = resolve_config("digits", {}, OVERRIDES)
    task = get_task("digits")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    (o,) = train_group(task, [teacher], cfg, data, [teacher.dir(out / "t")], progress=False)
    assert o.error is None
    tmodel = load_model(task, teacher.arch, data, cfg, teacher.dir(out / "t") / store.MODEL, torch.device("cpu"))
    students = [c for c in cells if c.role == "student"]

    def stop(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dirs = [out / "cut" / c.name for c in students]
        train_group(task, students, cfg, data, dirs, teacher=tmodel, progress=False, on_epoch_end=stop)
    for c in students:
        if c.method in ("ab", "kd"):
            shutil.copy(out / "cut" / c.name / store.STATE, out / f"{c.method}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
