"""``lskd_bench.leaderboard.reference``: the paper's values beside ours, deltas, and the claims with Welch's test."""

from __future__ import annotations

import pytest

from lskd_bench import store
from lskd_bench.leaderboard import collect, to_markdown

from ..fixtures import result


def imagenet_result(role, arch, alpha, T, seed, top1, h, task_name="imagenet", **changes):
    """A result whose recorded config is the task's recipe (the paper's), with ``changes`` (dotted keys)."""
    from lskd_bench.config import resolve_layers, set_dotted
    from lskd_bench.tasks import get_task

    r = result(role, arch, alpha, T, seed, top1, 90.0, h, "resnet50")
    r["cell"]["task"] = task_name
    task = get_task(task_name)
    over = {"data": {"root": f"/somewhere/{task_name}"}}
    for k, v in changes.items():
        set_dotted(over, k.replace("__", "."), v)
    r["run_config"] = resolve_layers(task, [("recipe", task.default_config()), ("test", over)]).cfg
    return r


EXPECTED_PAPER_MD = """\
### imagenet: resnet50 → resnet18 (kd)

| | α = 0.0 | α = 0.1 |
|---|---|---|
| Teacher (resnet50) | 76.00 / 90.00 (paper 76.13, -0.13) | 76.50 / 90.00 (paper 76.20, +0.30) |
| T = 1 | 71.00 / 90.00 (paper 71.49, -0.49) | **71.20 / 90.00** (paper 71.67, -0.47) |
| T = 64 | 67.00 / 90.00 (paper 66.19, +0.81) | 66.00 / 90.00 (paper 64.36, +1.64) |

Paper values: official README.md (ResNet-50 -> ResNet-18 KD); (paper P, ±D) = the paper's top1 and ours minus it \
(this grid runs the paper's recipe), ours at the paper's best epoch (official src/image_classification/, its \
imagenet/train_student_dali.py:403-409,426-428 and imagenet/train_teacher.py:312-318,337-339 (the best top-1 over \
epochs on val, with its top-5, logged as val/best_acc1, val/best_acc5)).

- Claim: at T = 1 the LS teacher (α = 0.1) gives the better student: ours **undetermined (1 seed)**: +0.20, n = 1; \
paper yes: +0.18 (one run per cell: no test)
- Claim: the LS teacher's student degrades faster from T = 1 to T = 64: ours **undetermined (1 seed)**: +1.20, n = 1; \
paper yes: +2.01 (one run per cell: no test)

Cells: top-1 accuracy (%) / top-5 accuracy (%) on the validation split, best evaluated epoch (as the paper). \
Bold: best student. With several seeds: mean ± sample standard deviation.
"""


def test_paper_values_deltas_and_claims_from_fixture_results(tmp_path):
    rows = [
        imagenet_result("teacher", "resnet50", 0.0, None, 0, 76.0, "t0"),
        imagenet_result("teacher", "resnet50", 0.1, None, 0, 76.5, "t1"),
        imagenet_result("student", "resnet18", 0.0, 1.0, 0, 71.0, "s0"),
        imagenet_result("student", "resnet18", 0.1, 1.0, 0, 71.2, "s1"),
        imagenet_result("student", "resnet18", 0.0, 64.0, 0, 67.0, "s2"),
        imagenet_result("student", "resnet18", 0.1, 64.0, 0, 66.0, "s3"),
    ]
    for i, r in enumerate(rows):
        store.write_json(tmp_path / "imagenet" / f"c{i}" / store.RESULT, r)
    assert to_markdown(collect(tmp_path)) == EXPECTED_PAPER_MD


def test_paper_deltas_use_the_papers_epoch_whatever_select_reports(tmp_path):
    """The paper reports the best epoch (train_student_dali.py:403-409): its (paper P, ±D) is ours at the selected
    epoch; with --select last the cell shows the last epoch and says the delta is the best epoch's."""
    rows = [
        imagenet_result("teacher", "resnet50", 0.0, None, 0, 75.0, "t0"),
        imagenet_result("student", "resnet18", 0.0, 1.0, 0, 70.0, "s0"),
    ]
    for r, best in zip(rows, (76.0, 71.0)):
        r["best"] = {"epoch": 80, "metrics": {"top1": best, "top5": 91.0}}
    for i, r in enumerate(rows):
        store.write_json(tmp_path / "imagenet" / f"c{i}" / store.RESULT, r)
    md = to_markdown(collect(tmp_path))
    assert "| Teacher (resnet50) | 76.00 / 91.00 (paper 76.13, -0.13) |" in md
    assert "| T = 1 | **71.00 / 91.00** (paper 71.49, -0.49) |" in md
    assert "ours at the paper's best epoch (official src/image_classification/" in md
    md = to_markdown(collect(tmp_path, "last"))
    assert "| Teacher (resnet50) | 75.00 / 90.00 (paper 76.13; ours at the best epoch 76.00, -0.13) |" in md
    assert "| T = 1 | **70.00 / 90.00** (paper 71.49; ours at the best epoch 71.00, -0.49) |" in md


