"""runners/inference.py: finding a finished cell (its errors and suggestions), the config of a cell whose result
has no ``run_config``, and which weights file a cell is loaded from."""

from __future__ import annotations

import re

import pytest

from lskd_bench import store
from lskd_bench.errors import UsageError
from lskd_bench.runners.inference import _weights_file, cell_config, find_cell, read_text_lines
from lskd_bench.tasks import get_task

from ..fixtures import real_result

TEACHER = "teacher_cnn_wide_a0.1_s0"


def _finished(runs, task, cell):
    d = runs / task / cell
    d.mkdir(parents=True)
    (d / store.RESULT).write_text("{}")
    return d


def test_find_cell_by_run_directory(tmp_path):
    d = _finished(tmp_path, "digits", f"{TEACHER}-0123abcd")
    assert find_cell(run=str(d)) == d
    with pytest.raises(UsageError, match="no such cell directory"):
        find_cell(run=str(tmp_path / "nope"))
    (d / store.RESULT).unlink()
    with pytest.raises(UsageError, match=r"not a finished cell \(no result.json; see 'lskd-bench status'\)"):
        find_cell(run=str(d))


def test_find_cell_by_name_with_or_without_its_hash(tmp_path):
    d = _finished(tmp_path, "digits", f"{TEACHER}-0123abcd")
    _finished(tmp_path, "digits", "teacher_cnn_wide_a0_s0-89abcdef")  # a name that is a prefix of none
    assert find_cell(runs=str(tmp_path), name=TEACHER) == d
    assert find_cell(runs=str(tmp_path), name=f"{TEACHER}-0123abcd") == d
    _finished(tmp_path, "cifar100", f"{TEACHER}-fedcba98")  # the same name under another task
    with pytest.raises(UsageError, match=rf"^2 finished cells match '{TEACHER}' under .*\(give NAME-HASH\)$") as err:
        find_cell(runs=str(tmp_path), name=TEACHER)
    assert f"{TEACHER}-0123abcd" in str(err.value) and f"{TEACHER}-fedcba98" in str(err.value)


def test_find_cell_errors_and_suggestions(tmp_path):
    with pytest.raises(UsageError, match="give --run DIR/TASK/CELL, or --runs DIR and --cell NAME"):
        find_cell(runs=str(tmp_path))
    with pytest.raises(UsageError, match=r"runs directory .* does not exist"):
        find_cell(runs=str(tmp_path / "missing"), name=TEACHER)
    _finished(tmp_path, "digits", f"{TEACHER}-0123abcd")
    unfinished = tmp_path / "digits" / "baseline_cnn_tiny_s0-76543210"
    unfinished.mkdir()
    # too short for a close match: the finished cell it begins
    with pytest.raises(UsageError, match=rf"no finished cell named 'teacher' .*\(did you mean {TEACHER}\?\)"):
        find_cell(runs=str(tmp_path), name="teacher")
    # an unfinished cell is not found, and nothing is suggested for a name like no finished cell's
    with pytest.raises(UsageError) as err:
        find_cell(runs=str(tmp_path), name="baseline_cnn_tiny_s0")
    assert "did you mean" not in str(err.value) and f"'lskd-bench status --runs {tmp_path}' lists them" in str(
        err.value
    )


def test_cell_config_is_run_config_or_the_recipe_with_what_the_result_recorded():
    task = get_task("digits")
    r = real_result()
    assert cell_config(task, r) is r["run_config"]
    old = {k: v for k, v in r.items() if k != "run_config"}  # written before run_config was stored
    old["config"]["train"] = {**old["config"]["train"], "lr": 0.02, "epochs": 3}
    old["config"]["data"] = {**old["config"]["data"], "split_seed": 4}
    cfg = cell_config(task, old)
    assert (cfg["student"]["lr"], cfg["student"]["epochs"], cfg["data"]["split_seed"]) == (0.02, 3, 4)
    assert cfg["teacher"]["epochs"] == task.default_config()["teacher"]["epochs"] != 3  # the recipe's
    old["cell"] = {**old["cell"], "role": "teacher"}  # a teacher's recipe is its teacher section
    assert cell_config(task, old)["teacher"]["lr"] == 0.02


def test_weights_file_selected_last_and_a_result_from_before_model_selection(tmp_path):
    r = {"epochs": 5, "selection": {"epoch": 3}, "weights": {"selected": store.SELECTED, "last": store.MODEL}}
    assert _weights_file(tmp_path, r, "selected") == (store.SELECTED, "selected", 3)
    assert _weights_file(tmp_path, r, "last") == (store.MODEL, "last", 5)
    before = {"epochs": 5}
    assert _weights_file(tmp_path, before, "selected") == (store.MODEL, "last", 5)
    hostile = {**r, "weights": {"selected": "../../elsewhere.pt"}}
    with pytest.raises(UsageError, match=re.escape("weights file '../../elsewhere.pt' is not a file name in the cell")):
        _weights_file(tmp_path, hostile, "selected")


def test_read_text_lines_splits_on_newlines_only(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes("one\r\ntwo\u2028still two\n\nfour\n".encode())
    assert read_text_lines(str(p)) == ["one", "two\u2028still two", "", "four"]
    p.write_bytes(b"ok\n\xff\n")
    with pytest.raises(UsageError, match=r"in.txt:2: not valid UTF-8"):
        read_text_lines(str(p))
    with pytest.raises(UsageError, match="cannot read"):
        read_text_lines(str(tmp_path / "missing.txt"))
