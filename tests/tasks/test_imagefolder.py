"""``imagefolder``: any train/ val/ folder of images as a task (arbitrary class names, config'd classes, an optional
hierarchy file), its layout errors, check-data, and a grid end to end with analyze."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lskd_bench.analysis.report import choose_groups
from lskd_bench.errors import UsageError
from lskd_bench.hierarchy import read_hierarchy_file
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config
from lskd_bench.tasks import get_task

from ..fixtures import FOLDER_CLASSES, IMAGE_ARGS, make_classfolder, tiny

STD255 = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None] * 255  # normalised units -> grey levels


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    """A generic ImageFolder: bird, cat, dog; 4 train / 2 val images each (JPEG and PNG)."""
    return make_classfolder(tmp_path_factory.mktemp("folder"))


def _cfg(root, **data):
    o = tiny(root)
    o["data"].update(data)
    return resolve_config("imagefolder", {}, o)


def _copy(folder_root, tmp_path):
    return shutil.copytree(folder_root, tmp_path / "data")


def test_imagefolder_reads_any_class_names(folder_root):
    cfg = resolve_config("imagefolder", {}, tiny(folder_root))
    data = get_task("imagefolder").load_data(cfg)
    assert data.class_names == FOLDER_CLASSES and data.num_classes == 3
    assert len(data.train) == 12 and len(data.val) == 6
    assert {p.rsplit(".", 1)[1] for p, _ in data.train.samples} == {"jpg", "png", "JPEG"}
    x, y = data.val[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert data.labels("val").tolist() == [0, 0, 1, 1, 2, 2]


def test_device_decoding_reads_the_png_and_jpeg_mix(folder_root):
    """data.decode=gpu (run on the CPU here): PNGs fall back to PIL, JPEGs of other sizes decode; the batches
    match the PIL pipeline's (the same bound as tests/tasks/test_device_images.py)."""
    from lskd_bench.tasks.base import iterate_batches
    from lskd_bench.tasks.device_images import EncodedImages

    cpu, gpu = (get_task("imagefolder").load_data(_cfg(folder_root, decode=d)) for d in ("cpu", "gpu"))
    assert isinstance(gpu.val, EncodedImages) and gpu.class_names == FOLDER_CLASSES
    a, b = list(iterate_batches(cpu.val, 4)), list(iterate_batches(gpu.val, 4))
    assert [y.tolist() for _, y in a] == [y.tolist() for _, y in b]
    diff = (torch.cat([x for x, _ in a]) - torch.cat([x for x, _ in b])).abs() * STD255
    assert diff.max() <= 1.5 and diff.mean() <= 0.3, (float(diff.max()), float(diff.mean()))


def test_recipe_defaults_are_the_small_data_ones():
    from lskd_bench.tasks.base import load_recipe

    r = load_recipe("imagefolder")
    assert r["data"]["image_size"] == 64 and r["teacher"]["arch"] == "resnet18"
    assert r["student"]["arch"] == "mobilenet_v1" and r["teacher_weights"] == "last"


def test_config_shows_the_task_and_its_recipe(folder_root, cli):
    rc, out, err = cli("config", "--task", "imagefolder", "--data-root", str(folder_root))
    assert rc == 0, err
    assert "recipe lskd_bench/configs/imagefolder.yaml" in out and "data.hierarchy" in out
    rc, out, _ = cli("tasks")
    assert rc == 0 and any(line.startswith("imagefolder ") for line in out.splitlines())


def test_data_classes_selects_class_folders(folder_root, cli, tmp_path):
    cfg = _cfg(folder_root, classes=["dog", "cat"])
    data = get_task("imagefolder").load_data(cfg)
    assert data.class_names == ["cat", "dog"] and len(data.train) == 8 and set(data.labels("train").tolist()) == {0, 1}
    rc, _, err = cli(
        "run", "--task", "imagefolder", "--data-root", str(folder_root), "--set", "data.classes=[cat, fish]",
        "--out", str(tmp_path / "runs"), *IMAGE_ARGS,
    )  # fmt: skip
    assert rc == 2 and err.count("\n") == 1
    assert "imagefolder: data.classes names 1 class(es) without a folder in train/ (e.g. fish)" in err, err


