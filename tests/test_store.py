"""``lskd_bench.store``: atomic writes, result.json checks, the umask."""

from __future__ import annotations

import errno
import json
import os
import re

import pytest
import torch

from lskd_bench import store

from .fixtures import HOSTILE_EDITS, TINY_ARGS, fake_results, plant_results, real_result, result

# ------------------------------------------------------------------------------------------ hand-edited results
_EDITS = {
    "metrics a list": lambda r: r.update(metrics=[1, 2]),
    "metrics empty": lambda r: r.update(metrics={}),
    "metric a string": lambda r: r["metrics"].update(top1="high"),
    "alpha a string": lambda r: r["cell"].update(alpha="0.1"),
    "role missing": lambda r: r["cell"].pop("role"),
    "seed a string": lambda r: r["cell"].update(seed="0"),
    "T a list": lambda r: r["cell"].update(T=[1]),
    "history a dict": lambda r: r.update(history={"epoch": 1}),
    "history row a list": lambda r: r["history"].append([3, 1.0]),
    "history loss a string": lambda r: r["history"][0].update(loss="x"),
    "history eval a list": lambda r: r["history"][0].update(eval=[40.0]),
    "best metrics a list": lambda r: r.update(best={"epoch": 1, "metrics": [1]}),
    "epochs a string": lambda r: r.update(epochs="2"),
    "timings without wall_s": lambda r: r.update(timings={}),
    "metric_specs a string": lambda r: r.update(metric_specs="top1"),
    "selection a list": lambda r: r.update(selection=["valid"]),
    "run_config a list": lambda r: r.update(run_config=[1]),
}


@pytest.mark.parametrize("edit", list(_EDITS))
def test_hand_edited_result_of_wrong_types_is_skipped_and_named(tmp_path, cli, edit):
    """leaderboard, compare and plot skip a result.json of the wrong types with a warning naming the file, as they do
    for one that is not JSON, and report the other cells."""
    runs = tmp_path / "runs"
    fake_results(runs)
    bad = next(p for p in sorted(runs.rglob(store.RESULT)) if "student_dkd" in str(p))
    res = json.loads(bad.read_text())
    _EDITS[edit](res)
    bad.write_text(json.dumps(res))
    for argv in (["leaderboard"], ["compare"], ["plot"]):
        rc, _, err = cli(*argv, "--runs", str(runs))
        assert rc == 0, (argv, err)
        assert f"warning: skipped: {bad} (" in err, (argv, err)
        assert "Traceback" not in err


def test_results_written_by_this_version_fit_the_spec(tmp_path):
    """The one description of a valid result.json (``store.RESULT_SPEC``) takes a real result unchanged (a kd
    student of digits, tests/data/result.json), the results the tests write by hand, and a teacher's and a
    baseline's null fields."""
    assert store.result_shape_problem(real_result()) is None
    fake_results(tmp_path)
    assert [store.result_problem(p.parent) for p in tmp_path.rglob(store.RESULT)] == [None] * 6
    assert store.result_shape_problem(result("teacher", "cnn_wide", 0.1, None, 0, 50.0, 90.0, "0a")) is None
    assert store.result_shape_problem(result("baseline", "cnn_tiny", None, None, 3, 50.0, 90.0, "0b")) is None
    for key in ("teacher_weights", "best", "selection", "history", "env", "weights"):
        assert store.result_shape_problem({**real_result(), key: None}) is None, key


def test_history_training_top1_and_eval_loss_are_optional_numbers():
    """Results written before the history held the training top-1 and the evaluation loss lack them (the real
    result does); a result with them fits; a value of another type is refused, naming it."""
    res = real_result()
    assert not {"train_top1", "eval_loss"} & set(res["history"][0])
    res["history"][0].update(train_top1=87.5, eval_loss=0.42)
    assert store.result_shape_problem(res) is None
    for key, bad in (("train_top1", "high"), ("train_top1", 101.0), ("eval_loss", [1.0])):
        edited = real_result()
        edited["history"][0][key] = bad
        problem = store.result_shape_problem(edited)
        assert problem is not None and problem.startswith(f"history[0].{key}"), problem


@pytest.mark.parametrize("edit", list(HOSTILE_EDITS))
def test_a_hostile_result_is_refused_naming_its_key(tmp_path, edit):
    """Values of the right JSON type but out of what a reader can hold (a string for a mapping, 10**400 for a
    float, a seed beyond int64, a nested env value...) are refused by the one gate, which names the key."""
    key, change = HOSTILE_EDITS[edit]
    res = real_result()
    change(res)
    store.write_json(tmp_path / store.RESULT, res)
    got, problem = store.load_result(tmp_path)
    assert got is None and problem is not None and problem.startswith(key), problem


