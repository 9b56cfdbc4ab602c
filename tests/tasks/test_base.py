"""Loading across the epoch boundary (DataLoader workers, num_workers > 0, on the image fixtures): epoch e+1's
loading starts before epoch e ends, results equal those of the epoch-by-epoch loading (resumed, fused or
alone), and no worker process outlives a run that finishes, fails or is interrupted."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time

import pytest
import torch
from torch.utils.data import Dataset

from lskd_bench.errors import DataError
from lskd_bench.runners import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.train import FusedGroup, load_model, train_group
from lskd_bench.tasks import get_task
from lskd_bench.tasks.base import batch_plan, epoch_permutation, train_plan

from ..fixtures import WNIDS, make_imagefolder

HANG_GUARD = 120.0  # seconds: only a hang reaches it


def _cfg(root, decode="cpu", **role):
    r = {"epochs": 2, "batch_size": 4, "lr": 0.001, "warmup_epochs": 0, **role}
    return resolve_config("imagenet", {}, {
        "data": {"root": str(root), "image_size": 32, "decode": decode}, "num_workers": 2, "eval_batch_size": 8,
        "grid": {"alphas": [0.1], "temperatures": [4.0]}, "teacher": r, "student": r, "analysis": {"export": False},
    })  # fmt: skip


class Recording(Dataset):
    """The training split, each read appended to a file by the worker process that made it."""

    def __init__(self, ds, log):
        self.ds, self.log = ds, log

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        with open(self.log, "a") as f:
            f.write(f"{i}\n")
        return self.ds[i]

    def __getattr__(self, name):  # samples, targets, collate... of the wrapped split
        if name in ("ds", "log"):
            raise AttributeError(name)
        return getattr(self.ds, name)


def _reads(log):
    return len(log.read_text().splitlines()) if log.exists() else 0


def _no_workers_left():
    return [p for p in multiprocessing.active_children() if p.is_alive()] == []


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["cpu", "gpu"])  # gpu: EncodedImages, decoded by torchvision (here on the CPU)
def test_next_epoch_is_read_while_the_last_batches_train(imagenet_root, tmp_path, decode):
    cfg = _cfg(imagenet_root, decode)
    task = get_task("imagenet")
    data = task.load_data(cfg)
    log = tmp_path / "reads"
    data = dataclasses.replace(data, train=Recording(data.train, log))
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    per_epoch = len(data.train) // 4 * 4  # 12 images, batches of 4 (drop_last): every image once an epoch
    seen = []

    def on_step(epoch, i):
        if epoch == 0 and i == per_epoch // 4 - 1:  # epoch 1's last step is done, its end not yet reached
            until = time.monotonic() + HANG_GUARD
            while _reads(log) <= per_epoch and time.monotonic() < until:
                time.sleep(0.01)
            seen.append(_reads(log))

    (o,) = train_group(task, [teacher], cfg, data, [tmp_path / "t"], progress=False, on_step=on_step)
    assert o.error is None
    assert seen and seen[0] > per_epoch  # a worker read an epoch-2 image before epoch 1 ended
    assert _reads(log) == 2 * per_epoch  # ... and no image twice: the opened-ahead epoch was the one trained
    assert _no_workers_left()


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_read_ahead_results_equal_epoch_by_epoch_loading_fused_alone_and_resumed(
    imagenet_root, tmp_path, decode, monkeypatch
):
    cfg = _cfg(imagenet_root, decode, epochs=3, checkpoint_every=1)
    cfg["teacher"]["epochs"] = 1
    task = get_task("imagenet")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    assert train_group(task, [teacher], cfg, data, [tmp_path / "t"], progress=False)[0].error is None
    tmodel = load_model(task, teacher.arch, data, cfg, tmp_path / "t" / store.MODEL, torch.device("cpu"))
    students = [c for c in cells if c.role != "teacher"]
    assert len(students) == 2

    def run(name, cells, **kw):
        out = train_group(
            task, cells, cfg, data, [tmp_path / name / c.name for c in cells], teacher=tmodel, progress=False, **kw
        )
        assert all(o.error is None for o in out)
        return {c.name: torch.load(tmp_path / name / c.name / store.MODEL, weights_only=True) for c in cells}

    def same(a, b):
        return all(a[k].keys() == b[k].keys() and all(torch.equal(a[k][p], b[k][p]) for p in a[k]) for k in a)

    fused = run("fused", students)
    alone = {}
    for c in students:
        alone.update(run("alone", [c]))
    with monkeypatch.context() as m:  # the loading of before: each epoch opened when it starts
        m.setattr(FusedGroup, "read_ahead", False)
        before = run("before", students)
    assert same(fused, alone) and same(fused, before)

    def stop(epoch, i):  # the last step of epoch 1: epoch 2 is already being read
        if epoch == 0 and i == 2:
            raise KeyboardInterrupt

    try:
        run("cut", students, on_step=stop)
    except KeyboardInterrupt:  # checked while the exception (and the frames it holds) is still alive
        assert _no_workers_left()
    else:
        pytest.fail("not interrupted")
    state = torch.load(tmp_path / "cut" / students[0].name / store.STATE, weights_only=False)
    assert (state["position"]["epoch"], state["position"]["step"]) == (
        0,
        3,
    )  # the mid-epoch checkpoint (checkpoint_every=1)
    assert same(run("cut", students), alone)
    assert _no_workers_left()


@pytest.mark.slow
def test_no_worker_left_after_a_bad_sample_error(tmp_path):
    root = make_imagefolder(tmp_path / "inet")
    bad = sorted((root / "train" / WNIDS[2]).iterdir())[0]
    bad.write_bytes(b"not an image")
    cfg = _cfg(root)
    task = get_task("imagenet")
    data = task.load_data(cfg)
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    try:
        train_group(task, [teacher], cfg, data, [tmp_path / "t"], progress=False)
    except DataError as exc:  # checked while the exception (and the frames it holds) is still alive
        assert f"cannot read {bad}" in str(exc)
        assert _no_workers_left()
    else:
        pytest.fail("no DataError")


# ------------------------------------------------------------------------------------------ batch plans
def test_an_epochs_order_is_a_function_of_seed_and_epoch_only():
    a = torch.cat(batch_plan(10, 3, shuffle=True, seed=1, epoch=2))
    assert sorted(a.tolist()) == list(range(10))
    assert torch.equal(a, torch.cat(batch_plan(10, 4, shuffle=True, seed=1, epoch=2)))  # batch size aside
    assert not torch.equal(a, torch.cat(batch_plan(10, 3, shuffle=True, seed=1, epoch=3)))
    assert not torch.equal(a, torch.cat(batch_plan(10, 3, shuffle=True, seed=2, epoch=2)))
    assert [len(b) for b in batch_plan(10, 3, shuffle=False)] == [3, 3, 3, 1]
    assert [len(b) for b in batch_plan(10, 3, shuffle=False, drop_last=True)] == [3, 3, 3]


def test_ddp_shards_take_disjoint_samples_and_the_same_number_of_steps():
    shards = [train_plan(11, 6, seed=0, epoch=0, shard=(r, 3)) for r in range(3)]
    assert {len(s) for s in shards} == {1}
    seen = [i for s in shards for b in s for i in b.tolist()]
    assert len(seen) == len(set(seen)) == 6  # one global batch of 6 (the partial 5 dropped), 2 per process
    assert seen == epoch_permutation(11, 0, 0)[:6].tolist()
