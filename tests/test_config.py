"""``lskd_bench.config``: YAML loading, override resolution with each value's source, and the identity hash."""

from __future__ import annotations

import re

import pytest

from lskd_bench.config import config_hash, describe_config, parse_override, resolve_layers, set_dotted
from lskd_bench.errors import UsageError
from lskd_bench.tasks import get_task


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

    with pytest.raises(UsageError, match=r"did you mean teacher\.epochs"):
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


# ------------------------------------------------------------------------------------------ resolution and hash
def test_later_layers_win_and_each_value_names_its_layer():
    task = get_task("digits")
    r = resolve_layers(
        task,
        [
            ("config a.yaml", {"teacher": {"epochs": 5, "lr": 0.2}}),
            ("command line", {"teacher": {"epochs": 7}}),
            ("empty", {}),
        ],
    )
    assert r.cfg["teacher"]["epochs"] == 7 and r.provenance["teacher.epochs"] == "command line"
    assert r.cfg["teacher"]["lr"] == 0.2 and r.provenance["teacher.lr"] == "config a.yaml"
    assert r.provenance["student.epochs"] == "default" and "empty" not in r.provenance.values()
    assert "teacher.epochs: 7" in describe_config(r) and "# command line" in describe_config(r)


def test_a_bad_layer_is_named_in_the_error():
    with pytest.raises(UsageError, match=r"^teacher\.epochs must be >= 1, got 0 \(command line\)$"):
        resolve_layers(get_task("digits"), [("config a.yaml", {}), ("command line", {"teacher": {"epochs": 0}})])


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("teacher.lr=1e-4", "teacher.lr", 1e-4),  # YAML 1.1 reads 1e-4 as a string
        ("grid.alphas=[0, 0.1]", "grid.alphas", [0, 0.1]),
        ("kd.t_squared=false", "kd.t_squared", False),
        ("data.root=/a=b", "data.root", "/a=b"),
    ],
)
def test_override_values_are_read_as_yaml(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("text", ["teacher.lr", "=3"])
def test_override_without_key_or_value_is_an_error(text):
    with pytest.raises(UsageError, match="--set expects KEY=VALUE"):
        parse_override(text)


def test_set_dotted_creates_the_sections_it_needs():
    cfg = {"teacher": 3}
    set_dotted(cfg, "teacher.lr", 0.1)
    set_dotted(cfg, "a.b.c", 1)
    assert cfg == {"teacher": {"lr": 0.1}, "a": {"b": {"c": 1}}}


def test_config_hash_ignores_key_order_and_sees_every_value():
    a = {"x": 1, "y": {"p": [1, 2], "q": "s"}}
    b = {"y": {"q": "s", "p": [1, 2]}, "x": 1}
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 12 and len(config_hash(a, 20)) == 20
    # pinned: sha256 of the compact, key-sorted JSON (the cell names of existing runs depend on it)
    assert config_hash(a) == "5545fff6237e"
    assert config_hash({**a, "x": 2}) != config_hash(a) and config_hash(
        {**a, "y": {"p": [2, 1], "q": "s"}}
    ) != config_hash(a)
