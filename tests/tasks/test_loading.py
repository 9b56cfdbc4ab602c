"""The loading engine (lskd_bench/tasks/loading.py): batch plans, the loader of one epoch and the read-ahead.

Bit-identity (fused = sequential, resumed = uninterrupted, read ahead = loaded when asked) rests on these: the
order of an epoch is a function of (seed, epoch) only, reading ahead changes when a batch is made, never which
batch or in what order, and an error or an early stop leaves no worker thread or process behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading

import pytest
import torch
from torch.utils.data import Dataset

from lskd_bench.errors import DataError
from lskd_bench.tasks import base, loading
from lskd_bench.tasks.loading import (
    BadSample,
    Batches,
    InMemoryDataset,
    LoaderIterator,
    batch_plan,
    close_batches,
    epoch_loader,
    epoch_permutation,
    epoch_seed,
    finished_ahead,
    iterate_batches,
    load_batches,
    train_plan,
)

CPU = torch.device("cpu")


def _live_children() -> list:
    return [p for p in multiprocessing.active_children() if p.is_alive()]


def _finisher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lskd-finish")]


class Noisy(Dataset):
    """A sample is its index plus a draw from the global RNG (as a random augmentation is)."""

    def __init__(self, n: int = 10):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]) + torch.rand(1), i


class Finishing(Noisy):
    """A dataset whose batches are completed in the main process (as ``EncodedImages`` decodes on the GPU):
    ``finish_batch`` doubles the inputs; indices in ``bad`` are reported as unreadable."""

    device = CPU

    def __init__(self, n: int = 10, bad: tuple[int, ...] = ()):
        super().__init__(n)
        self.bad = bad

    def finish_batch(self, batch, device):
        x, y = batch
        keep = [k for k, i in enumerate(y.tolist()) if i not in self.bad]
        bad = [BadSample(f"img{i}.jpg", "truncated") for i in y.tolist() if i in self.bad]
        return ((2 * x[keep], y[keep]) if keep else None), bad


# ---------------------------------------------------------------------------------------------- plans
def test_epoch_seed_is_the_published_formula():
    """Every stored result's batch order was drawn from seed * 100_003 + epoch: changing it changes them all."""
    assert epoch_seed(0, 0) == 0 and epoch_seed(3, 7) == 3 * 100_003 + 7
    g = torch.Generator().manual_seed(2 * 100_003 + 5)
    assert torch.equal(epoch_permutation(50, 2, 5), torch.randperm(50, generator=g))


def test_epoch_order_is_a_function_of_seed_and_epoch_only():
    torch.manual_seed(123)  # the global RNG plays no part
    a = batch_plan(20, 4, shuffle=True, seed=1, epoch=3)
    torch.manual_seed(456)
    b = batch_plan(20, 4, shuffle=True, seed=1, epoch=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a), torch.cat(batch_plan(20, 4, shuffle=True, seed=1, epoch=4)))
    assert not torch.equal(torch.cat(a), torch.cat(batch_plan(20, 4, shuffle=True, seed=2, epoch=3)))
    assert sorted(torch.cat(a).tolist()) == list(range(20))


def test_a_resumed_epoch_is_the_tail_of_the_uninterrupted_one():
    full = batch_plan(23, 4, shuffle=True, seed=0, epoch=1, drop_last=True)
    assert len(full) == 5  # 23 // 4, the last 3 samples dropped
    ds = InMemoryDataset(torch.arange(23.0)[:, None], torch.arange(23))
    resumed = list(load_batches(ds, full[2:]))
    assert [y.tolist() for _, y in resumed] == [idx.tolist() for idx in full[2:]]


