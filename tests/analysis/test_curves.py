"""``lskd-bench plot`` (training curves from result.json histories) and the optional TensorBoard files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lskd_bench.cli import main
from lskd_bench.runners import store

from ..fixtures import require

ARGS = ["--alphas", "0,0.1", "--temperatures", "1,4", "--epochs", "2", "--seeds", "0", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny digits grid (2 teachers, 4 KD students, 1 baseline), with TensorBoard files when installed."""
    import importlib.util

    out = tmp_path_factory.mktemp("curves")
    tb = (
        ["--set", "logging.tensorboard=true", "--set", "logging.every_updates=5"]
        if importlib.util.find_spec("tensorboard")
        else []
    )
    assert main(["run", "--out", str(out), *ARGS, *tb]) == 0
    return out


@pytest.mark.slow
def test_plot_writes_one_png_per_group(runs, cli):
    from PIL import Image

    from lskd_bench.analysis.curves import group_results

    groups = group_results(runs)["digits"]
    assert {k: sorted(r["cell"]["name"] for r in v) for k, v in groups.items()} == {
        ("teachers", "cnn_wide"): ["teacher_cnn_wide_a0.1_s0", "teacher_cnn_wide_a0_s0"],
        ("students", "cnn_tiny", "cnn_wide", "kd", 0): [
            "baseline_cnn_tiny_s0",
            *sorted(f"student_kd_cnn_tiny_a{a}_T{t}_s0" for a in ("0", "0.1") for t in ("1", "4")),
        ],
    }
    rc, out, err = cli("plot", "--runs", str(runs))
    assert rc == 0, err
    folder = runs / "digits" / "curves"
    expected = [folder / "students_kd_cnn_wide-cnn_tiny_s0.png", folder / "teachers_cnn_wide.png"]
    assert out.splitlines() == [f"wrote {p}" for p in expected]
    for p in expected:
        with Image.open(p) as im:
            assert im.size == (1200, 460)
            colours = im.convert("RGB").getcolors(1 << 20)
            assert len(colours) > 50  # drawn curves and text, not a blank canvas
            # the curves themselves: coloured (plasma) pixels in both panels, left of the legend; axes, text and
            # grid are grey, so without the lines there are none (measured: ~2,000-3,700 per panel, 0 without)
            rgb = np.asarray(im.convert("RGB")).astype(int)[:, : int(0.86 * im.size[0])]
            coloured = (rgb.max(-1) - rgb.min(-1)) > 60
            half = coloured.shape[1] // 2
            assert coloured[:, :half].sum() > 500 and coloured[:, half:].sum() > 500, p  # loss | metric
    rc, _, err = cli("plot", "--runs", str(runs), "--task", "cub200")
    assert rc == 2 and "no finished cells of task 'cub200'" in err


@pytest.mark.slow
def test_tensorboard_events_match_the_history(runs):
    require("tensorboard", "logging.tensorboard (pip install 'lskd-bench[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("teacher_cnn_wide_a0.1_s0", "student_kd_cnn_tiny_a0.1_T4_s0"):
        (cell,) = [p for p in (runs / "digits").iterdir() if p.name.startswith(name + "-")]
        result = json.loads((cell / store.RESULT).read_text())
        acc = EventAccumulator(str(cell / "tensorboard"))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"epoch/loss", "epoch/lr", "epoch/epoch", "val/top1", "val/top5", "train/loss_step", "train/lr"} <= tags
        hist = result["history"]
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("epoch/loss")] == [
            (h["updates"], h["loss"]) for h in hist
        ]
        assert [pytest.approx(e.value, rel=1e-6) for e in acc.Scalars("val/top1")] == [h["eval"]["top1"] for h in hist]
        steps = [e.step for e in acc.Scalars("train/loss_step")]
        assert steps == list(range(5, result["updates"] + 1, 5))


