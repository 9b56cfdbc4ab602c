# ruff: noqa: E501  (the expected tables below are as wide as the output they compare with)
"""Leaderboard CSV and markdown from hand-written results."""

from __future__ import annotations

import re

import pytest

from lskd_bench import store
from lskd_bench.leaderboard import collect, to_csv, to_markdown, write_outputs

from ..fixtures import TINY_ARGS, lambda_sweep, result

FIXTURE = [
    result("teacher", "big", 0.0, None, 0, 99.0, 100.0, "t0", "big"),
    result("teacher", "big", 0.1, None, 0, 99.5, 100.0, "t1", "big"),
    result("baseline", "small", 0.0, None, 0, 95.0, 99.0, "b0"),
    result("student", "small", 0.0, 1.0, 0, 96.0, 99.5, "s1", "big"),
    result("student", "small", 0.0, 1.0, 1, 97.0, 99.7, "s2", "big"),
    result("student", "small", 0.1, 1.0, 0, 97.5, 99.9, "s3", "big"),
    result("student", "small", 0.0, 64.0, 0, 94.25, 99.0, "s4", "big"),
    result("student", "small", 0.1, 64.0, 0, 93.0, 98.5, "s5", "big"),
]

EXPECTED_CSV = """\
task,role,teacher_arch,student_arch,method,alpha,T,seed,top1,top5,select,epoch,epochs,wall_s,config_hash
digits,teacher,big,,ls,0.0,,0,99.000,100.000,selected,30,30,1.5,t0
digits,teacher,big,,ls,0.1,,0,99.500,100.000,selected,30,30,1.5,t1
digits,baseline,,small,ls,,,0,95.000,99.000,selected,30,30,1.5,b0
digits,student,big,small,kd,0.0,1.0,0,96.000,99.500,selected,30,30,1.5,s1
digits,student,big,small,kd,0.0,1.0,1,97.000,99.700,selected,30,30,1.5,s2
digits,student,big,small,kd,0.0,64.0,0,94.250,99.000,selected,30,30,1.5,s4
digits,student,big,small,kd,0.1,1.0,0,97.500,99.900,selected,30,30,1.5,s3
digits,student,big,small,kd,0.1,64.0,0,93.000,98.500,selected,30,30,1.5,s5
"""

EXPECTED_MD = """\
### digits: big → small (kd)

| | α = 0.0 | α = 0.1 |
|---|---|---|
| Teacher (big) | 99.00 / 100.00 | 99.50 / 100.00 |
| T = 1 | 96.50 ± 0.71 / 99.60 ± 0.14 | **97.50 / 99.90** |
| T = 64 | 94.25 / 99.00 | 93.00 / 98.50 |

Student without KD (small, cross-entropy): 95.00 / 99.00

- Claim: at T = 1 the LS teacher (α = 0.1) gives the better student: ours **undetermined (1 seed)**: +1.00, n = 1 and 2
- Claim: the LS teacher's student degrades faster from T = 1 to T = 64: ours **undetermined (1 seed)**: +2.75, n = 1

Cells: top-1 accuracy (%) / top-5 accuracy (%) on the validation split, best evaluated epoch (as the paper). Bold: best student. With several seeds: mean ± sample standard deviation.
"""


def write_fixture(root):
    for i, r in enumerate(FIXTURE):
        store.write_json(root / "digits" / f"cell{i}" / store.RESULT, r)


def test_leaderboard_csv_and_markdown_match_expected_text(tmp_path):
    write_fixture(tmp_path)
    rows = collect(tmp_path)
    assert to_csv(rows) == EXPECTED_CSV
    assert to_markdown(rows) == EXPECTED_MD


def test_write_outputs_and_cli(tmp_path, cli):
    write_fixture(tmp_path)
    write_outputs(collect(tmp_path), tmp_path / "board.md")
    assert (tmp_path / "board.csv").read_text() == EXPECTED_CSV
    md = (tmp_path / "board.md").read_text()
    assert md.startswith(EXPECTED_MD + "\nEnvironment:\n")
    assert "- torch not recorded\n" in md  # the fixture's results predate environment recording
    assert "bit-identical when rerun on one machine" in md
    rc, out, _ = cli("leaderboard", "--runs", str(tmp_path), "--out", str(tmp_path / "lb"))
    assert rc == 0 and out == md
    assert (tmp_path / "lb.csv").read_text() == EXPECTED_CSV


