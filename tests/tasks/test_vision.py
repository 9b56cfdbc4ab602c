"""Image tasks on tiny fixtures in the real layouts: loaders, models, a 1-epoch grid per task, errors."""

from __future__ import annotations

import json

import pytest
import torch

from lskd_bench import store
from lskd_bench.models import ARCHS, build_image_model, load_init_checkpoint
from lskd_bench.runners.grid import resolve_config, run_grid
from lskd_bench.tasks import get_task

from ..fixtures import CUB_CLASSES, WNIDS, make_cub, make_imagefolder, tiny


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
        feats = dict(__import__("numpy").load(cell.dir(tmp_path) / store.FEATURES))
        assert feats["train_features"].shape[0] == 12 and feats["head_weight"].shape[0] == 3
    assert run_grid(cfg, tmp_path, progress=False).trained == []


@pytest.mark.parametrize("arch", sorted(ARCHS))
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