def test_tensorboard_without_the_package_is_a_one_line_error(tmp_path, cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    rc, _, err = cli("run", "--out", str(tmp_path), *ARGS, "--set", "logging.tensorboard=true")
    assert rc == 2 and "logging.tensorboard needs the tensorboard package" in err


@pytest.mark.slow
def test_resumed_cell_keeps_one_clean_tensorboard_curve(tmp_path):
    """Events written after the last checkpoint of an interrupted cell are dropped when it resumes: the curve
    equals the uninterrupted one (same steps, same values: resume is bit-identical on the CPU)."""
    require("tensorboard", "logging.tensorboard (pip install 'lskd-bench[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import train_cell
    from lskd_bench.tasks import get_task

    from ..fixtures import tiny_overrides

    cfg = resolve_config("digits", {}, tiny_overrides(epochs=2, logging={"tensorboard": True, "every_updates": 5}))
    task = get_task("digits")
    data = task.load_data(cfg)
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    train_cell(task, teacher, cfg, data, tmp_path / "ref", progress=False)

    def stop_mid_epoch_two(epoch, i):
        if epoch == 1 and i == 10:  # past the end-of-epoch-1 checkpoint and two logged steps
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cell(task, teacher, cfg, data, tmp_path / "cut", progress=False, on_step=stop_mid_epoch_two)
    train_cell(task, teacher, cfg, data, tmp_path / "cut", progress=False)

    def curve(d, tag):
        acc = EventAccumulator(str(d / "tensorboard"))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    for tag in ("train/loss_step", "epoch/loss", "val/top1"):
        ref, cut = curve(tmp_path / "ref", tag), curve(tmp_path / "cut", tag)
        assert cut == ref and len({s for s, _ in cut}) == len(cut)
    assert len(list((tmp_path / "cut" / "tensorboard").iterdir())) == 2  # one event file per process run


@pytest.mark.slow
def test_metric_panel_names_the_split_its_numbers_come_from(runs):
    """Image tasks evaluate on val (their test set); translation's history holds test BLEU, the epoch being
    selected on valid: the panel must not call test BLEU 'validation'."""
    from lskd_bench.analysis.curves import metric_title

    (teacher,) = [p for p in (runs / "digits").iterdir() if p.name.startswith("teacher_cnn_wide_a0_s0-")]
    digits = json.loads((teacher / store.RESULT).read_text())
    assert metric_title(digits, "top1") == "validation top1"
    nmt = {"selection": {"split": "valid", "metric": "valid_bleu", "mode": "max", "epoch": 1}}
    assert metric_title(nmt, "bleu") == "test bleu (epoch selected on valid)"


@pytest.mark.parametrize(
    "task_name, eval_tag, select_tag",
    [
        ("digits", "val/top1", None),  # image tasks: "val" is the test set the paper reports, and the selection split
        ("iwslt_ende", "test/bleu", "select/valid_bleu"),  # translation: test-split BLEU, epoch selected on valid
    ],
)
def test_tensorboard_tags_name_the_split_evaluated(tmp_path, task_name, eval_tag, select_tag):
    require("tensorboard", "logging.tensorboard (pip install 'lskd-bench[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lskd_bench.runners.loggers import CellRun
    from lskd_bench.runners.loggers.tensorboard import TensorBoardLogger
    from lskd_bench.tasks import get_task

    selection = get_task(task_name).selection({}, {"select_on": "valid_bleu"})
    log = TensorBoardLogger(CellRun(tmp_path, selection=selection))
    metric = eval_tag.split("/")[1]
    entry = {"epoch": 1, "loss": 2.5, "lr": 0.1, "updates": 7, "eval": {metric: 21.5}}
    if select_tag:
        entry["selection"] = 18.25  # the history's selection score (valid-split BLEU)
    log.epoch(7, entry)
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    # the epoch's mean training loss is also train/loss, the name every tracker gives it (loggers.epoch_scalars)
    expected = {"epoch/epoch", "epoch/loss", "epoch/lr", "train/loss", eval_tag}
    assert tags == expected | ({select_tag} if select_tag else set())
    assert [(e.step, e.value) for e in acc.Scalars(eval_tag)] == [(7, 21.5)]
    if select_tag:
        assert [(e.step, e.value) for e in acc.Scalars(select_tag)] == [(7, 18.25)]
