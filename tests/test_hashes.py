"""Cell hashes name finished results on disk: a change that does not change a result must keep them.

``tests/data/cell_hashes.json`` pins the cell names and hashes of every built-in task's grid (recorded at
a8affe1). A failure here means existing run directories would retrain: only update the file when a
result really changes, and say so in the commit message.
"""

import json
from pathlib import Path

import pytest

from lskd_bench.config import resolve_layers
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve
from lskd_bench.tasks import get_task

from .fixtures import require

GOLDEN = json.loads((Path(__file__).parent / "data" / "cell_hashes.json").read_text())
DATA_TASKS = ["imagenet", "cub200", "imagenet_compact", "cub200_compact", "iwslt_ende", "iwslt_enru"]


def _names(cfg):
    return [f"{c.name}-{c.hash}" for c in plan_cells(cfg)]


def test_default_grid_hashes():
    assert _names(resolve(None, {}, {}).cfg) == GOLDEN["digits"]


def test_methods_grid_hashes():
    cfg = resolve(
        "digits", {}, {"methods": ["kd", "dkd", "dist", "kd_std", "ttm", "ctkd", "nkd"], "grid": {"seeds": [0, 1, 2]}}
    ).cfg
    assert _names(cfg) == GOLDEN["digits_methods"]


@pytest.mark.parametrize("task", DATA_TASKS)
def test_recipe_hashes(task):
    t = get_task(task)  # planned without a data root check: only the recipe and schema matter here
    cfg = resolve_layers(
        t,
        [
            (t.recipe_source(), t.default_config()),
            ("command line", {"task": task, "data": {"root": f"/data/{task}"}, "methods": ["kd", "dkd"]}),
        ],
    ).cfg
    assert _names(cfg) == GOLDEN[task]


def test_demo_grid_hashes():
    require("django", "the NMT demo's corpus (pip install -e '.[nmt]')")
    assert _names(resolve("demo_ende", {}, {}).cfg) == GOLDEN["demo_ende"]