def test_paper_values_only_where_the_recipe_is_the_papers(tmp_path):
    """A grid that changed the recipe (here the students' epochs, or a result recording no config) gets the
    paper's numbers once, labelled as a different setup, and no per-cell deltas."""
    rows = [
        imagenet_result("teacher", "resnet50", 0.0, None, 0, 76.0, "t0"),
        imagenet_result("teacher", "resnet50", 0.1, None, 0, 76.5, "t1"),
        imagenet_result("student", "resnet18", 0.0, 1.0, 0, 71.0, "s0", student__epochs=20, kd__lambda=0.5),
        imagenet_result("student", "resnet18", 0.1, 1.0, 0, 71.2, "s1", student__epochs=20, kd__lambda=0.5),
    ]
    for i, r in enumerate(rows):
        store.write_json(tmp_path / "imagenet" / f"c{i}" / store.RESULT, r)
    md = to_markdown(collect(tmp_path))
    assert "(paper" not in md
    assert (
        "Paper (different setup, not compared cell by cell): official README.md (ResNet-50 -> ResNet-18 KD): "
        "α = 0: teacher 76.13, T = 1 student 71.49; α = 0.1: teacher 76.20, T = 1 student 71.67 (top1), best epoch. "
        "This grid differs from the paper's recipe in kd.lambda, student.epochs."
    ) in md
    del rows[0]["run_config"]
    store.write_json(tmp_path / "imagenet" / "c0" / store.RESULT, rows[0])
    for i in (2, 3):
        store.write_json(
            tmp_path / "imagenet" / f"c{i}" / store.RESULT,
            imagenet_result(
                *[("student", "resnet18", 0.0, 1.0, 0, 71.0, "s0"), ("student", "resnet18", 0.1, 1.0, 0, 71.2, "s1")][
                    i - 2
                ]
            ),
        )
    md = to_markdown(collect(tmp_path))
    assert "(paper" not in md and "Some results of this grid do not record their config" in md


def test_claims_on_a_grid_that_contradicts_the_paper():
    from lskd_bench.leaderboard.reference import claims

    got = claims({(0.0, 1.0): [72.0], (0.1, 1.0): [71.0], (0.0, 3.0): [69.0], (0.1, 3.0): [69.5]})
    assert [c.holds for c in got] == [False, False]
    assert [c.verdict for c in got] == ["undetermined (1 seed)"] * 2  # one seed: a direction, no verdict
    got = claims(
        {(0.0, 1.0): [72.0, 72.5], (0.1, 1.0): [71.0, 71.2], (0.0, 3.0): [69.0, 69.1], (0.1, 3.0): [69.5, 69.0]}
    )
    assert [c.verdict for c in got] == ["no", "no"]
    assert [c.holds for c in claims({(0.1, 1.0): [71.0]})] == [None, None]  # one alpha: cannot tell
    # T = 1 only: claim 1 is decided, claim 2 is not, and does not read 'from T = 1 to T = 1'
    c1, c2 = claims({(0.0, 1.0): [72.0], (0.1, 1.0): [71.0]})
    assert (c1.holds, c2.holds) == (False, None) and "T = 1 to T = 1" not in c2.text and "one temperature" in c2.text


def _grid_results(root, values):
    """Student results of ``values[(alpha, T)] = [per-seed top-1]`` (and the two teachers) under ``root``."""
    rows = [
        result("teacher", "big", 0.0, None, 0, 99.0, 100.0, "t0", "big"),
        result("teacher", "big", 0.1, None, 0, 99.5, 100.0, "t1", "big"),
    ]
    for (a, t), vs in values.items():
        rows += [result("student", "small", a, t, s, v, 100.0, f"s{a}-{t}-{s}", "big") for s, v in enumerate(vs)]
    for i, r in enumerate(rows):
        store.write_json(root / "digits" / f"c{i}" / store.RESULT, r)