def test_ranks_rows_in_rank_order_are_one_process_batch_in_its_order():
    """Several processes split each global batch into contiguous shares: gathered in rank order (as
    runners.distributed gathers a step's outputs) they are one process's batch, sample for sample."""
    one = train_plan(23, 6, seed=0, epoch=2)
    for world in (2, 3):
        ranks = [train_plan(23, 6, seed=0, epoch=2, shard=(r, world)) for r in range(world)]
        assert {len(p) for p in ranks} == {len(one)} == {3}  # the partial batch of 5 dropped everywhere
        for k, batch in enumerate(one):
            assert [len(p[k]) for p in ranks] == [6 // world] * world
            assert torch.cat([p[k] for p in ranks]).tolist() == batch.tolist()
    # a split smaller than one global batch: one batch, shared as evenly as it goes
    ranks = [train_plan(5, 8, seed=0, epoch=0, shard=(r, 2)) for r in range(2)]
    assert [len(p[0]) for p in ranks] == [3, 2]
    assert torch.cat([p[0] for p in ranks]).tolist() == train_plan(5, 8, seed=0, epoch=0)[0].tolist()


def test_the_loaders_generator_is_seeded_by_the_epoch_seed():
    plan = batch_plan(6, 2, shuffle=False)
    loader = epoch_loader(Noisy(6), plan, 4, 9, 0, False, "error")
    assert loader.generator.initial_seed() == epoch_seed(4, 9)


# ---------------------------------------------------------------------------------------------- loading
def test_in_memory_data_is_sliced_in_plan_order_without_a_loader():
    ds = InMemoryDataset(torch.arange(10.0)[:, None] * 10, torch.arange(10))
    plan = batch_plan(10, 3, shuffle=True, seed=5, epoch=0)
    batches = load_batches(ds, plan, num_workers=2)
    assert len(batches) == 4 and batches.lead == 0 and batches.plan is plan
    for (x, y), idx in zip(batches, plan, strict=True):
        assert y.tolist() == idx.tolist() and x[:, 0].tolist() == (idx * 10.0).tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_loaded_batches_follow_the_plan_with_per_sample_seeds(workers):
    """The same plan gives the same batches (inputs included: each sample's draws are seeded by (seed, epoch,
    index)) whatever the worker count and whatever the global RNG holds."""
    plan = batch_plan(10, 3, shuffle=True, seed=1, epoch=2)
    torch.manual_seed(99)
    ref = list(load_batches(Noisy(), plan, seed=1, epoch=2))
    torch.manual_seed(7)
    got = load_batches(Noisy(), plan, seed=1, epoch=2, num_workers=workers)
    assert len(got) == 4 and got.lead == workers * loading.PREFETCH
    got = list(got)
    assert [y.tolist() for _, y in got] == [idx.tolist() for idx in plan]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref, got, strict=True))
    other = list(load_batches(Noisy(), plan, seed=1, epoch=3))
    assert not torch.equal(ref[0][0], other[0][0])  # another epoch, other augmentation


def test_opening_an_epoch_ahead_leaves_the_callers_random_stream_alone():
    """Opening an epoch (its workers start) does not touch the global RNG; its one draw is taken when the first
    batch is read, so dropout draws the same numbers whether the epoch was opened early or not."""
    plan = batch_plan(4, 2, shuffle=False)
    torch.manual_seed(0)
    it = iter(load_batches(Noisy(4), plan, num_workers=1))
    after_open = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after_open, torch.rand(1))
    torch.manual_seed(0)
    next(it)
    after_first = torch.rand(1)
    close_batches(it)
    torch.manual_seed(0)
    torch.empty((), dtype=torch.int64).random_()
    assert torch.equal(after_first, torch.rand(1))


def test_close_stops_the_workers_and_ends_the_epoch():
    plan = batch_plan(10, 2, shuffle=False)
    it = iter(load_batches(Noisy(), plan, num_workers=2))
    assert isinstance(it, LoaderIterator)
    next(it)
    assert len(_live_children()) == 2
    close_batches(it)
    assert _live_children() == []
    assert list(it) == []  # closed: nothing more
    close_batches(it)  # a second close is a no-op
    close_batches(iter([1, 2]))  # in-process iterators have nothing to stop


def test_a_bad_sample_stops_the_epoch_naming_it_or_is_skipped():
    plan = batch_plan(6, 2, shuffle=False)

    class Broken(Noisy):
        samples = tuple((f"img{i}.jpg", 0) for i in range(6))

        def __getitem__(self, i):
            if i == 3:
                raise OSError("truncated")
            return super().__getitem__(i)

    with pytest.raises(DataError, match=r"cannot read img3\.jpg: OSError: truncated"):
        list(load_batches(Broken(6), plan))
    skipped: list[str] = []
    got = list(load_batches(Broken(6), plan, on_bad_sample="skip", skipped=skipped))
    assert [y.tolist() for _, y in got] == [[0, 1], [2], [4, 5]] and skipped == ["img3.jpg"]


# ---------------------------------------------------------------------------------------------- read-ahead
class Pulls:
    """An iterator over ``items`` that records how many were pulled and raises ``error`` after them."""

    def __init__(self, items, error: Exception | None = None):
        self.items, self.error, self.pulled = list(items), error, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.pulled == len(self.items):
            if self.error is not None:
                raise self.error
            raise StopIteration
        self.pulled += 1
        return self.items[self.pulled - 1]


def _double(b, device):
    return (2 * b,), []


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_read_ahead_order_equals_plain_order(depth):
    raw = [torch.tensor([float(i)]) for i in range(7)]
    got = list(finished_ahead(Pulls(raw), _double, CPU, "error", None, depth=depth))
    assert [t[0].item() for t in got] == [2.0 * i for i in range(7)]


def test_read_ahead_pulls_depth_plus_one_batches_before_the_first_is_handed_over():
    raw = Pulls([torch.tensor([float(i)]) for i in range(7)])
    it = finished_ahead(raw, _double, CPU, "error", None, depth=2)
    assert raw.pulled == 0  # nothing happens until the epoch is consumed
    next(it)
    assert raw.pulled == 3
    it.close()
    assert raw.pulled == 3 and not _finisher_threads()  # closed early: no more pulls, the thread is gone


def test_a_loading_error_comes_after_the_batches_before_it_and_ends_the_thread():
    raw = Pulls([torch.tensor([1.0]), torch.tensor([2.0])], error=OSError("disk gone"))
    it = finished_ahead(raw, _double, CPU, "error", None)
    assert next(it)[0].item() == 2.0 and next(it)[0].item() == 4.0
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    assert not _finisher_threads()