def test_val_class_missing_from_train_is_one_line(folder_root, tmp_path, cli):
    root = _copy(folder_root, tmp_path)
    shutil.copytree(root / "val" / "cat", root / "val" / "fish")
    message = "imagefolder: train/ and val/ class folders differ: 1 class(es) in val/ but not in train/ (e.g. fish)"
    for cmd in (["check-data", "--no-progress"], ["run", "--out", str(tmp_path / "runs"), *IMAGE_ARGS]):
        rc, _, err = cli(cmd[0], "--task", "imagefolder", "--data-root", str(root), *cmd[1:])
        assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_check_data_reports_problems_and_the_missing_hierarchy(folder_root, tmp_path, cli):
    root = _copy(folder_root, tmp_path)
    rc, out, err = cli("check-data", "--task", "imagefolder", "--data-root", str(root), "--no-progress")
    assert rc == 0, err
    assert "imagefolder: 3 classes (bird, cat, dog)" in out and "analyze will need --similar and --dissimilar" in out
    assert "imagefolder: data OK (train 12, val 6)" in out
    (root / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    shutil.copy(root / "train" / "dog" / "dog_train_0.jpg", root / "val" / "dog" / "copy.jpg")
    rc, out, err = cli("check-data", "--task", "imagefolder", "--data-root", str(root), "--no-progress")
    assert rc == 2 and "problem: " + str(root / "train" / "cat" / "broken.png") in out, out
    assert "problem: duplicate files (same content)" in out
    assert "imagefolder: 2 problem(s) in the data (train 13, val 7)" in err


def test_hierarchy_file_is_read_in_both_formats(folder_root, tmp_path, cli):
    text = tmp_path / "h.txt"
    text.write_text("# class parent\ncat mammal\ndog mammal\nbird animal\nmammal animal\n")
    js = tmp_path / "h.json"
    js.write_text(json.dumps({"mammal": ["cat", "dog"], "bird": "animal", "mammal_": "x"}))
    task = get_task("imagefolder")
    rc, out, err = cli(
        "check-data", "--task", "imagefolder", "--data-root", str(folder_root), "--set", f"data.hierarchy={text}",
        "--no-progress",
    )  # fmt: skip
    assert rc == 0 and f"imagefolder: class hierarchy {text} places every class" in out, err
    for path in (text, js):
        cfg = _cfg(folder_root, hierarchy=str(path))
        task.validate(cfg)  # every class has a parent
        parents = task.configured_hierarchy(FOLDER_CLASSES, cfg)
        assert parents["cat"] == parents["dog"] == "mammal"
        assert choose_groups("imagefolder", "cat", FOLDER_CLASSES, None, cfg) == (["dog"], ["bird"])
    # the hierarchy is not part of a cell's identity: naming one does not retrain anything
    assert _hashes(cfg) == _hashes(_cfg(folder_root))


def _hashes(cfg):
    return [c.hash for c in plan_cells(cfg)]


@pytest.mark.parametrize(
    "content,message",
    [
        ("cat mammal\ndog mammal\n", "gives no parent to 1 class(es) (e.g. bird)"),
        ("cat mammal\ndog\nbird animal\n", "h.txt:2: expected 'child parent', got 'dog'"),
        ("cat a\ncat b\ndog a\nbird a\n", "h.txt:2: 'cat' has two parents ('a' and 'b')"),
        ("cat dog\ndog cat\nbird a\n", "cycle in class hierarchy"),
    ],
)
def test_bad_hierarchy_file_is_one_line(folder_root, tmp_path, cli, content, message):
    (tmp_path / "h.txt").write_text(content)
    rc, _, err = cli(
        "run", "--task", "imagefolder", "--data-root", str(folder_root),
        "--set", f"data.hierarchy={tmp_path / 'h.txt'}", "--out", str(tmp_path / "runs"), *IMAGE_ARGS,
    )  # fmt: skip
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_analyze_without_a_hierarchy_asks_for_similar_and_dissimilar(folder_root, tmp_path):
    cfg = resolve_config("imagefolder", {}, tiny(folder_root))
    with pytest.raises(UsageError) as e:
        choose_groups("imagefolder", "cat", FOLDER_CLASSES, None, cfg)
    assert str(e.value) == (
        "task 'imagefolder' has no class hierarchy (its cells were trained without data.hierarchy): "
        "give --similar and --dissimilar, or --hierarchy FILE"
    )
    (tmp_path / "h.txt").write_text("cat pet\nbird pet\ndog wild\n")
    assert choose_groups("imagefolder", "cat", FOLDER_CLASSES, None, cfg, tmp_path / "h.txt") == (
        ["bird"],
        ["dog"],
    )  # analyze --hierarchy FILE
    with pytest.raises(UsageError, match=r"the cells' data.hierarchy nowhere.txt does not exist .*: give --hierarchy"):
        choose_groups(
            "imagefolder", "cat", FOLDER_CLASSES, None, {**cfg, "data": {**cfg["data"], "hierarchy": "nowhere.txt"}}
        )
    with pytest.raises(UsageError, match="not a regular file"):
        read_hierarchy_file(folder_root)


@pytest.mark.slow
def test_grid_end_to_end_then_reuse_and_analyze(folder_root, tmp_path, cli):
    (tmp_path / "h.txt").write_text("cat mammal\ndog mammal\nbird animal\nmammal animal\n")
    runs = tmp_path / "runs"
    args = [
        "run", "--task", "imagefolder", "--data-root", str(folder_root), "--out", str(runs), *IMAGE_ARGS,
        "--temperatures", "1,3", "--set", f"data.hierarchy={tmp_path / 'h.txt'}",
    ]  # fmt: skip
    rc, out, err = cli(*args)
    assert rc == 0 and "4 cells: trained 4, reused 0" in out, out + err  # teacher, 2 KD students, baseline
    rc, out, err = cli(*args)
    assert rc == 0 and "4 cells: trained 0, reused 4" in out, out + err
    base = ["analyze", "--runs", str(runs), "--target", "cat"]
    rc, out, err = cli(*base, "--similar", "dog", "--dissimilar", "bird", "--out", str(tmp_path / "eta"))
    assert rc == 0, err
    rows = (tmp_path / "eta.csv").read_text().splitlines()
    assert len(rows) == 2 and ",cat,dog,bird," in rows[1], rows
    rc, out, err = cli(*base, "--out", str(tmp_path / "eta_h"))  # S1 / S2 from data.hierarchy
    assert rc == 0 and ",cat,dog,bird," in (tmp_path / "eta_h.csv").read_text(), err
    (tmp_path / "other.json").write_text('{"pet": ["cat", "bird"], "wild": ["dog"]}')
    rc, out, err = cli(*base, "--hierarchy", str(tmp_path / "other.json"), "--out", str(tmp_path / "eta_o"))
    assert rc == 0 and ",cat,bird,dog," in (tmp_path / "eta_o.csv").read_text(), err  # --hierarchy wins
    features = list(runs.glob("imagefolder/*/features.npz"))
    assert len(features) == 2  # computed for the two students analyze read, and kept
    rc, out, err = cli("visualize", "--runs", str(runs), "--classes", "bird,cat,dog", "--out", str(tmp_path / "v.png"))
    assert rc == 0 and (tmp_path / "v.png").stat().st_size > 0, err
    rc, _, err = cli("visualize", "--runs", str(runs), "--out", str(tmp_path / "v2.png"))
    assert rc == 2 and "task 'imagefolder' has no default classes to project: give --classes A,B,C" in err
