"""Image tasks on tiny fixtures in the real layouts: loaders, models, a 1-epoch grid per task, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lskd_bench import store
from lskd_bench.models import ARCHS, build_image_model, load_init_checkpoint
from lskd_bench.runners.grid import resolve_config, run_grid
from lskd_bench.runners.inference import cell_features
from lskd_bench.tasks import get_task

from ..fixtures import (
    CUB_CLASSES,
    IMAGE_ARGS,
    WNIDS,
    make_cub,
    make_imagefolder,
    results_by_cell,
    tiny,
)


def test_tasks_lists_the_image_tasks(cli):
    rc, out, _ = cli("tasks")
    names = [line.split()[0] for line in out.splitlines()]
    assert rc == 0 and {"cub200", "cub200_compact", "imagenet", "imagenet_compact"} <= set(names)


def test_imagenet_loader_orders_classes_by_wnid(imagenet_root):
    cfg = resolve_config("imagenet", {}, tiny(imagenet_root))
    data = get_task("imagenet").load_data(cfg)
    assert data.class_names == sorted(WNIDS) and data.num_classes == 3
    assert len(data.train) == 12 and len(data.val) == 6
    x, y = data.val[0]
    assert x.shape == (3, 32, 32) and y == 0


def test_cub_loader_reads_the_index_files(cub_root):
    cfg = resolve_config("cub200", {}, tiny(cub_root))
    data = get_task("cub200").load_data(cfg)
    assert data.class_names == CUB_CLASSES
    assert len(data.train) == 12 and len(data.val) == 6
    assert data.labels("val").tolist() == [0, 0, 1, 1, 2, 2]
    parents = get_task("cub200").class_hierarchy(data.class_names)
    assert parents["001.Black_footed_Albatross"] == parents["002.Laysan_Albatross"] == "albatross"
    assert parents["029.American_Crow"] == "crow"


@pytest.mark.slow
@pytest.mark.parametrize(
    "task,fixture,roles",
    [
        ("imagenet", "imagenet_root", {}),
        ("imagenet_compact", "imagenet_root", {}),
        ("cub200", "cub_root", {}),
        ("cub200_compact", "cub_root", {"student": "mobilenetv2_100"}),
    ],
)
def test_one_epoch_grid_on_fixture(task, fixture, roles, request, tmp_path):
    root = request.getfixturevalue(fixture)
    cfg = resolve_config(task, {}, tiny(root, **roles))
    summary = run_grid(cfg, tmp_path, progress=False)
    assert sorted(c.role for c in summary.trained) == ["baseline", "student", "teacher"]
    for cell in summary.cells:
        res = json.loads((cell.dir(tmp_path) / store.RESULT).read_text())
        assert 0 <= res["metrics"]["top1"] <= res["metrics"]["top5"] <= 100
        feats = dict(__import__("numpy").load(cell_features(cell.dir(tmp_path), res)))  # computed from model.pt
        assert feats["train_features"].shape[0] == 12 and feats["head_weight"].shape[0] == 3
    assert run_grid(cfg, tmp_path, progress=False).trained == []


FAST_ARCHS = {"resnet18", "mobilenet_v1"}  # building the others takes seconds each: slow


@pytest.mark.parametrize(
    "arch", [a if a in FAST_ARCHS else pytest.param(a, marks=pytest.mark.slow) for a in sorted(ARCHS)]
)
def test_model_factory_splits_backbone_and_head(arch):
    model = build_image_model(arch, 5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (2, model.head.in_features)
        assert model(x).shape == (2, 5)
        assert torch.allclose(model.head(f), model(x), atol=1e-5)


def test_init_checkpoint_from_library_format_skips_mismatched_head(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)  # a 1000-class ImageNet-format state dict
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model = build_image_model("resnet18", 3)
    n = load_init_checkpoint(model, path)
    assert n == len(ref.state_dict()) - 2  # all but fc.weight / fc.bias
    assert torch.equal(model.backbone.conv1.weight, ref.conv1.weight)


@pytest.mark.parametrize(
    "task,make,breakage,message",
    [
        (
            "imagenet",
            make_imagefolder,
            lambda r: __import__("shutil").rmtree(r / "val"),
            "val is missing or has no class folders",
        ),
        (
            "imagenet",
            make_imagefolder,
            lambda r: (r / "val" / "n99999999").mkdir(),
            "train/ and val/ class folders differ",
        ),
        (
            "cub200",
            lambda r: make_cub(r).parent,
            lambda r: (r / "CUB_200_2011" / "classes.txt").unlink(),
            "lacks classes.txt",
        ),
        (
            "cub200",
            lambda r: make_cub(r).parent,
            lambda r: (r / "CUB_200_2011" / "images.txt").write_text("1\n"),
            "expected 2 fields",
        ),
    ],
)
def test_malformed_data_root_exits_2(tmp_path, cli, task, make, breakage, message):
    root = make(tmp_path / "data")
    breakage(root)
    rc, _, err = cli("run", "--task", task, "--data-root", str(root), "--out", str(tmp_path / "runs"))
    assert rc == 2 and message in err and "expected" in err
    assert not (tmp_path / "runs").exists()


def test_missing_data_root_names_layout(tmp_path, cli):
    rc, _, err = cli("run", "--task", "imagenet", "--out", str(tmp_path / "runs"))
    assert rc == 2 and "needs --data-root DIR" in err and "train/<wnid>" in err


def test_arch_not_offered_by_task(tmp_path, cli, imagenet_root):
    rc, _, err = cli(
        "run",
        "--task",
        "imagenet",
        "--data-root",
        str(imagenet_root),
        "--set",
        "student.arch=vgg16",
        "--out",
        str(tmp_path / "r"),
    )
    assert rc == 2 and "student arch 'vgg16' is not offered by task imagenet" in err


def test_wordnet_hierarchy_picks_siblings():
    from lskd_bench.hierarchy import load_wordnet_parents, similar_and_dissimilar

    parents = load_wordnet_parents()
    assert parents["n01440764"] == "n01439121"  # tench -> cyprinid
    sim, dis = similar_and_dissimilar("n01440764", WNIDS, parents)
    assert sim == ["n01443537"] and dis == ["n02085620"]  # goldfish is a cyprinid too; a Chihuahua is not a fish


# ------------------------------------------------------------------------------------------ data
IMAGENET_ARGS = [
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--lr",
    "0.001",
    "--num-workers",
    "2",
    "--alphas",
    "0.1",
    "--temperatures",
    "1",
    "--set",
    "data.image_size=32",
    "--no-progress",
]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_truncated_jpeg_check_data_and_run(tmp_path, cli):
    root = make_imagefolder(tmp_path / "inet")
    bad = sorted((root / "train" / WNIDS[1]).iterdir())[1]
    truncate(bad)
    rc, out, err = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 2
    assert f"problem: {bad}: OSError: Truncated File Read" in out
    assert "imagenet: 1 problem(s) in the data (train 12, val 6)" in err

    runs = tmp_path / "runs"
    rc, _, err = cli("run", "--task", "imagenet", "--data-root", str(root), "--out", str(runs), *IMAGENET_ARGS)
    assert rc == 2 and err.count("\n") == 1
    assert f"lskd-bench: error: cannot read {bad}: OSError: Truncated File Read" in err
    errors = [json.loads(p.read_text()) for p in runs.rglob(store.ERROR)]
    assert errors and all(e["error"] == "DataError" for e in errors)
    assert not list(runs.rglob(store.RESULT))

    rc, out, err = cli(
        "run",
        "--task",
        "imagenet",
        "--data-root",
        str(root),
        "--out",
        str(runs),
        *IMAGENET_ARGS,
        "--set",
        "data.on_bad_sample=skip",
    )
    assert rc == 0, err
    res = results_by_cell(runs)
    assert res["teacher_resnet50_a0.1_s0"]["skipped_samples"] == [str(bad)]
    assert not list(runs.rglob(store.ERROR))  # the retried cells' errors are gone


def test_check_data_clean_root_and_duplicates(tmp_path, cli):
    root = make_imagefolder(tmp_path / "inet")
    rc, out, _ = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 0 and "imagenet: data OK (train 12, val 6)" in out
    src = sorted((root / "train" / WNIDS[0]).iterdir())[0]
    (root / "val" / WNIDS[0] / "copy.JPEG").write_bytes(src.read_bytes())
    rc, out, _ = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 2 and "problem: duplicate files (same content): " in out and "copy.JPEG" in out


@pytest.mark.parametrize(
    "breakage,message",
    [
        (
            lambda r: [p.unlink() for p in (r / "train" / WNIDS[0]).iterdir()],
            f"class folder {{root}}/train/{WNIDS[0]} has no image files",
        ),
        (
            lambda r: __import__("shutil").rmtree(r / "val" / WNIDS[2]),
            f"1 class(es) missing from val/ (e.g. {WNIDS[2]})",
        ),
    ],
)
def test_bad_class_folders_exit_2_before_writing(tmp_path, cli, breakage, message):
    root = make_imagefolder(tmp_path / "inet")
    breakage(root)
    rc, _, err = cli(
        "run", "--task", "imagenet", "--data-root", str(root), "--out", str(tmp_path / "runs"), *IMAGENET_ARGS
    )
    assert rc == 2 and err.count("\n") == 1 and message.format(root=root) in err
    assert not (tmp_path / "runs").exists()


def _renumber_class_3_as_5(d: Path) -> None:
    (d / "classes.txt").write_text((d / "classes.txt").read_text().replace("3 ", "5 ", 1))
    rows = [line.split() for line in (d / "image_class_labels.txt").read_text().splitlines()]
    (d / "image_class_labels.txt").write_text("".join(f"{i} {'5' if c == '3' else c}\n" for i, c in rows))


def _cub(tmp_path: Path, edit) -> Path:
    d = make_cub(tmp_path / "cub")
    edit(d)
    return d.parent


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            _renumber_class_3_as_5,
            "class ids must be 1..3 without gaps (id 3 is missing; a subset of CUB must be renumbered",
        ),
        (
            lambda d: (d / "train_test_split.txt").write_text(
                (d / "train_test_split.txt").read_text().replace("1 1\n", "1 2\n", 1)
            ),
            "train_test_split.txt: image 1 has '2', expected 1 (train) or 0 (test)",
        ),
        (
            lambda d: (d / "train_test_split.txt").write_text(
                (d / "train_test_split.txt").read_text().replace("1 1\n", "1 1 0\n", 1)
            ),
            "train_test_split.txt: image 1 has '1 0', expected 1 (train) or 0 (test)",
        ),
        (
            lambda d: (d / "image_class_labels.txt").write_text(
                (d / "image_class_labels.txt").read_text().replace("1 1\n", "1 one\n", 1)
            ),
            "image_class_labels.txt: image 1 has 'one', expected one integer class id",
        ),
        (
            lambda d: (d / "classes.txt").write_bytes(
                b"1 \xff\xfeAlbatross\n" + (d / "classes.txt").read_bytes().split(b"\n", 1)[1]
            ),
            "classes.txt:1: not valid UTF-8 (invalid start byte at byte 2)",
        ),
    ],
)
def test_cub_index_faults_are_one_line_before_anything_is_written(tmp_path, cli, edit, message):
    root = _cub(tmp_path, edit)
    for cmd in (["check-data", "--no-progress"], ["run", "--out", str(tmp_path / "runs"), *IMAGE_ARGS]):
        rc, _, err = cli(cmd[0], "--task", "cub200", "--data-root", str(root), *cmd[1:])
        assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()