def test_an_error_while_finishing_reaches_the_consumer_and_cancels_the_rest():
    finished = []

    def finish(b, device):
        if b.item() == 1.0:
            raise RuntimeError("decoder failed")
        finished.append(b.item())
        return (b,), []

    raw = Pulls([torch.tensor([float(i)]) for i in range(6)])
    it = finished_ahead(raw, finish, CPU, "error", None, depth=1)
    assert next(it)[0].item() == 0.0
    with pytest.raises(RuntimeError, match="decoder failed"):
        next(it)
    assert not _finisher_threads()
    assert raw.pulled <= 4 and max(finished) <= 3.0  # nothing pulled or finished past the window


def test_bad_samples_of_finished_batches_follow_the_policy():
    plan = batch_plan(6, 2, shuffle=False)
    with pytest.raises(DataError, match=r"cannot read img3\.jpg: truncated"):
        list(load_batches(Finishing(6, bad=(3,)), plan))
    skipped: list[str] = []
    got = list(load_batches(Finishing(6, bad=(2, 3)), plan, on_bad_sample="skip", skipped=skipped))
    assert [y.tolist() for _, y in got] == [[0, 1], [4, 5]]  # the batch left empty is dropped
    assert skipped == ["img2.jpg", "img3.jpg"]


@pytest.mark.parametrize("workers", [0, 2])
def test_finished_batches_equal_finishing_each_batch_when_asked(workers):
    plan = batch_plan(10, 3, shuffle=True, seed=2, epoch=1)
    ds = Finishing()
    plain = [ds.finish_batch(b, CPU)[0] for b in load_batches(Noisy(), plan, seed=2, epoch=1)]
    got = list(load_batches(ds, plan, seed=2, epoch=1, num_workers=workers))
    assert len(got) == len(plain) == 4
    for (x, y), (px, py) in zip(got, plain, strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)
    assert not _finisher_threads()


def test_iterate_batches_reads_a_whole_split_in_order():
    ds = InMemoryDataset(torch.zeros(7, 1), torch.arange(7))
    assert [y.tolist() for _, y in iterate_batches(ds, 3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_batches_know_their_length_before_loading():
    made = []
    b = Batches(3, lambda: iter(made.append(1) or [1, 2, 3]), lead=4)
    assert len(b) == 3 and b.lead == 4 and not made
    assert list(b) == [1, 2, 3] and made == [1]


def test_the_plugin_api_re_exports_the_engine():
    """Task plugins import these from lskd_bench.tasks.base (as before the engine had its own module)."""
    for name in (
        "Batches",
        "BadSample",
        "GuardedDataset",
        "InMemoryDataset",
        "batch_plan",
        "close_batches",
        "epoch_permutation",
        "epoch_seed",
        "iterate_batches",
        "load_batches",
        "unwrap_batch",
    ):
        assert getattr(base, name) is getattr(loading, name), name


def test_on_cuda_the_consumer_waits_for_the_side_stream_before_it_reads_a_batch(monkeypatch):
    """The CUDA hand-over, simulated without a GPU: each batch is finished on the side stream, which records an
    event after it; the consumer's stream waits on that event before the batch is handed over."""
    log = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_event(self, event):
            log.append(("wait", event.batch, self.name))

    class Event:
        def record(self, stream):
            self.batch = current[0]
            log.append(("record", self.batch, stream.name))

    current = [None]
    side, consumer = Stream("side"), Stream("consumer")
    entered = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: side)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: consumer)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: entered.append(s.name) or contextlib.nullcontext())

    def finish(b, device):
        assert device == torch.device("cuda", 0)
        current[0] = int(b)
        return (b,), []

    got = []
    for (b,) in finished_ahead(iter(range(4)), finish, torch.device("cuda", 0), "error", None):
        assert log[-1] == ("wait", b, "consumer")  # waited on this batch's event just before
        got.append(b)
    assert got == [0, 1, 2, 3] and entered == ["side"] * 4
    assert [e for e in log if e[0] == "record"] == [("record", i, "side") for i in range(4)]


def test_train_plan_keeps_the_global_batch_and_drops_the_partial_one():
    """Each of 2 processes takes batch_size // 2 samples a step of the same permutation; the last partial global
    batch is dropped, unless the whole split is smaller than one global batch."""
    from lskd_bench.tasks.loading import epoch_permutation, train_plan

    ranks = [train_plan(10, 4, seed=1, epoch=2, shard=(r, 2)) for r in range(2)]
    assert [len(b) for b in ranks[0]] == [2, 2] and [len(b) for b in ranks[1]] == [2, 2]
    seen = torch.cat([torch.cat(p) for p in ranks])
    assert set(seen.tolist()) <= set(epoch_permutation(10, 1, 2)[:8].tolist()) and len(set(seen.tolist())) == 8
    assert [len(b) for b in train_plan(3, 4, seed=1, epoch=2)] == [3]  # smaller than one batch: kept
