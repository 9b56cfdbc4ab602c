"""What a task plugin needs of the package: its recipe and pair files found next to its own module, and the
training loop's batch request (``BatchRequest``), with tasks written against the earlier keyword signature."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lskd_bench.errors import UsageError
from lskd_bench.runners.grid import resolve_config
from lskd_bench.tasks import get_task
from lskd_bench.tasks.base import BUILTIN_CONFIGS, BatchRequest, Task, load_recipe, recipe_folder
from lskd_bench.tasks.digits import DigitsTask


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A package ``plugin_pkg`` outside lskd_bench whose module ``tasks`` defines a task; its recipe (extending the
    built-in digits recipe), a second recipe and its pairs file lie beside the module."""
    pkg = tmp_path / "plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(
        "from lskd_bench.tasks.digits import DigitsTask\n"
        "class Mine(DigitsTask):\n"
        "    name = 'mine'\n"
        "    recipe = 'mine'\n"
        "    pairs_recipe = 'mine_pairs.yaml'\n"
    )
    (pkg / "mine.yaml").write_text("base: digits\nteacher:\n  epochs: 3\n")
    (pkg / "mine_pairs.yaml").write_text(
        "pairs:\n  wide-tiny:\n    source: here\n    teacher: {arch: cnn_wide}\n    student: {arch: cnn_tiny}\n"
        "    kd: {lambda: 0.25}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in ("plugin_pkg.tasks", "plugin_pkg"):
        sys.modules.pop(name, None)


def test_a_plugin_recipe_and_pairs_are_read_next_to_its_module(plugin_package):
    import plugin_pkg.tasks

    task = plugin_pkg.tasks.Mine()
    digits = load_recipe("digits")
    cfg = task.default_config()
    assert cfg["teacher"]["epochs"] == 3  # its own value, over the built-in recipe it extends
    assert digits["teacher"]["epochs"] != 3 and cfg["student"] == digits["student"]
    assert task.recipe_source() == "recipe package plugin_pkg/mine.yaml"
    assert list(task.pairs()) == ["wide-tiny"]
    label, layer = task.pair_layer("wide-tiny")
    assert label == "pair wide-tiny (package plugin_pkg/mine_pairs.yaml)" and layer["kd"] == {"lambda": 0.25}
    assert task.pair_settings() == ({"kd": ["lambda"]}, {})


def test_a_missing_recipe_is_one_line_naming_the_task_and_where_it_looked(plugin_package):
    import plugin_pkg.tasks

    (plugin_package / "mine.yaml").unlink()
    with pytest.raises(UsageError) as exc:
        plugin_pkg.tasks.Mine().default_config()
    assert str(exc.value) == "task mine: recipe 'mine' not found (looked for package plugin_pkg/mine.yaml)"
    (plugin_package / "mine_pairs.yaml").unlink()
    with pytest.raises(UsageError, match=r"^task mine: pairs recipe 'mine_pairs.yaml' not found \(looked for "):
        plugin_pkg.tasks.Mine().pairs()


def test_built_in_tasks_read_lskd_bench_configs():
    assert recipe_folder(DigitsTask).label == BUILTIN_CONFIGS
    cifar = get_task("cifar100")
    assert cifar.recipe_source() == "recipe lskd_bench/configs/cifar100.yaml"
    assert cifar.pairs_source() == "lskd_bench/configs/cifar100_pairs.yaml"
    assert get_task("digits").default_config() == load_recipe("digits")


def test_a_task_class_in_a_top_level_module_reads_its_folder(tmp_path):
    mod = types.ModuleType("lone_task")
    mod.__file__ = str(tmp_path / "lone_task.py")
    sys.modules["lone_task"] = mod
    try:
        cls = type("Lone", (Task,), {"__module__": "lone_task", "name": "lone", "recipe": "lone"})
        (tmp_path / "lone.yaml").write_text("teacher:\n  epochs: 7\n")
        assert cls().default_config() == {"teacher": {"epochs": 7}}
    finally:
        del sys.modules["lone_task"]


class KeywordTask(DigitsTask):
    """A plugin written against the earlier signature: the request's fields arrive as keywords."""

    def train_batches(self, data, role_cfg, cfg, *, seed, epoch, shard=(0, 1), start=0, pin_memory=False, skipped=None):
        self.got = (seed, epoch, shard, start, pin_memory, skipped)
        return super().train_batches(data, role_cfg, cfg, BatchRequest(seed, epoch, shard, start, pin_memory, skipped))


def test_the_loop_asks_for_batches_with_one_request_also_of_keyword_tasks(tmp_path):
    cfg = resolve_config("digits", {}, {})
    new, old = DigitsTask(), KeywordTask()
    data = new.load_data(cfg)
    skipped: list[str] = []
    req = BatchRequest(seed=3, epoch=1, shard=(1, 2), start=2, skipped=skipped)
    a = list(new.open_batches(data, cfg["student"], cfg, req))
    b = list(old.open_batches(data, cfg["student"], cfg, req))
    assert old.got == (3, 1, (1, 2), 2, False, []) and old.got[5] is skipped  # the loop's own list
    bs = cfg["student"]["batch_size"]  # full global batches (the last partial one dropped) from batch 2 on
    assert len(a) == len(b) == len(data.train) // bs - 2 and all(len(x[1]) == bs // 2 for x in a)  # rank 1's half
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert req == BatchRequest(3, 1, (1, 2), 2, False, ["other"])  # the shared list is not part of equality
