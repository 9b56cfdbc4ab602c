# ruff: noqa: E501  (the expected tables below are as wide as the output they compare with)
"""``lskd-bench compare``: tables and significance from fixture results; a third-party method through its
entry point, run and compared like the zoo."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from lskd_bench import store
from lskd_bench.leaderboard.compare import welch_p

from ..fixtures import example_site, lambda_sweep, result

VALUES = {
    ("kd", 0.0, 1.0): [90, 91, 92], ("kd", 0.1, 1.0): [92, 93, 94], ("kd", 0.0, 4.0): [89, 90, 91], ("kd", 0.1, 4.0): [85, 86, 87],
    ("dkd", 0.0, 1.0): [95, 96, 97], ("dkd", 0.1, 1.0): [92.5, 93, 94.5], ("dkd", 0.0, 4.0): [90, 90.5, 91],
    ("dkd", 0.1, 4.0): [88, 89, 90], ("dist", 0.0, None): [93], ("dist", 0.1, None): [94],
}  # fmt: skip

EXPECTED = """\
### digits: methods vs kd (top1)

| method | α = 0.0, T = 1 | α = 0.0, T = 4 | α = 0.1, T = 1 | α = 0.1, T = 4 | α = 0.0, no T | α = 0.1, no T |
|---|---|---|---|---|---|---|
| teacher | 99.00 | 99.00 | 99.50 | 99.50 | 99.00 | 99.50 |
| no KD | 95.50 ± 0.50 | 95.50 ± 0.50 | 95.50 ± 0.50 | 95.50 ± 0.50 | 95.50 ± 0.50 | 95.50 ± 0.50 |
| kd | 91.00 ± 1.00 | 90.00 ± 1.00 | 93.00 ± 1.00 | 86.00 ± 1.00 | — | — |
| dist | — | — | — | — | **93.00** (+2.00, n/a) | **94.00** (+1.00, n/a) |
| dkd | **96.00 ± 1.00** (+5.00 **) | **90.50 ± 0.50** (+0.50) | **93.33 ± 1.04** (+0.33) | **89.00 ± 1.00** (+3.00 *) | — | — |

#### Is the LS teacher (α = 0.1) better than α = 0? (top1)

| method | T | α = 0 | α = 0.1 | Δ | Welch p | n | verdict |
|---|---|---|---|---|---|---|---|
| kd | 1 | 91.00 ± 1.00 | 93.00 ± 1.00 | +2.00 | 0.0705 | 3 | no significant difference |
| kd | 4 | 90.00 ± 1.00 | 86.00 ± 1.00 | -4.00 | 0.00805 | 3 | LS teacher worse (significant, p < 0.05) |
| dist | no T | 93.00 | 94.00 | +1.00 | n/a | 1 | undetermined (1 seed) |
| dkd | 1 | 96.00 ± 1.00 | 93.33 ± 1.04 | -2.67 | 0.033 | 3 | LS teacher worse (significant, p < 0.05) |
| dkd | 4 | 90.50 ± 0.50 | 89.00 ± 1.00 | -1.50 | 0.104 | 3 | no significant difference |

