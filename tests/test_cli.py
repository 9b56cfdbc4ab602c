"""CLI behaviour: bad input exits 2 with one clear line and writes nothing; tasks list; a tiny run."""

from __future__ import annotations

import pytest

from lskd_bench.methods import METHODS
from lskd_bench.tasks import TASKS

# the built-in tasks; the error lists every registered one (a task plugin installed beside them adds its own)
BUILTIN_TASKS = [
    "cifar100",
    "cub200",
    "cub200_compact",
    "demo_ende",
    "demo_enru",
    "digits",
    "imagefolder",
    "imagenet",
    "imagenet_compact",
    "iwslt_ende",
    "iwslt_enru",
]


def known() -> dict[str, str]:
    """What the registries hold when a test runs (not when this module is collected: a module collected earlier
    may still be registering its methods), for the {tasks} and {kd} fields of the expected messages."""
    # the KD methods (those that need a teacher), never the teacher's own objective "ls"
    kd = ", ".join(n for n, c in METHODS.items() if c.needs.needs_teacher)
    return {"tasks": ", ".join(TASKS.names()), "kd": kd}


def test_the_registries_hold_the_builtins():
    assert set(BUILTIN_TASKS) <= set(TASKS.names()) and TASKS.names() == sorted(TASKS.names())
    kd = known()["kd"].split(", ")
    assert {"kd", "dkd", "ab", "fitnet", "cckd", "wttm"} <= set(kd) and "ls" not in kd


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--task", "nope"], "unknown task 'nope' (known: {tasks})"),
        (["--alphas", "0,1.0"], "grid.alphas must be in [0, 1), got 1.0 (command line)"),
        (["--alphas", "-0.1"], "grid.alphas must be in [0, 1), got -0.1"),
        (["--temperatures", "1,0"], "grid.temperatures must be > 0, got 0.0"),
        (["--temperatures", "-2"], "grid.temperatures must be > 0, got -2.0"),
        (["--alphas", "x"], "--alphas: invalid value in 'x'"),
        (["--grid", "alpha,beta"], "grid.axes[1] must be one of alpha, T, got 'beta'"),
        (["--methods", "magic"], "unknown KD method 'magic' (known: {kd}, and FEATURE+kd compositions)"),
        (["--methods", "ls"], "unknown KD method 'ls' (known: {kd}, and FEATURE+kd compositions)"),
        (["--config", "/nonexistent/cfg.yaml"], "cannot read config /nonexistent/cfg.yaml"),
        (
            ["--set", "teacher.epoch=5"],
            "unknown config key teacher.epoch (did you mean teacher.epochs?) (command line)",
        ),
        (["--set", "nonsense.key=3"], "unknown config key nonsense"),
        (["--set", "student.epochs=five"], "student.epochs must be an integer, got 'five' (command line)"),
        (["--set", "student.epochs=0"], "student.epochs must be >= 1, got 0"),
        (["--set", "kd.lambda=2"], "kd.lambda must be in [0, 1], got 2.0"),
        (
            ["--set", "student.optimizer=adan"],
            "student.optimizer must be one of sgd, adam, adamw, got 'adan' (did you mean adam?)",
        ),
        (["--set", "grid.seeds=[0,0]"], "grid.seeds lists a value twice"),
        (["--set", "student.checkpoint=/x.pt"], "did you mean student.init_checkpoint?"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, cli, argv, message):
    out = tmp_path / "runs"
    rc, _stdout, err = cli("run", "--out", str(out), *argv)
    assert rc == 2
    for field, value in known().items():
        message = message.replace("{" + field + "}", value)
    assert err.startswith("lskd-bench: error: ") and message in err
    assert err.count("\n") == 1  # one line
    assert not out.exists()


