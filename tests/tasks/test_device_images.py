"""data.decode=gpu on the CPU (torchvision.io.decode_jpeg decodes on the CPU too): the same augmentation
parameters as the PIL pipeline for every (seed, epoch, index), images within a stated tolerance of it, PIL
fallback for an image decode_jpeg refuses, the same errors for unreadable files, and fusion/resume identity."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from lskd_bench.runners import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.train import load_model, train_group
from lskd_bench.tasks import get_task
from lskd_bench.tasks.base import GuardedDataset, batch_plan, iterate_batches, load_batches
from lskd_bench.tasks.device_images import EncodedImages, decode_mode

from ..fixtures import WNIDS, assert_fused_equals_alone, make_imagefolder, same_weights

CUB_AUG = {"rotation": 15.0, "grayscale": 0.3, "color_jitter": [0.4, 0.4]}  # the CUB recipe's extras
STD255 = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None] * 255  # normalised units -> grey levels


def data_of(root, decode, **d):
    cfg = resolve_config("imagenet", {}, {"data": {"root": str(root), "image_size": 32, "decode": decode, **d}})
    return get_task("imagenet").load_data(cfg)


def test_decode_auto_is_gpu_only_on_cuda():
    assert decode_mode({"data": {"decode": "auto"}, "device": "cpu"}) == "cpu"
    assert decode_mode({"data": {"decode": "auto"}, "device": "cuda"}) == "gpu"
    assert decode_mode({"data": {"decode": "auto"}, "device": "auto"}) == (
        "gpu" if torch.cuda.is_available() else "cpu"
    )
    assert decode_mode({"data": {"decode": "gpu"}, "device": "cpu"}) == "gpu"


@pytest.mark.parametrize("extra", [{}, CUB_AUG], ids=["imagenet", "cub"])
def test_same_augmentation_parameters_as_the_pil_pipeline(imagenet_root, monkeypatch, extra):
    """Record what the PIL transforms do to each sample (crop box, flip, angle, grayscale, jitter order and
    factors) and compare with what the GPU pipeline's workers draw, for several (seed, epoch) and every index."""
    cpu, gpu = data_of(imagenet_root, "cpu", **extra), data_of(imagenet_root, "gpu", **extra)
    assert isinstance(gpu.train, EncodedImages) and not isinstance(cpu.train, EncodedImages)
    seen: list = []

    def spy(name, fn, pick):
        def wrapped(*a, **k):
            seen.append((name, pick(*a, **k)))
            return fn(*a, **k)

        monkeypatch.setattr(TF, name, wrapped)

    spy("resized_crop", TF.resized_crop, lambda img, i, j, h, w, *a, **k: (i, j, h, w))
    spy("hflip", TF.hflip, lambda img: True)
    spy("rotate", TF.rotate, lambda img, angle, *a, **k: angle)
    spy("rgb_to_grayscale", TF.rgb_to_grayscale, lambda img, **k: True)
    spy("adjust_brightness", TF.adjust_brightness, lambda img, f: f)
    spy("adjust_contrast", TF.adjust_contrast, lambda img, f: f)
    n = 0
    for seed, epoch in ((0, 0), (0, 1), (3, 7)):
        for i in range(len(cpu.train)):
            seen.clear()
            GuardedDataset(cpu.train, seed, epoch)[i]
            rec = dict(seen)
            jit = [(0 if k == "adjust_brightness" else 1, v) for k, v in seen if k.startswith("adjust_")]
            a = GuardedDataset(gpu.train, seed, epoch)[i].aug
            assert a.box == rec["resized_crop"], (seed, epoch, i)
            assert a.flip == ("hflip" in rec)
            assert a.angle == rec.get("rotate", 0.0)
            assert a.gray == ("rgb_to_grayscale" in rec)
            assert list(a.jitter) == jit
            n += a.flip + bool(a.jitter)
    assert n > 0  # flips (and jitter) were exercised


def _batches(ds, seed=0, epoch=1, **kw):
    plan = batch_plan(len(ds), 4, shuffle=True, seed=seed, epoch=epoch)
    return list(load_batches(ds, plan, seed=seed, epoch=epoch, **kw))


