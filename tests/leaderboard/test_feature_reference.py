"""The feature-method reference numbers (lskd_bench/data/feature_reference.yaml) and their loader."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import yaml

from lskd_bench.cifar_models import CIFAR_ARCHS
from lskd_bench.leaderboard import feature_reference
from lskd_bench.leaderboard.feature_reference import load, rows

REPD = ["kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd"]


def test_every_row_has_a_source_line_and_a_number():
    all_rows = list(rows())
    assert len(all_rows) == 13 * 2 + 162 + 1  # teacher + student per pair; 7 x 13 - 1 (FSP N/A) + 6 x 12; SimKD
    for pair, what, top1, source in all_rows:
        assert 0 < top1 <= 100, (pair, what)
        assert re.fullmatch(r"\[[RO]\] \S+:\d+" if what != "simkd" else r"\[D\] \S+:\d+", source), (pair, what)
    for row in load()["unmapped"]:
        assert re.fullmatch(r"\[O\] \S+:\d+", row["source"])
        err, alone = (float(x) for x in re.findall(r"([\d.]+)%", row["reported"]))
        assert (row["top1"], row["student_top1"]) == (pytest.approx(100 - err), pytest.approx(100 - alone))


def test_pairs_are_lskd_pairs_of_known_archs():
    text = resources.files("lskd_bench").joinpath("configs", "cifar100_pairs.yaml").read_text()
    pairs = yaml.safe_load(text)["pairs"]
    data = load()["pairs"]
    assert len(data) == 13 and set(data) <= set(pairs)
    for key in data:
        assert (pairs[key]["teacher"]["arch"], pairs[key]["student"]["arch"]) == tuple(key.split("-"))
        assert all(a in CIFAR_ARCHS for a in key.split("-"))
    same_type = [
        "wrn_40_2-wrn_16_2",
        "wrn_40_2-wrn_40_1",
        "resnet56-resnet20",
        "resnet110-resnet20",
        "resnet110-resnet32",
        "resnet32x4-resnet8x4",
        "vgg13-vgg8",
    ]
    for key in same_type:
        simkd = ["simkd"] if key == "resnet32x4-resnet8x4" else []  # SimKD's authors' one mapped column
        expect = [m for m in REPD if not (key == "wrn_40_2-wrn_40_1" and m == "fsp")] + simkd
        assert list(data[key]["methods"]) == expect
    for key in set(data) - set(same_type):
        assert list(data[key]["methods"]) == [m for m in REPD if m != "fsp"]


def test_spot_values_from_the_readme():
    """A few cells read off RepDistiller@b84f547 README.md by hand."""
    p = load()["pairs"]
    assert p["resnet32x4-resnet8x4"]["methods"]["crd"] == {"top1": 75.51, "source": "[R] README.md:92"}
    assert p["ResNet50-vgg8"]["methods"]["kd"]["top1"] == 73.81
    assert (p["wrn_40_2-ShuffleV1"]["teacher"]["top1"], p["wrn_40_2-ShuffleV1"]["student"]["top1"]) == (75.61, 70.50)
    assert p["vgg13-MobileNetV2"]["methods"]["nst"] == {"top1": 58.16, "source": "[R] README.md:109"}
    # DefangChen/SimKD@2b389c3 README.md:65, "SimKD (f=2) | **78.08** | ..." (the ResNet-8x4 column)
    assert p["resnet32x4-resnet8x4"]["methods"]["simkd"] == {"top1": 78.08, "source": "[D] README.md:65"}


def test_a_row_without_a_source_or_number_is_refused(monkeypatch):
    text = resources.files("lskd_bench").joinpath("data", "feature_reference.yaml").read_text()
    broken = text.replace('kd: {top1: 74.92, source: "[R] README.md:80"}', "kd: {top1: 74.92}", 1)
    assert broken != text

    class Fake:
        def joinpath(self, *a):
            return self

        def read_text(self):
            return broken

    monkeypatch.setattr(feature_reference.resources, "files", lambda pkg: Fake())
    feature_reference.load.cache_clear()
    try:
        with pytest.raises(ValueError, match="wrn_40_2-wrn_16_2 kd has no source"):
            load()
    finally:
        feature_reference.load.cache_clear()


@pytest.mark.parametrize(
    "pair, teacher, student", [("resnet110-resnet20", "resnet110", "resnet20"), ("ResNet50-vgg8", "ResNet50", "vgg8")]
)
def test_the_two_added_pairs_resolve(tmp_path, pair, teacher, student):
    from lskd_bench.runners.grid import resolve

    from ..fixtures import make_cifar100

    make_cifar100(tmp_path)
    res = resolve("cifar100", {}, {"data": {"root": str(tmp_path)}, "pair": pair})
    cfg = res.cfg
    assert (cfg["teacher"]["arch"], cfg["student"]["arch"], cfg["student"]["lr"], cfg["teacher"]["lr"]) == (
        teacher,
        student,
        0.05,
        0.05,
    )  # RepDistiller train_student.py:50, train_teacher.py:36
    assert cfg["dkd"]["beta"] == 8.0  # no published DKD beta for these pairs: the recipe's default
    assert res.provenance["student.arch"].startswith(f"pair {pair}")