Cells: mean ± sample std over seeds (difference to the baseline method in the same cell; Welch's two-sided \
t-test over seeds: * p < 0.05, ** p < 0.01, n/a with a single seed). Methods without a temperature ('no T' \
columns) are compared with the baseline at T = 1. Bold: the best KD method in the column.
"""


def write_fixture(root: Path) -> None:
    rows = [
        result("teacher", "big", 0.0, None, 0, 99.0, 100.0, "t0", "big"),
        result("teacher", "big", 0.1, None, 0, 99.5, 100.0, "t1", "big"),
    ]
    rows += [result("baseline", "small", 0.0, None, s, v, 99.0, f"b{s}") for s, v in enumerate([95.0, 95.5, 96.0])]
    i = 0
    for (m, a, t), vs in VALUES.items():
        for s, v in enumerate(vs):
            rows.append(result("student", "small", a, t, s, float(v), 99.0, f"{m}{i}", "big", method=m))
            i += 1
    for i, r in enumerate(rows):
        store.write_json(root / "digits" / f"c{i}" / store.RESULT, r)


def test_welch_p_against_hand_computation():
    # kd vs dkd at alpha 0, T 1: t = 5 / sqrt(1/3 + 1/3) = 6.124, df = 4 (equal variances) -> p = 0.00361
    assert welch_p([95, 96, 97], [90, 91, 92]) == pytest.approx(0.003605, rel=1e-3)
    assert welch_p([93], [90, 91, 92]) is None
    assert welch_p([1, 1], [1, 1]) == 1.0


def test_compare_tables_csv_and_plot(tmp_path, cli):
    write_fixture(tmp_path)
    rc, out, err = cli("compare", "--runs", str(tmp_path))
    assert rc == 0, err
    assert out.startswith(EXPECTED + "\nEnvironment:\n") and "- CPU not recorded\n" in out  # the fixture has no env
    assert (tmp_path / "compare.md").read_text() == out
    lines = (tmp_path / "compare.csv").read_text().splitlines()
    assert lines[0] == "task,metric,method,alpha,T,n,mean,std,baseline,baseline_mean,delta,p_value"
    assert "digits,top1,dkd,0,1,3,96,1,kd,91,5,0.00360" in (tmp_path / "compare.csv").read_text()
    assert len(lines) == 1 + 10
    ls = (tmp_path / "compare_ls.csv").read_text()
    assert ls.splitlines()[0] == (
        "task,metric,method,T,alpha_ls,alpha_0,mean_ls,mean_0,delta,p_value,n_ls,n_0,direction,significant,verdict"
    )
    assert 'digits,top1,kd,4,0.1,0,86,90,-4,0.00804989,3,3,LS teacher worse,yes,"LS teacher worse (significant' in ls
    assert "digits,top1,dist,,0.1,0,94,93,1,,1,1,LS teacher better,,undetermined (1 seed)" in ls
    png = (tmp_path / "compare_digits.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_never_averages_cells_whose_config_differs(tmp_path, cli):
    """A sweep of kd.lambda in one run dir: kd at lambda 1 (seeds 0-2: 90, 91, 92) and lambda 0.5 (seeds 3-5: 80,
    81, 82) are two rows with their own means (91 and 81), not one kd row of 6 seeds averaging 86; dkd (95, 96, 97)
    is compared with the baseline's first config (lambda 0.5, named in the title): +15."""
    lambda_sweep(tmp_path)
    rc, out, err = cli("compare", "--runs", str(tmp_path))
    assert rc == 0, err
    assert "### digits: methods vs kd (kd.lambda = 0.5) (top1)" in out
    assert "| method | kd.lambda | α = 0.0, T = 4 | α = 0.1, T = 4 |" in out
    assert "| kd | 0.5 | 81.00 ± 1.00 | 81.00 ± 1.00 |" in out  # the baseline's row: no difference to itself
    assert "| kd | 1 | 91.00 ± 1.00 (+10.00 **) | 91.00 ± 1.00 (+10.00 **) |" in out
    assert "| dkd | — | **96.00 ± 1.00** (+15.00 **) | **96.00 ± 1.00** (+15.00 **) |" in out
    cells = list(csv.DictReader(io.StringIO((tmp_path / "compare.csv").read_text())))
    kd = sorted((c["kd.lambda"], c["alpha"], c["n"], c["mean"]) for c in cells if c["method"] == "kd")
    assert kd == [("0.5", "0", "3", "81"), ("0.5", "0.1", "3", "81"), ("1", "0", "3", "91"), ("1", "0.1", "3", "91")]
    assert {c["baseline_config"] for c in cells} == {"kd.lambda = 0.5"}
    from lskd_bench.leaderboard import collect
    from lskd_bench.leaderboard.compare import Comparison

    cmp = Comparison(collect(tmp_path), "digits", "top1", None)  # from the leaderboard's rows alone (the report's)
    assert [cmp.label(r) for r in cmp.rows] == ["kd (kd.lambda = 0.5)", "kd (kd.lambda = 1)", "dkd"]
    ls = list(csv.DictReader(io.StringIO((tmp_path / "compare_ls.csv").read_text())))
    assert sorted((r["method"], r["kd.lambda"], r["n_0"]) for r in ls) == [
        ("dkd", "", "3"),
        ("kd", "0.5", "3"),
        ("kd", "1", "3"),
    ]


def test_compare_errors(tmp_path, cli):
    write_fixture(tmp_path)
    rc, _, err = cli("compare", "--runs", str(tmp_path), "--baseline", "nkd")
    assert rc == 2 and "baseline method 'nkd' has no finished students in task 'digits' (found: dist, dkd, kd)" in err
    rc, _, err = cli("compare", "--runs", str(tmp_path), "--metric", "bleu")
    assert rc == 2 and "metric 'bleu' is not in the results of task 'digits' (have: top1, top5)" in err


@pytest.mark.slow
def test_third_party_method_through_entry_point(tmp_path):
    """The example package, made importable with a .dist-info entry-point file (what pip install writes),
    is run through `lskd-bench run` against the zoo's teachers and compared."""
    env = example_site(
        tmp_path, "third_party_method", "lskd_example_method", "reverse_kd = lskd_example_method:ReverseKD"
    )
    runs = tmp_path / "runs"
    base = [sys.executable, "-m", "lskd_bench"]
    p = subprocess.run(
        [
            *base,
            "run",
            "--out",
            str(runs),
            "--methods",
            "kd,reverse_kd",
            "--alphas",
            "0.1",
            "--temperatures",
            "1,2",
            "--seeds",
            "0,1",
            "--epochs",
            "2",
            "--no-progress",
            "--set",
            "reverse_kd.lambda=0.7",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "### digits: cnn_wide → cnn_tiny (reverse_kd)" in p.stdout
    assert "11 cells: trained 11" in p.stdout  # 1 teacher + 2 baselines + 2 methods x 2 T x 2 seeds
    p = subprocess.run([*base, "compare", "--runs", str(runs)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "| reverse_kd |" in p.stdout and "| kd |" in p.stdout
    p = subprocess.run(
        [*base, "run", "--out", str(runs), "--set", "reverse_kd.lamda=0.7"], env=env, capture_output=True, text=True
    )
    assert p.returncode == 2 and "did you mean reverse_kd.lambda?" in p.stderr


def test_published_references_beside_ours():
    """The mdistiller rows of a pair the run trained, beside our alpha = 0 students at the reference's T, at the
    epoch of the reference's rule (mdistiller's CIFAR KD numbers are RepDistiller's: the last epoch)."""
    from lskd_bench.leaderboard.compare import reference_rows, reference_table
    from lskd_bench.leaderboard.reference import kd_references

    def row(method, alpha, T, seed, top1, s_arch="resnet8x4"):
        return {
            "task": "cifar100",
            "role": "student",
            "teacher_arch": "resnet32x4",
            "student_arch": s_arch,
            "method": method,
            "alpha": alpha,
            "T": T,
            "seed": seed,
            "metrics": {"top1": top1},
            "_by_select": {"selected": {"top1": top1 + 1.0}, "last": {"top1": top1}},  # best epoch: 1 point up
            "_finished_at": seed,
        }

    rows = [
        row("kd", 0.0, 4.0, 0, 73.0),
        row("kd", 0.0, 4.0, 1, 74.0),
        row("kd", 0.1, 4.0, 0, 10.0),
        row("kd", 0.0, 2.0, 0, 10.0),
        row("dkd", 0.0, 2.0, 0, 70.0),
        row("kd", 0.0, 4.0, 0, 50.0, "resnet8"),
    ]
    refs = {r["method"]: r for r in reference_rows(rows, "cifar100", "top1")}
    assert set(refs) == {"kd", "dkd"}  # kd_std was not run; resnet32x4 -> resnet8 has no reference
    kd = refs["kd"]
    assert (kd["pair"], kd["T"], kd["reference"], kd["n"], kd["mean"]) == ("resnet32x4-resnet8x4", 4.0, 73.33, 2, 73.5)
    assert (kd["rule"], refs["dkd"]["rule"]) == ("last", "best")
    assert kd["delta"] == pytest.approx(73.5 - 73.33) and kd["source"] == "[M] README.md:54"
    assert refs["dkd"]["reference"] == 76.32 and refs["dkd"]["n"] == 0 and refs["dkd"]["mean"] is None  # T 4 not run
    text = reference_table(list(refs.values()))
    assert "| resnet32x4-resnet8x4 | kd | α = 0, T = 4 | last epoch | 73.33 | 73.50 ± 0.71 (n=2) | +0.17 |" in text
    assert "| resnet32x4-resnet8x4 | dkd | α = 0, T = 4 | best epoch | 76.32 | not run | — |" in text
    assert "megvii-research/mdistiller@a08d46f" in text
    assert reference_rows(rows, "cifar100", "top5") == []
    # every reference names a pair the task offers, with its archs
    from lskd_bench.tasks import get_task

    for r in kd_references():
        pairs = get_task(r.task).pairs()
        assert r.pair in pairs, r
        assert (pairs[r.pair]["teacher"]["arch"], pairs[r.pair]["student"]["arch"]) == (r.teacher_arch, r.student_arch)


def test_compare_says_which_methods_have_per_pair_settings(tmp_path, cli):
    rows = []
    for pair, (t_arch, s_arch) in {
        "ResNet50-MobileNetV2": ("ResNet50", "MobileNetV2"),
        "resnet32x4-ShuffleV1": ("resnet32x4", "ShuffleV1"),
    }.items():
        for m, t in (("kd", 4.0), ("kd_std", 4.0), ("dist", None)):
            for seed in (0, 1):
                r = result("student", s_arch, 0.0, t, seed, 70.0 + seed, 90.0, f"{pair}{m}{seed}", t_arch, method=m)
                r["cell"]["task"], r["run_config"] = "cifar100", {"pair": pair}
                rows.append(r)
    for i, r in enumerate(rows):
        store.write_json(tmp_path / "cifar100" / f"c{i}" / store.RESULT, r)
    rc, out, err = cli("compare", "--runs", str(tmp_path))
    assert rc == 0, err
    assert "Pair ResNet50-MobileNetV2: per-pair settings kd_std (kd_weight = 1)." in out  # [S] README.md:103
    assert (
        "Pair resnet32x4-ShuffleV1: per-pair settings kd_std (the recipe's: no value published for this pair)." in out
    )
    assert (
        "One setting for every pair (their authors publish no per-pair values; `lskd-bench methods` says why): dist, kd."
        in out
    )


def test_methods_lists_per_pair_and_shared_settings(cli):
    _rc, out, _ = cli("methods")
    block = out.split("cifar100 --pair NAME:")[1].split("\n\n")[0]
    assert "  dkd        per pair: beta\n" in block and "  kd_std     per pair: kd_weight\n" in block
    assert "  reviewkd   per pair: beta\n" in block  # ReviewKD@cede6ea CIFAR-100/script/reviewKD.sh:1-15
    for m in ("dist", "ttm", "wttm", "skd", "nkd", "ctkd"):
        assert f"  {m:<10} one setting: " in block


def test_pair_applies_its_published_kd_std_weight():
    from lskd_bench.tasks import get_task

    pairs = get_task("cifar100")
    assert pairs.pair_layer("ResNet50-MobileNetV2")[1]["kd_std"] == {"kd_weight": 1.0}  # [S] README.md:103
    assert pairs.pair_layer("vgg13-vgg8")[1]["kd_std"] == {"kd_weight": 9.0}  # [S] README.md:90
    assert "kd_std" not in pairs.pair_layer("wrn_40_2-ShuffleV1")[1]  # none published: the recipe's


def test_feature_methods_get_the_ls_answer_with_welchs_test(tmp_path):
    """Per feature method: LS teacher better / worse only when Welch's p < 0.05 (the p printed is scipy's), otherwise no
    significant difference; one seed a side is undetermined; the leaderboard says the same under the method's
    table; compare's default baseline is kd, or the first method when the run has no kd."""
    from scipy import stats

    from lskd_bench.leaderboard import collect, to_markdown
    from lskd_bench.leaderboard.compare import compare

    values = {
        ("fitnet", 0.0): [60.0, 61.0, 62.0],
        ("fitnet", 0.1): [64.0, 65.0, 66.0],
        ("at", 0.0): [70.0, 72.0, 71.0],
        ("at", 0.1): [69.0, 73.0, 71.5],
        ("crd", 0.0): [50.0],
        ("crd", 0.1): [40.0],
    }
    rows = [
        result("teacher", "big", 0.0, None, 0, 99.0, 100.0, "t0", "big"),
        result("teacher", "big", 0.1, None, 0, 99.5, 100.0, "t1", "big"),
    ]
    for i, ((m, a), vs) in enumerate(values.items()):
        rows += [
            result("student", "small", a, None, s, v, 99.0, f"{m}{i}{s}", "big", method=m) for s, v in enumerate(vs)
        ]
    for i, r in enumerate(rows):
        store.write_json(tmp_path / "digits" / f"c{i}" / store.RESULT, r)
    text, _ = compare(tmp_path, tmp_path / "cmp")
    assert "### digits: methods vs at (top1)" in text  # no kd in this run: the first method is the baseline
    table = text.split("#### Feature distillation: does the LS teacher (α = 0.1) help or hurt? (top1)")[1]
    p_fit = stats.ttest_ind(values[("fitnet", 0.1)], values[("fitnet", 0.0)], equal_var=False).pvalue
    p_at = stats.ttest_ind(values[("at", 0.1)], values[("at", 0.0)], equal_var=False).pvalue
    assert p_fit < 0.05 <= p_at
    assert (
        f"| fitnet | no T | 61.00 ± 1.00 | 65.00 ± 1.00 | LS teacher better (significant, p < 0.05): +4.00, p = {p_fit:.3g}, n = 3 |"
        in table
    )
    assert (
        f"| at | no T | 71.00 ± 1.00 | 71.17 ± 2.02 | no significant difference: +0.17, p = {p_at:.3g}, n = 3 |"
        in table
    )
    assert "| crd | no T | 50.00 | 40.00 | undetermined (1 seed): -10.00, n = 1 |" in table
    md = to_markdown(collect(tmp_path))
    assert f"ours **LS teacher better (significant, p < 0.05): +4.00, p = {p_fit:.3g}, n = 3**" in md
    assert "ours **undetermined (1 seed): -10.00, n = 1**" in md


def test_compare_formats_values_in_the_metrics_own_format(tmp_path):
    """compare and the leaderboard format a metric the same way: mean ± std in its MetricSpec.format (a metric
    declared ".3f" prints three decimals in every compare table, not compare's own two)."""
    from lskd_bench.leaderboard import collect
    from lskd_bench.leaderboard.compare import Comparison
    from lskd_bench.metrics import MetricSpec

    write_fixture(tmp_path)
    rows = collect(tmp_path)
    for r in rows:
        r["specs"] = {**r["specs"], "top1": MetricSpec("top1", "top-1", format=".3f")}
    cmp = Comparison(rows, "digits", "top1", "kd")
    assert "| teacher | 99.000 | 99.000 | 99.500 |" in cmp.table()
    assert "| kd | 1 | 91.000 ± 1.000 | 93.000 ± 1.000 | +2.00 | 0.0705 | 3 |" in cmp.ls_table()


def _cifar_result(pair, method, T, seed, last, best, h):
    """A cifar100 student of ``pair`` whose last epoch (result.json ``metrics``) and selected epoch (``best``)
    differ."""
    t_arch, s_arch = pair.split("-")
    r = result("student", s_arch, 0.0, T, seed, last, 90.0, h, t_arch, method=method)
    r["cell"]["task"] = "cifar100"
    r["best"] = {"epoch": 180, "metrics": {"top1": best, "top5": 91.0}}
    return r


def test_each_reference_is_set_beside_ours_at_its_sources_epoch(tmp_path, cli):
    """RepDistiller reports the last epoch (train_student.py:333-334): its numbers (FitNet, and KD, also as
    mdistiller's CIFAR KD row) are set beside our last epoch; mdistiller's DKD and logit standardisation's kd_std
    report the best epoch: beside our selected one. The table and the CSV name the rule; --select changes
    table 1, not the references."""
    rows = [
        _cifar_result("resnet32x4-resnet8x4", "kd", 4.0, 0, 70.0, 72.0, "a"),  # [M] README.md:54 = [R]: last
        _cifar_result("resnet32x4-resnet8x4", "dkd", 4.0, 0, 74.0, 76.0, "b"),  # [M] README.md:55: best
        _cifar_result("resnet32x4-resnet8x4", "kd_std", 2.0, 0, 75.0, 77.0, "c"),  # [S] README.md:90: best
        _cifar_result("resnet32x4-resnet8x4", "fitnet", None, 0, 71.0, 73.0, "d"),  # [R] README.md:81: last
        _cifar_result("resnet110-resnet20", "kd", 4.0, 0, 69.0, 71.5, "e"),  # [R] README.md:80 only: last
    ]
    for i, r in enumerate(rows):
        store.write_json(tmp_path / "cifar100" / f"c{i}" / store.RESULT, r)
    rc, out, err = cli("compare", "--runs", str(tmp_path))
    assert rc == 0, err
    table = out.split("#### cifar100: published references")[1]
    want = [
        "| resnet32x4-resnet8x4 | kd | α = 0, T = 4 | last epoch | 73.33 | 70.00 | -3.33 | [M] README.md:54 |",
        "| resnet32x4-resnet8x4 | dkd | α = 0, T = 4 | best epoch | 76.32 | 76.00 | -0.32 | [M] README.md:55 |",
        "| resnet32x4-resnet8x4 | kd_std | α = 0, T = 2 | best epoch | 76.62 | 77.00 | +0.38 | [S] README.md:90 ",
        "| resnet32x4-resnet8x4 | fitnet | α = 0 | last epoch | 73.50 | 71.00 | -2.50 | [R] README.md:81 |",
        "| resnet110-resnet20 | kd | α = 0, T = 4 | last epoch | 70.67 | 69.00 | -1.67 | [R] README.md:80 |",
    ]
    for line in want:
        assert line in table, line
    assert "[R] train_student.py:333-334" in table and "[M] mdistiller/engine/trainer.py:61-62,88-90" in table
    ref_csv = (tmp_path / "compare_reference.csv").read_text()
    assert ref_csv.splitlines()[0].startswith("task,pair,method,alpha,T,rule,reference,n,mean,std,delta,source,")
    assert "cifar100,resnet110-resnet20,kd,0,4,last,70.67,1,69,0,-1.67," in ref_csv
    assert "cifar100,resnet32x4-resnet8x4,dkd,0,4,best,76.32,1,76,0,-0.32" in ref_csv
    assert "| kd | — | 71.75 ± 0.35 | — |" in out  # table 1 (both pairs' kd): the selected epoch, the default
    rc, last, err = cli("compare", "--runs", str(tmp_path), "--select", "last")
    assert rc == 0, err
    assert (
        last.split("#### cifar100: published references")[1].split("Environment:")[0] == table.split("Environment:")[0]
    )  # the references keep their sources' epochs
    assert "| kd | — | 69.50 ± 0.71 | — |" in last  # table 1: the last epoch, as asked


def test_repdistillers_kd_numbers_without_an_mdistiller_row_are_shown(tmp_path, cli):
    """resnet110-resnet20 (70.67, README.md:80) and ResNet50-vgg8 (73.81, README.md:99): RepDistiller publishes KD
    for these pairs and mdistiller does not; each pair's KD has one reference, at T 4."""
    from lskd_bench.leaderboard.reference import kd_references

    kd = [r for r in kd_references() if r.task == "cifar100" and r.method == "kd"]
    by_pair = {r.pair: r for r in kd}
    assert len(by_pair) == len(kd) == 13  # one KD reference per published pair
    assert (by_pair["resnet110-resnet20"].top1, by_pair["resnet110-resnet20"].T) == (70.67, 4.0)
    assert (by_pair["ResNet50-vgg8"].top1, by_pair["ResNet50-vgg8"].source) == (73.81, "[R] README.md:99")
    rows = [
        _cifar_result("resnet110-resnet20", "kd", 4.0, 0, 70.0, 71.0, "a"),
        _cifar_result("ResNet50-vgg8", "kd", 4.0, 0, 73.0, 74.0, "b"),
    ]
    for i, r in enumerate(rows):
        store.write_json(tmp_path / "cifar100" / f"c{i}" / store.RESULT, r)
    rc, out, err = cli("compare", "--runs", str(tmp_path))
    assert rc == 0, err
    assert "| resnet110-resnet20 | kd | α = 0, T = 4 | last epoch | 70.67 | 70.00 | -0.67 | [R] README.md:80 |" in out
    assert "| ResNet50-vgg8 | kd | α = 0, T = 4 | last epoch | 73.81 | 73.00 | -0.81 | [R] README.md:99 |" in out


def test_a_reference_is_set_beside_each_config_of_a_sweep(tmp_path, cli):
    """kd on resnet32x4-resnet8x4 at lambda 1 (last epochs 70, 72) and lambda 0.5 (60, 62): mdistiller's 73.33
    beside each (71 and 61, n 2 each), not beside their mean of 66 over 4 cells."""
    for i, (lam, s, last) in enumerate([(1.0, 0, 70.0), (1.0, 1, 72.0), (0.5, 2, 60.0), (0.5, 3, 62.0)]):
        r = _cifar_result("resnet32x4-resnet8x4", "kd", 4.0, s, last, last + 1, f"h{i}")
        r["config"] = {"method": {"lambda": lam}}
        store.write_json(tmp_path / "cifar100" / f"c{i}" / store.RESULT, r)
    rc, out, err = cli("compare", "--runs", str(tmp_path))
    assert rc == 0, err
    table = out.split("#### cifar100: published references")[1]
    assert (
        "| resnet32x4-resnet8x4 | kd [kd.lambda = 0.5] | α = 0, T = 4 | last epoch | 73.33 | 61.00 ± 1.41 (n=2) | -12.33 |"
        in table
    )
    assert (
        "| resnet32x4-resnet8x4 | kd [kd.lambda = 1] | α = 0, T = 4 | last epoch | 73.33 | 71.00 ± 1.41 (n=2) | -2.33 |"
        in table
    )
    ref_csv = (tmp_path / "compare_reference.csv").read_text().splitlines()
    assert ref_csv[0].startswith("task,pair,method,config,alpha,T,rule,reference,n,mean,")
    assert [line.split(",")[3:10] for line in ref_csv[1:]] == [
        ["kd.lambda = 0.5", "0", "4", "last", "73.33", "2", "61"],
        ["kd.lambda = 1", "0", "4", "last", "73.33", "2", "71"],
    ]