# measured on the fixtures (40x40 JPEGs, 32 px crops), in grey levels (0-255), max / mean: ImageNet augmentation
# 1.0 / 0.16, evaluation 1.0 / 0.16; CUB augmentation (rotation, grayscale, jitter) 4.0 / 0.44
@pytest.mark.parametrize("extra,max_tol,mean_tol", [({}, 1.5, 0.3), (CUB_AUG, 4.5, 0.6)], ids=["imagenet", "cub"])
def test_images_within_tolerance_of_the_pil_pipeline(imagenet_root, extra, max_tol, mean_tol):
    cpu, gpu = data_of(imagenet_root, "cpu", **extra), data_of(imagenet_root, "gpu", **extra)
    for split in ("train", "val"):
        if split == "train":
            a, b = _batches(cpu.train), _batches(gpu.train)
        else:
            a, b = list(iterate_batches(cpu.val, 4)), list(iterate_batches(gpu.val, 4))
        assert [y.tolist() for _, y in a] == [y.tolist() for _, y in b]
        xa, xb = torch.cat([x for x, _ in a]), torch.cat([x for x, _ in b])
        assert xa.shape == xb.shape and xb.dtype == torch.float32
        diff = (xa - xb).abs() * STD255
        assert diff.max() <= max_tol and diff.mean() <= mean_tol, (split, float(diff.max()), float(diff.mean()))


def _png_in_disguise(path):
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def test_falls_back_to_pil_for_an_image_decode_jpeg_refuses(tmp_path):
    from torchvision.io import decode_jpeg

    root = make_imagefolder(tmp_path / "inet")
    fake = sorted((root / "train" / WNIDS[1]).iterdir())[0]
    _png_in_disguise(fake)
    with pytest.raises(RuntimeError):  # the case under test: decode_jpeg refuses it
        decode_jpeg(torch.frombuffer(bytearray(fake.read_bytes()), dtype=torch.uint8))
    cpu, gpu = data_of(root, "cpu"), data_of(root, "gpu")
    skipped: list = []
    a, b = _batches(cpu.train), _batches(gpu.train, skipped=skipped)
    assert skipped == [] and sum(len(y) for _, y in b) == len(gpu.train)
    diff = (torch.cat([x for x, _ in a]) - torch.cat([x for x, _ in b])).abs() * STD255
    assert diff.max() <= 1.5  # the PNG sample is decoded by PIL in both pipelines: same pixels


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "breakage", [_truncate, lambda p: p.write_bytes(b"not an image")], ids=["truncated", "garbage"]
)
def test_unreadable_file_same_error_and_skip_as_the_pil_pipeline(tmp_path, breakage):
    from lskd_bench.errors import DataError

    root = make_imagefolder(tmp_path / "inet")
    bad = sorted((root / "train" / WNIDS[1]).iterdir())[1]
    breakage(bad)
    errors, kept, before = {}, {}, {}
    for decode in ("cpu", "gpu"):
        data = data_of(root, decode)
        got = []
        with pytest.raises(DataError) as info:
            for b in load_batches(data.train, batch_plan(len(data.train), 2, shuffle=False)):
                got.append(b)
        errors[decode], before[decode] = str(info.value), len(got)
        assert isinstance(data.train, EncodedImages) == (decode == "gpu")
        skipped: list = []
        kept[decode] = [y.tolist() for _, y in _batches(data.train, skipped=skipped, on_bad_sample="skip")], skipped
    assert errors["gpu"] == errors["cpu"] and str(bad) in errors["gpu"]
    assert before["gpu"] == before["cpu"] == 2  # the batches before the bad one (file 6 of 12, batches of 2) came first
    assert kept["gpu"] == kept["cpu"] and kept["gpu"][1] == [str(bad)]


def test_run_with_gpu_decode_exits_2_naming_the_file(tmp_path, cli):
    root = make_imagefolder(tmp_path / "inet")
    bad = sorted((root / "train" / WNIDS[1]).iterdir())[1]
    _truncate(bad)
    rc, _, err = cli(
        "run",
        "--task",
        "imagenet",
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "runs"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "2",
        "--alphas",
        "0.1",
        "--temperatures",
        "1",
        "--set",
        "data.image_size=32",
        "--set",
        "data.decode=gpu",
        "--no-progress",
    )
    assert rc == 2 and err.count("\n") == 1
    assert f"lskd-bench: error: cannot read {bad}: OSError: Truncated File Read" in err


