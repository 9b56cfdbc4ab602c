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


def test_run_help_shows_the_schemas_defaults_not_its_own(monkeypatch):
    """The CLI help reads defaults from the schema (the one place a default lives): change a schema default
    and the help text follows."""
    import argparse
    import dataclasses

    from lskd_bench import cli, schema

    def help_of(option: str) -> str:
        parser = argparse.ArgumentParser()
        cli._add_config_options(parser)
        action = next(a for a in parser._actions if option in a.option_strings)
        return action.help

    assert schema.default_text(schema.RUN, "grid.alphas") == "0,0.1"
    assert "(default: 0,0.1)" in help_of("--alphas") and "(default: 1,2,3,64)" in help_of("--temperatures")
    assert "(alpha 0.1, T 1)" in help_of("--grid") and "default 60 s" in help_of("--log-format")
    temps = dataclasses.replace(schema.field_at(schema.RUN, "grid.temperatures"), default=[1.0, 4.0])
    monkeypatch.setattr(cli, "RUN", schema.RUN.extend({"grid": schema.GRID.extend({"temperatures": temps})}))
    assert "(default: 1,4)" in help_of("--temperatures")
    with pytest.raises(KeyError):
        schema.field_at(schema.RUN, "grid.nope")
