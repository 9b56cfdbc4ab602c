"""``lskd_bench.schema``: the typed sections, the only place a default lives, and their one-line errors."""

from __future__ import annotations

import re

import pytest

from lskd_bench.errors import UsageError
from lskd_bench.schema import Field, Section


def _numeric_fields(section, prefix=""):
    from lskd_bench.schema import Section

    for key, f in section.fields.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(f, Section):
            yield from _numeric_fields(f, dotted)
        elif f.type in (int, float, [int], [float]):
            yield dotted, f


def test_every_numeric_key_of_every_task_has_an_upper_bound_and_refuses_nan():
    """Every int key refuses 10**20 (seeds, threads, sizes reach C ints: a traceback before), every float key NaN
    and infinity; the time keys that reach timers refuse 1e300. Checked over every task's full schema."""
    from lskd_bench.config import full_schema
    from lskd_bench.errors import UsageError
    from lskd_bench.tasks import get_task, task_names

    seen = 0
    for task in task_names():
        for key, f in _numeric_fields(full_schema(get_task(task))):
            scalar = f.type[0] if isinstance(f.type, list) else f.type
            bad = [10**20] if scalar is int else [float("nan"), float("inf"), -float("inf")]
            for v in bad:
                with pytest.raises(UsageError, match=re.escape(key)):
                    f.normalise([v] if isinstance(f.type, list) else v, key)
            seen += 1
    assert seen > 50
    for key in ("lock.heartbeat_s", "lock.stale_s", "lock.poll_s", "slurm.poll_s"):
        section, name = key.split(".")
        f = full_schema(get_task("digits")).fields[section].fields[name]
        with pytest.raises(UsageError, match=re.escape(key)):
            f.normalise(1e300, key)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--dry-run", "--seeds", "100000000000000000000"], "grid.seeds must be <= 2147483647, got 10000"),
        (
            ["run", "--dry-run", "--set", "lock.heartbeat_s=1e300"],
            "lock.heartbeat_s must be in [0.1, 3600], got 1e+300",
        ),
        (["run", "--dry-run", "--threads", "99999999999"], "threads must be in [1, 4096], got 99999999999"),
        (["run", "--dry-run", "--set", "teacher.seed=1e20"], "teacher.seed must be an integer"),
        (["analyze", "--target", "x", "--t1", "nan"], "--t1 must be > 0 and <= 1000000, got nan"),
        (["analyze", "--target", "x", "--limit", "100000000000000000000"], "--limit must be >= 1 and <= 2147483647"),
        (["visualize", "--per-class", "0"], "--per-class must be >= 1 and <= 2147483647, got 0"),
        (["translate", "--run", "x", "--lenpen", "nan"], "--lenpen must be >= -1000 and <= 1000, got nan"),
        (["translate", "--run", "x", "--max-len-a", "inf"], "--max-len-a must be >= 0 and <= 1000, got inf"),
        (["translate", "--run", "x", "--beam", "100000000000"], "--beam must be >= 1 and <= 1024"),
    ],
)
def test_huge_and_nan_options_are_one_line(tmp_path, cli, argv, needle):
    rc, _, err = cli(*argv, *(["--out", str(tmp_path / "runs")] if argv[0] == "run" else []))
    assert rc == 2 and err.count("\n") == 1 and needle in err, err


# ------------------------------------------------------------------------------------------ Field and Section
SMALL = Section(
    {
        "lr": Field(float, 0.1, min=0, min_exclusive=True),
        "mode": Field(str, "fast", choices=("fast", "slow")),
        "sub": Section({"epochs": Field(int, 3, min=1), "tags": Field([str], ["a"])}),
    }
)


def test_check_fills_every_default_and_normalises_types():
    assert SMALL.check({}) == {"lr": 0.1, "mode": "fast", "sub": {"epochs": 3, "tags": ["a"]}}
    out = SMALL.check({"lr": 1, "sub": {"epochs": 7}})
    assert out == {"lr": 1.0, "mode": "fast", "sub": {"epochs": 7, "tags": ["a"]}} and type(out["lr"]) is float
    out["sub"]["tags"].append("b")  # a default list is a copy, never the schema's own
    assert SMALL.defaults()["sub"]["tags"] == ["a"]


@pytest.mark.parametrize(
    "value, message",
    [
        ({"lr": -1.5}, "lr must be > 0, got -1.5"),
        ({"lr": "x"}, "lr must be a number, got 'x'"),
        ({"lr": True}, "lr must be a number, got True"),
        ({"mode": "slwo"}, "mode must be one of fast, slow, got 'slwo' (did you mean slow?)"),
        ({"sub": {"epochs": 0}}, "sub.epochs must be >= 1, got 0"),
        ({"sub": {"epochs": 2.5}}, "sub.epochs must be an integer, got 2.5"),
        ({"sub": {"tags": "a"}}, "sub.tags must be a list of strings, got 'a'"),
        ({"sub": {"epoch": 2}}, "unknown config key sub.epoch (did you mean sub.epochs?)"),
        ({"sub": 3}, "sub must be a mapping, got 3"),
    ],
)
def test_a_bad_value_is_one_message_naming_the_dotted_key(value, message):
    with pytest.raises(UsageError) as exc:
        SMALL.check(value)
    assert str(exc.value) == message


def test_identity_drops_the_keys_that_cannot_change_a_result():
    s = Section({"lr": Field(float, 0.1), "workers": Field(int, 2, identity=False), "sub": SMALL})
    full = s.check({})
    assert s.identity(full) == {"lr": 0.1, "sub": SMALL.check({})}


def test_the_run_schema_holds_the_defaults_the_config_command_prints():
    """The schema is the only place a default lives: a run's resolved config without overrides is the schema's
    defaults with the recipe's values over them."""
    from lskd_bench.config import full_schema
    from lskd_bench.tasks import get_task

    defaults = full_schema(get_task("digits")).defaults()
    assert defaults["grid"]["alphas"] == [0.0, 0.1] and defaults["kd"]["t_squared"] is True


def test_a_checked_config_reads_as_typed_attributes_and_names_a_wrong_key():
    import json
    import pickle

    import yaml

    from lskd_bench.methods import METHODS
    from lskd_bench.runners.grid import resolve_config

    cfg = resolve_config("digits", {}, {"student": {"lr": 1}, "kd": {"lambda": 0.5}})
    assert cfg.student.lr == cfg["student"]["lr"] == 1.0 and isinstance(cfg.student.lr, float)  # typed by the schema
    assert cfg.kd.lambda_ == 0.5 and cfg.grid.seeds == [0, 1, 2]
    with pytest.raises(AttributeError, match=r"no config key student\.lrr \(did you mean student\.lr\?\)"):
        _ = cfg.student.lrr
    # it stays the dict it was: JSON, YAML and pickle see a plain dict
    assert json.loads(json.dumps(cfg)) == cfg and yaml.safe_load(yaml.safe_dump(cfg)) == cfg
    assert type(pickle.loads(pickle.dumps(cfg))) is dict
    # a method built directly names its config key, not its class
    with pytest.raises(UsageError, match=r"^kd\.lambda must be in \[0, 1\], got 2\.0$"):
        METHODS.get("kd")({"lambda": 2})