def test_decode_is_not_part_of_the_cell_hash(imagenet_root):
    names = {}
    for decode in ("auto", "cpu", "gpu"):
        cfg = resolve_config("imagenet", {}, {"data": {"root": str(imagenet_root), "decode": decode}})
        names[decode] = [f"{c.name}-{c.hash}" for c in plan_cells(cfg)]
    assert names["auto"] == names["cpu"] == names["gpu"]


@pytest.mark.slow
def test_fused_and_resumed_students_identical_with_gpu_decode(imagenet_root, tmp_path):
    role = {"epochs": 2, "batch_size": 4, "lr": 0.001, "warmup_epochs": 0}
    cfg = resolve_config("imagenet", {}, {
        "data": {"root": str(imagenet_root), "image_size": 32, "decode": "gpu"}, "num_workers": 2, "eval_batch_size": 8,
        "grid": {"alphas": [0.1], "temperatures": [4.0]}, "teacher": {**role, "epochs": 1}, "student": role,
        "analysis": {"export": False},
    })  # fmt: skip
    task = get_task("imagenet")
    data = task.load_data(cfg)
    assert isinstance(data.train, EncodedImages)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    (o,) = train_group(task, [teacher], cfg, data, [tmp_path / "t"], progress=False)
    assert o.error is None
    tmodel = load_model(task, teacher.arch, data, cfg, tmp_path / "t" / store.MODEL, torch.device("cpu"))
    students = [c for c in cells if c.role != "teacher"]
    assert len(students) == 2
    assert_fused_equals_alone(task, students, cfg, data, tmodel, tmp_path)

    def stop_mid_epoch(epoch, i):
        if epoch == 1 and i == 1:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"  # killed in epoch 2: resumes from the end of epoch 1
    with pytest.raises(KeyboardInterrupt):
        train_group(
            task,
            students,
            cfg,
            data,
            [cut / c.name for c in students],
            teacher=tmodel,
            progress=False,
            on_step=stop_mid_epoch,
        )
    assert all(torch.load(cut / c.name / store.STATE, weights_only=False)["position"]["epoch"] == 1 for c in students)
    out = train_group(task, students, cfg, data, [cut / c.name for c in students], teacher=tmodel, progress=False)
    assert all(o.error is None for o in out)
    assert all(same_weights(cut / c.name, tmp_path / "alone" / c.name) for c in students)
    res = json.loads((cut / students[0].name / store.RESULT).read_text())
    assert res["config"]["data"]["decode"] == "gpu"


def test_cuda_decode_waits_for_the_stream_it_decodes_into(monkeypatch):
    """torchvision's CUDA decode_jpeg allocates its outputs on the caller's stream and has nvJPEG write them from
    another stream without waiting (pytorch/vision#9606): memory freed by the previous batch's augmentation, whose
    kernels may still be queued on that stream, would be overwritten under them. decode_images therefore
    synchronises the caller's stream before every CUDA decode (simulated: a fake stream, a fake decoder)."""
    import torchvision.io

    from lskd_bench.tasks import device_images

    calls = []

    class Stream:
        def synchronize(self):
            calls.append("synchronize")

    def fake_decode(data, mode, device):
        calls.append("decode")
        return (
            [torch.zeros(3, 2, 2, dtype=torch.uint8) for _ in data] if isinstance(data, list) else torch.zeros(3, 2, 2)
        )

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake_decode)
    data = [torch.zeros(4, dtype=torch.uint8)] * 3
    imgs, bad = device_images.decode_images(data, ["a", "b", "c"], torch.device("cuda", 0))
    assert calls == ["synchronize", "decode"] and len(imgs) == 3 and not bad
    calls.clear()
    device_images.decode_images(data, ["a", "b", "c"], torch.device("cpu"))
    assert calls == ["decode"]  # the CPU decoder is synchronous: nothing to wait for