def test_invalid_yaml_config(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    rc, _, err = cli("run", "--out", str(tmp_path / "runs"), "--config", str(bad))
    assert rc == 2 and f"config {bad} is not valid YAML" in err
    assert not (tmp_path / "runs").exists()


def test_output_dir_not_writable(tmp_path, cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc, _, err = cli("run", "--out", str(blocker / "runs"))
    assert rc == 2 and "is not writable" in err and str(blocker) in err
    assert blocker.read_text() == "not a directory"


def test_unknown_option_is_one_line(cli):
    rc, _, err = cli("run", "--bogus")
    assert rc == 2 and err.count("\n") == 1 and "unrecognized arguments: --bogus" in err


def test_tasks_lists_default(cli):
    rc, out, _ = cli("tasks")
    assert rc == 0 and "\ndigits " in out and "embedded default" in out


def test_leaderboard_without_runs(tmp_path, cli):
    rc, _, err = cli("leaderboard", "--runs", str(tmp_path / "missing"))
    assert rc == 2 and "does not exist" in err


@pytest.mark.slow
def test_run_prints_leaderboard_and_resumes(tmp_path, cli):
    argv = [
        "run",
        "--out",
        str(tmp_path),
        "--alphas",
        "0.1",
        "--temperatures",
        "2",
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--no-progress",
    ]
    rc, out, _ = cli(*argv)
    assert rc == 0
    assert "| T = 2 | **" in out and "3 cells: trained 3, reused 0" in out
    assert (tmp_path / "digits" / "leaderboard.csv").read_text().count("\n") == 4
    rc, out, _ = cli(*argv)
    assert rc == 0 and "3 cells: trained 0, reused 3" in out


def test_run_header_counts_a_partly_finished_grid(tmp_path, cli):
    """Before the first cell trains, run says how many cells it trains and reuses, the executor and the run dir;
    with finished cells of the task in the run dir, an estimate (here: the 2 new students, fused in one unit,
    take the median seconds an epoch took the finished students). With --log-format json: a 'plan' event."""
    import json
    import statistics

    grid = ["--alphas", "0.1", "--temperatures", "2", "--epochs", "1"]
    rc, _, err = cli("run", "--out", str(tmp_path / "quiet"), *grid, "--seeds", "0", "--no-progress")
    assert rc == 0 and "digits: " not in err  # --no-progress: no progress output, no header
    argv = ["run", "--out", str(tmp_path), *grid]
    rc, _, err = cli(*argv, "--seeds", "0")
    assert rc == 0, err
    header = [ln for ln in err.splitlines() if ln.startswith("digits: ")]
    assert len(header) == 1 and "estimate" not in err  # nothing finished yet: no estimate
    assert header[0].startswith("digits: 3 cells, 3 to train in 2 units, 0 finished (reused); executor auto (")
    assert header[0].endswith(f"; run dir {tmp_path}")
    rates = []  # seconds an epoch of the finished students (the KD student and the baseline) took
    for result in (tmp_path / "digits").glob("*/result.json"):  # (the quiet run's are in another run dir)
        r = json.loads(result.read_text())
        if r["cell"]["role"] != "teacher":
            rates.append(r["timings"]["wall_s"] / r["epochs"])
    assert len(rates) == 2
    rc, _, err = cli(*argv, "--seeds", "0,1", "--log-format", "json")
    assert rc == 0, err
    plan = [e for e in map(json.loads, err.splitlines()) if e["event"] == "plan"]
    assert len(plan) == 1
    assert {k: plan[0][k] for k in ("task", "cells", "train", "units", "reuse", "estimated_from", "out")} == {
        "task": "digits",
        "cells": 5,  # the teacher, and per seed the KD student and the baseline
        "train": 2,  # seed 1's students
        "units": 1,  # fused: one teacher, one seed
        "reuse": 3,
        "estimated_from": 3,
        "out": str(tmp_path),
    }
    assert plan[0]["estimate_s"] == round(statistics.median(rates) * 1, 1)  # 1 epoch
    rc, _, err = cli(*argv, "--seeds", "0,1")
    assert rc == 0 and "digits: " not in err  # nothing to train: no header


def test_run_header_text():
    from pathlib import Path

    from lskd_bench.runners.grid import Outline

    o = Outline("digits", 21, 14, 9, 7, "auto (local)", Path("runs"), 750.0, 7)
    assert o.lines() == [
        "digits: 21 cells, 14 to train in 9 units, 7 finished (reused); executor auto (local); run dir runs",
        "estimate: ~12 min of training, one unit at a time (from 7 finished cells of digits in runs)",
    ]
    assert Outline("digits", 3, 3, 3, 0, "local", Path("r")).lines() == [
        "digits: 3 cells, 3 to train, 0 finished (reused); executor local; run dir r"
    ]
    o = Outline("digits", 11, 11, 4, 0, "auto (subprocess)", Path("runs"), 30.0, 11, 2)
    assert o.lines()[1] == "estimate: ~30 s of training, 2 units at a time (from 11 finished cells of digits in runs)"


def test_the_estimate_schedules_units_at_once_after_their_teachers():
    """Two teachers' units (10 s each) then their students' units (8 s, 6 s): 34 s one at a time; 2 at a time the
    teachers together, then the students together: 18 s; 3 at a time no faster (the students wait for them)."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import _schedule, fuse_units, resolve_config

    from .fixtures import tiny_overrides

    cfg = resolve_config("digits", {}, tiny_overrides())
    units = fuse_units(plan_cells(cfg), cfg, fuse=True, max_fused=8, spread=2)
    assert [u[0].role for u in units] == ["teacher", "teacher", "student", "student"]
    assert units[2][0].teacher is units[0][0] or units[2][0].teacher.hash == units[0][0].hash
    spans = [10.0, 10.0, 8.0, 6.0]
    assert _schedule(units, spans, 1) == 34.0
    assert _schedule(units, spans, 2) == 18.0 == _schedule(units, spans, 3)
    assert _schedule(units, [10.0, 1.0, 8.0, 6.0], 2) == 18.0  # a0.1's students start at 1 s, end at 7 s


@pytest.mark.slow
def test_status_of_a_task_without_cells_names_the_task(tmp_path, cli):
    rc, _, err = cli(
        "run",
        "--out",
        str(tmp_path),
        "--alphas",
        "0.1",
        "--temperatures",
        "1",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--no-baseline",
        "--no-progress",
    )
    assert rc == 0, err
    rc, _, err = cli("status", "--runs", str(tmp_path), "--task", "cub200")
    assert rc == 2 and err == f"lskd-bench: error: no cells of task 'cub200' under {tmp_path}\n", err


@pytest.mark.slow
def test_status_lists_the_cells_a_run_has_not_started_yet(tmp_path, cli):
    """A grid in progress (here: one of its cells' folders not made yet) shows every planned cell, the missing one
    as pending/not started; the newest run's grid is the one listed."""
    import shutil

    small = ["--out", str(tmp_path), "--temperatures", "1", "--seeds", "0", "--epochs", "1", "--no-progress"]
    rc, _, err = cli("run", *small, "--alphas", "0.1", "--no-baseline")
    assert rc == 0, err
    rc, _, err = cli("run", *small, "--alphas", "0,0.1")  # the newest grid: 2 teachers, baseline, 2 students
    assert rc == 0, err
    student = next((tmp_path / "digits").glob("student_kd_*_a0_T1_s0-*"))
    shutil.rmtree(student)
    rc, out, _ = cli("status", "--runs", str(tmp_path))
    assert rc == 0
    lines = out.splitlines()
    assert lines[-1] == "4 finished, 1 pending"
    assert any(line.startswith(student.name) and "pending" in line and "not started" in line for line in lines), out


def test_score_does_not_take_a_file_extension_for_the_language(tmp_path, cli):
    """ref.txt has no language suffix: bleu_tok must not be computed with a Moses tokeniser for 'txt'."""
    for name in ("ref.txt", "hyp.txt"):
        (tmp_path / name).write_text("ein Haus\n")
    rc, _, err = cli("score", "--ref", str(tmp_path / "ref.txt"), "--hyp", str(tmp_path / "hyp.txt"))
    assert rc == 2 and err.startswith("lskd-bench: error: give --lang"), err


@pytest.mark.slow
def test_report_commands_with_an_unwritable_output_are_one_line_errors(tmp_path, cli):
    runs = tmp_path / "runs"
    rc, _, err = cli(
        "run",
        "--out",
        str(runs),
        "--alphas",
        "0.1",
        "--temperatures",
        "1",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--no-progress",
    )
    assert rc == 0, err
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the output's folder should be
    for argv in (
        ["leaderboard", "--out", str(blocker / "lb")],
        ["compare", "--out", str(blocker / "cmp")],
        ["plot", "--out", str(blocker / "curves")],
    ):
        rc, _, err = cli(*argv, "--runs", str(runs))
        assert rc == 2 and err.startswith("lskd-bench: error: output directory ") and err.count("\n") == 1, (argv, err)


def test_score_names_a_missing_file_before_asking_for_the_language(tmp_path, cli):
    (tmp_path / "hyp.txt").write_text("a\n")
    rc, _, err = cli("score", "--ref", str(tmp_path / "nope.txt"), "--hyp", str(tmp_path / "hyp.txt"))
    assert rc == 2 and f"cannot read {tmp_path / 'nope.txt'}: no such file" in err


def test_translate_cell_name_suggests_the_close_finished_cell(tmp_path, cli):
    d = tmp_path / "runs" / "iwslt_ende" / "teacher_transformer_micro_a0_s0-0123abcd"
    d.mkdir(parents=True)
    (d / "result.json").write_text("{}")
    rc, _, err = cli("translate", "--runs", str(tmp_path / "runs"), "--cell", "teacher_transformer_micro_a0")
    assert rc == 2 and "(did you mean teacher_transformer_micro_a0_s0?)" in err


def _help_of(option: str, schemas=None) -> str:
    import argparse

    from lskd_bench.cli.options import add_config_options

    parser = argparse.ArgumentParser()
    add_config_options(parser, schemas)
    return next(a for a in parser._actions if option in a.option_strings).help


def test_run_help_shows_the_schemas_defaults_not_its_own():
    """The CLI help reads defaults from the schema (the one place a default lives): change a schema default
    and the help text follows."""
    import dataclasses

    from lskd_bench import schema

    assert schema.default_text(schema.RUN, "grid.alphas") == "0,0.1"
    assert "default: 0,0.1)" in _help_of("--alphas") and "default: 1,2,3,64)" in _help_of("--temperatures")
    assert "(alpha 0.1, T 1)" in _help_of("--grid") and "default 60 s" in _help_of("--log-format")
    assert "(default 1: pure KD" in _help_of("--kd-lambda")
    temps = dataclasses.replace(schema.field_at(schema.RUN, "grid.temperatures"), default=[1.0, 4.0])
    patched = schema.RUN.extend({"grid": schema.GRID.extend({"temperatures": temps})})
    assert "default: 1,4)" in _help_of("--temperatures", [patched])
    with pytest.raises(KeyError):
        schema.field_at(schema.RUN, "grid.nope")


def _typed_value(field, kind):
    """A value of ``kind`` that ``field`` accepts and that differs from its default (what a test types)."""
    if field.choices:
        return next(c for c in field.choices if c != field.default and [c] != field.default)
    if kind is str:
        return "x1"
    lo = field.min if field.min is not None else 0
    hi = field.max if field.max is not None else lo + 10
    value = kind((lo + hi) / 2) if kind is float else int(lo) + 2
    return value + 1 if value == field.default or [value] == field.default else value


def test_every_generated_option_lands_on_its_schema_key_and_only_there(capsys):
    """For every option generated from a schema Flag: argparse sets no default (the schema's applies), its help
    is the schema's (the Field's description or the Flag's own words, the keys it sets), and ``--flag value``
    changes exactly its key(s) in the resolved config, to that value, marked as set by the command line."""
    import argparse
    import re
    from pathlib import Path

    from lskd_bench.cli.options import add_config_options, run_overrides, schema_options
    from lskd_bench.config import full_schema, resolve_layers
    from lskd_bench.schema import field_at, flatten
    from lskd_bench.tasks import get_task

    options = schema_options()
    names = {o.flag.name for o in options}
    # the options the hand-written CLI had, every one now generated from its key
    assert {"--alphas", "--epochs", "--kd-lambda", "--no-t-squared", "--data-root", "--pair", "--gpus"} <= names
    epochs = next(o for o in options if o.flag.name == "--epochs")
    assert epochs.keys == ("teacher.epochs", "student.epochs")
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    empty = parser.parse_args([])
    assert run_overrides(empty) == {}
    tasks = [get_task(n) for n in TASKS.names()]
    for opt in options:
        action = next(a for a in parser._actions if opt.flag.name in a.option_strings)
        assert action.default is None and getattr(empty, opt.dest) is None, opt.flag.name
        words = re.split(r"\{default[^}]*\}", opt.flag.help or opt.field.help)  # around the defaults it names
        assert all(w in action.help.replace("%%", "%") for w in words), opt.flag.name
        assert action.help.endswith("]") and all(k in action.help.rsplit("[", 1)[1] for k in opt.keys)
        task = next(t for t in tasks if all(_has(full_schema(t), k) for k in opt.keys))
        if opt.flag.const is not None:
            argv, expected = [opt.flag.name], opt.flag.const
        else:
            kind = opt.field.type[0] if isinstance(opt.field.type, list) else opt.field.type
            value = _typed_value(opt.field, kind)
            argv = [opt.flag.name, str(value)]
            expected = [value] if isinstance(opt.field.type, list) else value
            if opt.flag.path:
                expected = str(Path(value).absolute())
        layer = run_overrides(parser.parse_args(argv))
        base = flatten(resolve_layers(task, []).cfg)
        res = resolve_layers(task, [("command line", layer)])
        flat = flatten(res.cfg)
        changed = {k for k in flat if flat[k] != base[k]}
        also = {"executor"} if opt.flag.name == "--nproc-per-node" else set()  # N > 1 selects torchrun
        assert changed == set(opt.keys) | also, (opt.flag.name, changed)
        for key in opt.keys:
            assert flat[key] == field_at(full_schema(task), key).normalise(expected, key), opt.flag.name
            assert res.provenance[key] == "command line"
        if also:
            assert flat["executor"] == "torchrun"


def _has(schema, key) -> bool:
    from lskd_bench.schema import field_at

    try:
        field_at(schema, key)
    except KeyError:
        return False
    return True


def test_a_field_with_a_flag_gets_its_option_without_cli_code(monkeypatch, cli):
    """A plugin (here a KD method) that declares a Flag on a key of its section gets a command-line option: in
    the help of run, config and check-data, with its description and default, setting that key."""
    import argparse

    from lskd_bench.cli import build_parser
    from lskd_bench.cli.options import add_config_options, run_overrides
    from lskd_bench.methods import HintonKD
    from lskd_bench.schema import RUN, Field, Flag, Section

    class Toy(HintonKD):
        params = Section(
            {
                "beta": Field(
                    float, 0.5, "weight of the toy term", min=0.0, flags=(Flag("--toy-beta", show_default=True),)
                )
            }
        )

    METHODS.names()  # the built-in methods registered first
    monkeypatch.setitem(METHODS._items, "toy", Toy)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("run", "config", "check-data"):
        assert "--toy-beta" in sub.choices[command].format_help()
    assert _help_of("--toy-beta") == "weight of the toy term (default: 0.5) [toy.beta]"
    rc, out, err = cli("config", "--toy-beta", "0.25")
    assert rc == 0, err
    assert "toy.beta: 0.25" in out and out.split("toy.beta: 0.25")[1].split("\n")[0].strip() == "# command line"
    rc, _, err = cli("config", "--toy-beta", "-1")
    assert rc == 2 and "toy.beta must be >= 0, got -1.0 (command line)" in err
    # and a key of the common schema: a new Field of RUN is an option of a parser built over it
    knob = RUN.extend({"knob": Field(int, 3, "a knob", min=1, flags=(Flag("--knob", show_default=True),))})
    assert _help_of("--knob", [knob]) == "a knob (default: 3) [knob]"
    parser = argparse.ArgumentParser()
    add_config_options(parser, [knob])
    assert run_overrides(parser.parse_args(["--knob", "5"])) == {"knob": 5}
    assert run_overrides(parser.parse_args([])) == {}


def test_a_flag_declared_twice_differently_is_refused():
    from lskd_bench.cli.options import schema_options
    from lskd_bench.schema import Field, Flag, Section

    twice = Section(
        {"a": Field(int, 1, "a", flags=(Flag("--n"),)), "b": Field(int, 1, "b", flags=(Flag("--n", note="x"),))}
    )
    with pytest.raises(ValueError, match="--n is declared twice differently"):
        schema_options([twice])
    switch = Section({"on": Field(bool, False, "on", flags=(Flag("--on"),))})
    with pytest.raises(ValueError, match="needs a const"):
        schema_options([switch])