def test_a_result_json_that_is_no_regular_file_or_no_json_python_reads_is_refused(tmp_path):
    """A FIFO named result.json is refused unopened (reading it would block); an integer of 5000 digits and
    nesting deeper than the interpreter's stack are refused, not raised."""
    fifo, digits, deep = (tmp_path / n for n in ("fifo", "digits", "deep"))
    for d in (fifo, digits, deep):
        d.mkdir()
    os.mkfifo(fifo / store.RESULT)
    (digits / store.RESULT).write_text('{"epochs": 1' + "0" * 5000 + "}")
    (deep / store.RESULT).write_text("[" * 100000 + "]" * 100000)
    assert store.load_result(fifo) == (None, "is not a regular file")
    assert store.load_result(digits)[1].startswith("is not JSON lskd-bench reads (ValueError")
    assert store.load_result(deep)[1].startswith("is not JSON lskd-bench reads (RecursionError")


def test_every_reader_skips_hostile_results_and_names_each(tmp_path, cli):
    """leaderboard, compare, plot, export (every format), analyze and report read the good cell and say
    "skipped: FILE (why)" of each hostile one; status shows each as damaged, with why."""
    runs = tmp_path / "runs"
    planted = plant_results(runs, list(HOSTILE_EDITS))
    argvs = [["leaderboard"], ["compare"], ["plot"], ["analyze", "--target", "0"]]
    argvs += [["export", "--format", f, "--out", str(tmp_path / f"r.{f}")] for f in ("csv", "parquet", "jsonl")]
    for argv in argvs:
        rc, _, err = cli(*argv, "--runs", str(runs))
        assert "Traceback" not in err and rc == (2 if argv[0] == "analyze" else 0), (argv, err)
        for edit, path in planted.items():
            assert f"warning: skipped: {path} ({HOSTILE_EDITS[edit][0]}" in err, (argv, edit, err)
    rc, out, err = cli("status", "--runs", str(runs))
    assert rc == 0, err
    for edit, path in planted.items():
        line = next(x for x in out.splitlines() if x.startswith(path.parent.name))
        assert "damaged" in line and HOSTILE_EDITS[edit][0] in line, (edit, line)
    assert "1 finished" in out.splitlines()[-1]
    rc, _, err = cli("report", "--runs", str(runs), "--out", str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    assert rc == 0 and all(f"skipped: {path} (" in page for path in planted.values()), err


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        store.write_json(tmp_path / "r.json", {"a": 1})
        store.save_torch(tmp_path / "m.pt", {"w": torch.zeros(2)})
        store.write_csv_md(tmp_path / "board", "a\n", "# a\n")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == dict.fromkeys(
        ["r.json", "m.pt", "board.csv", "board.md"], mode
    )


@pytest.mark.slow
def test_run_writes_group_readable_files_under_umask_022(tmp_path, cli):
    old = os.umask(0o022)
    try:
        rc, _, err = cli("run", "--out", str(tmp_path), *TINY_ARGS, "--no-baseline")
    finally:
        os.umask(old)
    assert rc == 0, err
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert len(modes) >= 8 and set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------------------------------------ atomic writes
def _complete_result() -> dict:
    return {
        "cell": {
            "task": "digits",
            "role": "teacher",
            "arch": "cnn_wide",
            "method": "ce",
            "hash": "0" * 12,
            "alpha": 0.1,
            "T": None,
            "seed": 0,
        },
        "metrics": {"top1": 50.0},
        "epochs": 1,
        "timings": {"wall_s": 1.0},
    }


def test_write_json_replaces_the_file_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a" / store.RESULT
    store.write_json(path, {"x": 1})
    store.write_json(path, {"y": [1, 2]})
    assert json.loads(path.read_text()) == {"y": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == [store.RESULT]


def test_a_write_that_fails_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / store.RESULT
    store.write_json(path, {"x": 1})

    def half(f):
        f.write('{"x": ')
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError, match="I/O error"):
        store.atomic_write(path, half, mode="w")
    assert json.loads(path.read_text()) == {"x": 1} and [p.name for p in tmp_path.iterdir()] == [store.RESULT]
    with pytest.raises(store.DiskFull, match=re.escape(str(path))):
        store.atomic_write(path, lambda f: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")), mode="w")
    assert json.loads(path.read_text()) == {"x": 1}


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, None),  # no result.json: not finished, nothing wrong
        ("cut", "is not valid JSON (truncated?)"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        ("[1, 2]", "does not hold a JSON object"),
        ('{"metrics": {}}', "lacks cell, epochs, timings"),
    ],
)
def test_read_result_on_a_torn_or_foreign_file_is_none_and_says_why(tmp_path, content, problem):
    good = json.dumps(_complete_result())
    if content == "cut":
        content = good[: len(good) // 2]  # a file cut short (a crash before atomic writes, a full disk)
    if content is not None:
        path = tmp_path / store.RESULT
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert store.read_result(tmp_path) is None
    assert (store.result_problem(tmp_path) or "").startswith(problem or "") and (problem is None) == (
        store.result_problem(tmp_path) is None
    )


def test_read_result_returns_a_complete_result(tmp_path):
    store.write_json(tmp_path / store.RESULT, _complete_result())
    assert store.read_result(tmp_path) == _complete_result() and store.result_problem(tmp_path) is None