def test_a_one_seed_grid_never_claims_yes_or_no(tmp_path, cli):
    _grid_results(tmp_path, {(0.0, 1.0): [96.0], (0.1, 1.0): [98.0], (0.0, 64.0): [97.0], (0.1, 64.0): [90.0]})
    _rc, out, _ = cli("leaderboard", "--runs", str(tmp_path), "--out", str(tmp_path / "lb"))
    claims = [line for line in out.splitlines() if line.startswith("- Claim:")]
    assert len(claims) == 2 and all("ours **undetermined (1 seed)**: " in line for line in claims)
    assert "**yes**" not in out and "**no**" not in out
    rows = (tmp_path / "lb_claims.csv").read_text().splitlines()
    assert rows[1].split(",")[7:14] == ["undetermined (1 seed)", "yes", "2", "", "1", "1", ""]


def test_claim_p_values_are_welchs(tmp_path, cli):
    """Seeds with known means and variances: the printed and CSV p-values are scipy's Welch test."""
    from scipy import stats

    values = {
        (0.0, 1.0): [96.0, 97.0, 98.0],
        (0.1, 1.0): [97.0, 99.0, 98.5, 99.5],  # claim 1: LS +1.5
        (0.0, 64.0): [95.0, 97.0, 96.0],
        (0.1, 64.0): [90.0, 93.0, 91.0, 91.0],
    }
    _grid_results(tmp_path, values)
    rc, out, _ = cli("leaderboard", "--runs", str(tmp_path), "--out", str(tmp_path / "lb"))
    assert rc == 0
    p1 = stats.ttest_ind(values[(0.1, 1.0)], values[(0.0, 1.0)], equal_var=False).pvalue
    drops_ls = [a - b for a, b in zip(values[(0.1, 1.0)], values[(0.1, 64.0)])]  # per seed: T = 1 minus T = 64
    drops_0 = [a - b for a, b in zip(values[(0.0, 1.0)], values[(0.0, 64.0)])]
    p2 = stats.ttest_ind(drops_ls, drops_0, equal_var=False).pvalue
    assert (
        f"- Claim: at T = 1 the LS teacher (α = 0.1) gives the better student: ours **yes**: +1.50, "
        f"p = {p1:.3g}, n = 4 and 3: not significant"
    ) in out
    assert (
        f"- Claim: the LS teacher's student degrades faster from T = 1 to T = 64: ours **yes**: "
        f"+{sum(drops_ls) / 4 - sum(drops_0) / 3:.2f}, p = {p2:.3g}, n = 4 and 3: significant (p < 0.05)"
    ) in out
    import csv

    rows = list(csv.DictReader((tmp_path / "lb_claims.csv").open()))
    assert [float(r["p_value"]) for r in rows] == [pytest.approx(p1, rel=1e-5), pytest.approx(p2, rel=1e-5)]
    assert [(r["verdict"], r["n_ls"], r["n_0"], r["significant"]) for r in rows] == [
        ("yes", "4", "3", "no"),
        ("yes", "4", "3", "yes"),
    ]


@pytest.mark.parametrize(
    "task_name, student, paper",
    [
        ("cub200", "resnet18", ["81.58", "82.07", "80.17", "80.95", "73.61", "67.16"]),  # README.md:86, :87, :90
        ("cub200", "resnet50", ["81.58", "82.07", "82.90", "83.74", "79.78", "77.21"]),  # README.md:95, :96, :99
        ("cub200_compact", "mobilenetv2_100", ["81.58", "82.07", "81.14", "81.73", "75.44", "70.44"]),  # :107-111
    ],
)
def test_cub_paper_tables_and_deltas(tmp_path, task_name, student, paper):
    """CUB grids with the paper's recipe print the official README's CUB and compact-student numbers cell by cell
    (a resnet50 student is the paper's other CUB table, not a different setup)."""
    over = {} if student in ("resnet18", "mobilenetv2_100") else {"student__arch": student}
    rows = [
        imagenet_result("teacher", "resnet50", 0.0, None, 0, 80.0, "t0", task_name),
        imagenet_result("teacher", "resnet50", 0.1, None, 0, 80.0, "t1", task_name),
    ]
    rows += [
        imagenet_result("student", student, a, t, 0, 70.0, f"s{a}{t}", task_name, **over)
        for a in (0.0, 0.1)
        for t in (1.0, 64.0)
    ]
    for i, r in enumerate(rows):
        store.write_json(tmp_path / task_name / f"c{i}" / store.RESULT, r)
    md = to_markdown(collect(tmp_path))
    teacher_row, t1_row, t64_row = [line for line in md.splitlines() if line.startswith(("| Teacher", "| T = "))]
    got = [
        cell.split("(paper ")[1].split(",")[0]
        for row in (teacher_row, t1_row, t64_row)
        for cell in row.split(" | ")[1:]
    ]
    assert got == paper
    assert f"(paper {paper[0]}, {80.0 - float(paper[0]):+.2f})" in teacher_row
    assert "Paper values: official src/image_classification/README.md:" in md and "different setup" not in md


