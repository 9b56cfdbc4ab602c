"""Cell hashes name finished results on disk: a change that does not change a result must keep them.

``tests/data/cell_hashes.json`` pins the cell names and hashes of every built-in task's grid (recorded at
a8affe1; every method on every CIFAR-100 pair at b9ee720). A failure here means existing run directories would
retrain: only update the file when a result really changes, and say so in the commit message.
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
# every image KD method (and three compositions) on every published CIFAR-100 pair, at one alpha and T: the per-pair
# and per-dataset settings of lskd_bench/configs/cifar100*.yaml reach these cells' hashes
CIFAR_PAIRS = list(get_task("cifar100").pairs())
CIFAR_METHODS = [
    *"ab at cc crd ctkd dist dkd fitnet fsp ft kd kd_std nkd nst ofd pkt reviewkd rkd sp ttm vid".split(),
    *("crd+kd", "ofd+kd", "reviewkd+kd"),
]


def _names(cfg):
    return [f"{c.name}-{c.hash}" for c in plan_cells(cfg)]


def test_default_grid_hashes():
    assert _names(resolve(None, {}, {}).cfg) == GOLDEN["digits"]


@pytest.mark.parametrize("batch", [7, 256, 100_000])
def test_evaluation_batches_keep_the_hashes(batch):
    """eval_batch_size (null by default: chosen per device) stays out of the hash: the metrics do not depend on it."""
    assert resolve(None, {}, {}).cfg["eval_batch_size"] is None
    assert _names(resolve(None, {}, {"eval_batch_size": batch}).cfg) == GOLDEN["digits"]


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


def cifar100_pair_grid(pair, **more):
    t = get_task("cifar100")
    grid = {"alphas": [0.1], "temperatures": [4.0]}
    command_line = {"task": "cifar100", "data": {"root": "/data/cifar100"}, "methods": CIFAR_METHODS, "grid": grid}
    command_line.update(more)
    layers = [(t.recipe_source(), t.default_config()), t.pair_layer(pair), ("command line", command_line)]
    return resolve_layers(t, layers).cfg


@pytest.mark.parametrize("pair", CIFAR_PAIRS)
def test_cifar100_pair_hashes(pair):
    assert _names(cifar100_pair_grid(pair)) == GOLDEN["cifar100_pairs"][pair]


def test_eval_mode_teacher_keeps_the_names_from_before_teacher_mode_existed():
    """teacher_mode: eval (every teacher before the option) stays out of the hash: ReviewKD and OFD cells in eval
    mode keep their b9ee720 names; train mode (now their cifar100 default) is another cell."""
    before = {
        "ofd": "student_ofd_resnet8x4_a0.1_Tnone_s0-a87241fa",
        "reviewkd": "student_reviewkd_resnet8x4_a0.1_Tnone_s0-d2f72e23",
        "ofd+kd": "student_ofd+kd_resnet8x4_a0.1_T4_s0-2d2618a4",
        "reviewkd+kd": "student_reviewkd+kd_resnet8x4_a0.1_T4_s0-847a45bb",
    }
    eval_mode = {"reviewkd": {"teacher_mode": "eval"}, "ofd": {"teacher_mode": "eval"}}
    names = _names(cifar100_pair_grid("resnet32x4-resnet8x4", **eval_mode))
    assert all(n in names for n in before.values())
    names = _names(cifar100_pair_grid("resnet32x4-resnet8x4"))
    assert not any(n in names for n in before.values())


def test_demo_grid_hashes():
    require("django", "the NMT demo's corpus (pip install -e '.[nmt]')")
    assert _names(resolve("demo_ende", {}, {}).cfg) == GOLDEN["demo_ende"]