def test_latest_result_wins_in_markdown_but_csv_keeps_all(tmp_path):
    write_fixture(tmp_path)
    newer = result("student", "small", 0.1, 1.0, 0, 90.0, 95.0, "s3new", "big")
    newer["finished_at"] = "2026-11-25T00:00:00+00:00"
    store.write_json(tmp_path / "digits" / "newer" / store.RESULT, newer)
    rows = collect(tmp_path)
    assert len(rows) == len(FIXTURE) + 1
    md = to_markdown(rows)
    assert "| T = 1 | **96.50 ± 0.71 / 99.60 ± 0.14** | 90.00 / 95.00 |" in md


def test_a_lambda_sweep_is_two_tables_never_averaged(tmp_path):
    """kd at lambda 1 (seeds 0-2: 90, 91, 92) and 0.5 (seeds 3-5: 80, 81, 82) in one run dir: a table each (91 and
    81, n 3 each), not one kd table of 6 seeds averaging 86. At T = 1 (added here) lambda 1 gains 3 points from the
    LS teacher (90-92 -> 93-95) and lambda 0.5 none (80-82 both): claim 1's delta per config, +3 and 0, n = 3."""
    import csv
    import io

    from lskd_bench.leaderboard import claims_csv

    lambda_sweep(tmp_path)
    for lam, seeds, gain in ((1.0, (0, 1, 2), 3.0), (0.5, (3, 4, 5), 0.0)):
        for a in (0.0, 0.1):
            for s in seeds:
                v = (90.0 if lam == 1.0 else 80.0) + s % 3 + (gain if a else 0.0)
                r = result("student", "small", a, 1.0, s, v, 99.0, f"t1-{lam}-{a}-{s}", "big", method="kd")
                r["config"] = {"method": {"lambda": lam}}
                store.write_json(tmp_path / "digits" / f"t1-{lam}-{a}-{s}" / store.RESULT, r)
    rows = collect(tmp_path)
    md = to_markdown(rows)
    tables = {t.split("\n", 1)[0]: t for t in md.split("### ")[1:]}
    assert sorted(tables) == ["digits: big → small (dkd)", "digits: big → small (kd) [kd.lambda = 0.5]",
                              "digits: big → small (kd) [kd.lambda = 1]"]  # fmt: skip
    assert (
        "| T = 4 | **81.00 ± 1.00 / 99.00 ± 0.00** | **81.00 ± 1.00 / 99.00 ± 0.00** |"
        in tables["digits: big → small (kd) [kd.lambda = 0.5]"]
    )
    assert (
        "| T = 4 | 91.00 ± 1.00 / 99.00 ± 0.00 | 91.00 ± 1.00 / 99.00 ± 0.00 |"
        in tables["digits: big → small (kd) [kd.lambda = 1]"]
    )
    assert (
        "| T = 1 | 91.00 ± 1.00 / 99.00 ± 0.00 | **94.00 ± 1.00 / 99.00 ± 0.00** |"
        in tables["digits: big → small (kd) [kd.lambda = 1]"]
    )
    assert "86.00" not in md
    claims = list(csv.DictReader(io.StringIO(claims_csv(rows))))
    first = {(c["method"], c["config"]): (c["delta"], c["n_ls"], c["n_0"]) for c in claims if c["claim"] == "1"}
    assert first == {
        ("dkd", ""): ("", "0", "0"),
        ("kd", "kd.lambda = 0.5"): ("0", "3", "3"),
        ("kd", "kd.lambda = 1"): ("3", "3", "3"),
    }


def test_a_config_value_from_result_json_stays_in_its_markdown_cell():
    from lskd_bench.leaderboard import config_text

    assert config_text((("kd.lambda", 0.5), ("data.x", "a|b\nc"))) == "kd.lambda = 0.5, data.x = a\\|b c"


def test_csv_md_pair_keeps_dots_in_the_name(tmp_path):
    csv_path, md_path = store.write_csv_md(tmp_path / "eta_T1.5-T3", "a\n", "b\n")
    assert csv_path.name == "eta_T1.5-T3.csv" and md_path.read_text() == "b\n"
    csv_path, _ = store.write_csv_md(tmp_path / "board.md", "a\n", "b\n")
    assert csv_path.name == "board.csv"


@pytest.mark.slow
def test_leaderboard_with_only_the_baseline_finished(tmp_path, cli):
    rc, _, _err = cli(
        "run", "--out", str(tmp_path), *TINY_ARGS, "--set", "teacher.lr=1e30", "--set", "teacher.epochs=2"
    )
    assert rc == 1
    rc, out, _ = cli("leaderboard", "--runs", str(tmp_path))
    assert rc == 0 and "_No finished cells._" not in out
    assert re.search(
        r"### digits: cnn_tiny without KD\n\nStudent without KD \(cnn_tiny, cross-entropy\): \d+\.\d\d / ", out
    )
