"""``lskd_bench.config``: YAML loading, override resolution with each value's source, and the identity hash."""

from __future__ import annotations

import re

import pytest


def test_config_command_prints_values_and_their_sources(tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("student:\n  epochs: 7\n")
    rc, out, err = cli("config", "--task", "digits", "--config", str(cfg), "--set", "teacher.lr=0.2", "--seeds", "0,1")
    assert rc == 0, err
    lines = {line.split(":", 1)[0]: line for line in out.splitlines()}
    assert re.fullmatch(r"teacher\.lr: 0\.2 +# command line", lines["teacher.lr"])
    assert re.fullmatch(rf"student\.epochs: 7 +# config {re.escape(str(cfg))}", lines["student.epochs"])
    assert re.fullmatch(r"teacher\.epochs: 30 +# recipe lskd_bench/configs/digits\.yaml", lines["teacher.epochs"])
    assert re.fullmatch(r"grid\.seeds: \[0, 1\] +# command line", lines["grid.seeds"])
    assert re.fullmatch(r"grid\.alphas: \[0\.0, 0\.1\] +# default", lines["grid.alphas"])
    assert re.fullmatch(r"kd\.lambda: 1\.0 +# recipe lskd_bench/configs/digits\.yaml", lines["kd.lambda"])
    assert re.fullmatch(r"kd\.t_squared: true +# default", lines["kd.t_squared"])


def test_unknown_key_in_config_file_names_the_file(tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  epoch: 5\n")
    rc, _, err = cli("run", "--out", str(tmp_path / "runs"), "--config", str(cfg))
    assert rc == 2 and err.count("\n") == 1
    assert f"unknown config key teacher.epoch (did you mean teacher.epochs?) (config {cfg})" in err
    assert not (tmp_path / "runs").exists()


def test_typo_does_not_change_cell_hashes(tiny_cfg):
    """A key nothing reads cannot reach a cell's identity: it is refused before planning."""
    from lskd_bench.errors import UsageError
    from lskd_bench.runners.grid import resolve_config

    from .fixtures import tiny_overrides

    with pytest.raises(UsageError, match="did you mean teacher.epochs"):
        resolve_config("digits", {}, {**tiny_overrides(), "teacher": {"epochs": 1, "epoch": 5}})


def test_non_identity_keys_keep_the_hash(tiny_cfg):
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config

    from .fixtures import tiny_overrides

    other = resolve_config(
        "digits",
        {},
        {
            **tiny_overrides(),
            "eval_batch_size": 7,
            "num_workers": 1,
            "student": {"epochs": 1, "eval_every": 5, "checkpoint_every": 3},
        },
    )
    assert [c.hash for c in plan_cells(other)] == [c.hash for c in plan_cells(tiny_cfg)]
    changed = resolve_config("digits", {}, {**tiny_overrides(), "student": {"epochs": 1, "lr": 0.01}})
    assert {c.hash for c in plan_cells(changed) if c.role == "teacher"} == {
        c.hash for c in plan_cells(tiny_cfg) if c.role == "teacher"
    }
    assert {c.hash for c in plan_cells(changed) if c.role == "student"}.isdisjoint(
        {c.hash for c in plan_cells(tiny_cfg)}
    )


def test_yaml_key_given_twice_is_one_line(tmp_path, cli):
    """A second 'teacher:' block used to drop the first silently."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  epochs: 7\nstudent:\n  epochs: 2\nteacher:\n  lr: 0.2\n")
    rc, _, err = cli("config", "--config", str(cfg))
    assert rc == 2 and err == (
        f"lskd-bench: error: config {cfg}: key 'teacher' appears twice in one mapping (lines 1 and 5); merge the two\n"
    )
    cfg.write_text("teacher:\n  epochs: 7\n  epochs: 8\n")
    rc, _, err = cli("run", "--dry-run", "--config", str(cfg), "--out", str(tmp_path / "runs"))
    assert rc == 2 and "key 'epochs' appears twice in one mapping (lines 2 and 3)" in err