def test_every_reference_records_its_sources_selection_rule():
    """Each published number carries the epoch its source reports, with the file:line that shows it: RepDistiller
    the last (train_student.py:333-334), mdistiller and logit standardisation the best (trainer.py's best_acc), the
    paper the best; mdistiller's CIFAR-100 KD numbers are RepDistiller's, number for number, hence the last."""
    import re

    from lskd_bench.leaderboard.feature_reference import load
    from lskd_bench.leaderboard.reference import kd_references, references, selection_of

    refs = kd_references()
    for r in refs:
        assert r.selection.rule in ("best", "last") and re.search(r":\d+", r.selection.source), r
    tag = {r: r.source[:3] for r in refs}
    assert {r.selection.rule for r in refs if tag[r] == "[R]"} == {"last"}
    assert "[R] train_student.py:333-334" in next(r for r in refs if tag[r] == "[R]").selection.source
    assert {r.selection.rule for r in refs if tag[r] == "[S]"} == {"best"}
    (simkd,) = [r for r in refs if tag[r] == "[D]"]  # SimKD's authors keep the best epoch's metrics
    assert (simkd.method, simkd.pair, simkd.top1, simkd.selection.rule) == (
        "simkd",
        "resnet32x4-resnet8x4",
        78.08,
        "best",
    )
    assert "train_student.py:393-410" in simkd.selection.source and "-c 0 -d 0 -b 1" in simkd.recipe
    mdist = [r for r in refs if tag[r] == "[M]"]
    repd = load()["pairs"]
    for r in mdist:
        if r.task == "cifar100" and r.method == "kd":
            assert r.selection.rule == "last" and r.top1 == repd[r.pair]["methods"]["kd"]["top1"], r
        else:
            assert r.selection.rule == "best" and "trainer.py:61-62,88-90" in r.selection.source, r
    assert {r.selection.rule for r in references()} == {"best"}
    assert {r.selection.select for r in references()} == {"selected"}
    with pytest.raises(ValueError, match="must be one of best, last"):
        selection_of({"rule": "final", "source": "x.py:1"}, "t")
    with pytest.raises(ValueError, match="has no source"):
        selection_of({"rule": "last"}, "t")


def test_sources_line_names_each_source_with_its_whole_title():
    """A source's quoted title that wraps in the reference file's header is joined, not cut mid-title."""
    from lskd_bench.leaderboard.reference import kd_sources

    text = kd_sources()
    assert '"Benchmark Results on CIFAR-100"' in text and '"Main Benchmark Results"' in text
    assert 'DefangChen/SimKD@2b389c31ed7779aea31e7aaf0bb0f2d8b6ac2f01 README.md "Some results on CIFAR-100"' in text
    assert "overhaul-distillation" not in text  # [O]: unmapped rows only, never in the table
    assert text.count('"') % 2 == 0


def test_ls_verdict_is_one_wording_for_every_table():
    """ls_verdict words the LS answer for compare's table 2 (and compare_ls.csv), its feature-method table and the
    leaderboard's line alike: significant (Welch p < 0.05) better / worse by the metric's direction, otherwise
    "no significant difference" whatever the sign, "undetermined (1 seed)" with one value a side."""
    from scipy import stats

    from lskd_bench.leaderboard.reference import ls_answer_text, ls_verdict

    def higher(a, b):
        return a > b

    def lower(a, b):
        return a < b

    v0, v1 = [60.0, 61.0, 62.0], [64.0, 65.0, 66.0]
    p = stats.ttest_ind(v1, v0, equal_var=False).pvalue
    assert p < 0.05
    better = ls_verdict(v0, v1, higher)
    assert (better.verdict, better.direction, better.delta, better.n) == (
        "LS teacher better (significant, p < 0.05)", "LS teacher better", 4.0, (3, 3)
    )  # fmt: skip
    assert better.p_value == pytest.approx(p) and better.significant
    assert ls_verdict(v0, v1, lower).verdict == "LS teacher worse (significant, p < 0.05)"  # a loss: higher is worse
    close = ls_verdict([70.0, 72.0, 71.0], [69.0, 73.0, 71.5], higher)
    assert (close.verdict, close.direction, close.significant) == (
        "no significant difference",
        "LS teacher better",
        False,
    )
    one = ls_verdict([50.0], [40.0], higher)
    assert (one.verdict, one.p_value, one.significant) == ("undetermined (1 seed)", None, None)
    assert ls_answer_text([50.0], [40.0], higher) == "undetermined (1 seed): -10.00, n = 1"
    assert ls_answer_text(v0, v1, higher) == f"LS teacher better (significant, p < 0.05): +4.00, p = {p:.3g}, n = 3"
