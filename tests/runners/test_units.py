"""Which teacher weights a student distils from (``teacher_weights``: the recipe's reference code decides), and
result.json's record of it."""

from __future__ import annotations

import json

import pytest
import torch

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells, teacher_weights
from lskd_bench.runners.grid import resolve_config, run_grid
from lskd_bench.tasks import get_task

from ..fixtures import tiny_overrides


def _cfg(which: str):
    return resolve_config(
        "digits",
        {},
        tiny_overrides(epochs=2, grid={"alphas": [0.1], "temperatures": [4.0]}, baseline=False, teacher_weights=which),
    )


def _cells(cfg):
    cells = plan_cells(cfg)
    return next(c for c in cells if c.role == "teacher"), next(c for c in cells if c.role == "student")


def test_recipes_follow_their_reference_code():
    recipe = {
        t: get_task(t).default_config()["teacher_weights"]
        for t in (
            "digits",
            "imagenet",
            "imagenet_compact",
            "cub200",
            "cub200_compact",
            "cifar100",
            "iwslt_ende",
            "demo_ende",
        )
    }
    assert recipe == {
        "digits": "selected",
        "imagenet": "selected",
        "imagenet_compact": "selected",  # official -best.pth.tar
        "cub200": "selected",
        "cub200_compact": "selected",
        "cifar100": "last",  # mdistiller's ckpt_epoch_240.pth
        "iwslt_ende": "last",
        "demo_ende": "last",
    }  # multilingual-kd: the model when training stops


def test_the_choice_is_part_of_a_students_identity_only():
    t_last, s_last = _cells(_cfg("last"))
    t_sel, s_sel = _cells(_cfg("selected"))
    assert t_last.hash == t_sel.hash  # the teacher is the same cell
    assert s_last.hash != s_sel.hash  # its students are not


@pytest.mark.slow
def test_student_distils_from_the_selected_epoch_and_records_it(tmp_path):
    cfg = _cfg("selected")
    tcell, scell = _cells(cfg)
    run_grid(cfg, tmp_path, progress=False)
    tres = store.read_result(tcell.dir(tmp_path))
    rec = store.read_result(scell.dir(tmp_path))["teacher_weights"]
    assert rec == {
        "cell": f"{tcell.name}-{tcell.hash}",
        "which": "selected",
        "file": tres["weights"]["selected"],
        "epoch": tres["best"]["epoch"],
        "last_epoch": 2,
    }
    first = torch.load(scell.dir(tmp_path) / store.MODEL)
    selected_was_last = tres["weights"]["selected"] == store.MODEL

    # make the teacher's selected epoch an earlier one with other weights: the student must distil from those
    tdir = tcell.dir(tmp_path)
    state = torch.load(tdir / store.MODEL)
    torch.save({k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}, tdir / store.SELECTED)
    tres["weights"]["selected"], tres["best"]["epoch"] = store.SELECTED, 1
    (tdir / store.RESULT).write_text(json.dumps(tres))
    (scell.dir(tmp_path) / store.RESULT).unlink()
    run_grid(cfg, tmp_path, progress=False)
    rec = store.read_result(scell.dir(tmp_path))["teacher_weights"]
    assert (rec["file"], rec["epoch"], rec["last_epoch"]) == (store.SELECTED, 1, 2)
    again = torch.load(scell.dir(tmp_path) / store.MODEL)
    assert any(not torch.equal(first[k], again[k]) for k in first)  # another teacher, another student

    # the same grid with teacher_weights: last distils from model.pt (a new student beside the old one)
    last = _cfg("last")
    _, s_last = _cells(last)
    run_grid(last, tmp_path, progress=False)
    rec = store.read_result(s_last.dir(tmp_path))["teacher_weights"]
    assert (rec["which"], rec["file"], rec["epoch"]) == ("last", store.MODEL, 2)
    same = all(torch.equal(first[k], v) for k, v in torch.load(s_last.dir(tmp_path) / store.MODEL).items())
    assert same == selected_was_last  # the first student distilled from model.pt exactly when it was the selected one


def test_a_teacher_without_selected_weights_is_an_error_when_they_differ(tmp_path):
    tcell, _ = _cells(_cfg("selected"))
    d = tcell.dir(tmp_path)
    d.mkdir(parents=True)
    old = {
        "cell": tcell.describe(),
        "metrics": {"top1": 90.0},
        "timings": {"wall_s": 1.0},
        "epochs": 5,
        "best": {"epoch": 3, "metrics": {"top1": 91.0}},
    }  # a result from before "weights" existed
    store.write_json(d / store.RESULT, old)
    with pytest.raises(RuntimeError, match="selected epoch 3"):
        teacher_weights(tcell, tmp_path, "selected")
    assert teacher_weights(tcell, tmp_path, "last")[0] == d / store.MODEL
    store.write_json(d / store.RESULT, {**old, "best": {"epoch": 5, "metrics": {"top1": 91.0}}})  # selected = last
    assert teacher_weights(tcell, tmp_path, "selected")[1]["epoch"] == 5
