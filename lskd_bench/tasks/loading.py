"""The loading engine of the tasks: batch plans, the loader of one epoch, read-ahead and bad samples.

A task's ``train_batches`` returns ``Batches``; for data on disk it builds them with ``load_batches``, and
evaluation and feature export read whole splits with ``iterate_batches``. What is loaded and in which order is
a function of (seed, epoch) only (``epoch_seed``), so a resumed, fused or read-ahead run sees exactly the batches
of an uninterrupted, unfused one:

- ``batch_plan``: the sample indices of each batch of one epoch (``epoch_permutation``), sharded for DDP;
- ``GuardedDataset``: each sample's random augmentation seeded by (seed, epoch, index), and a sample that fails
  to load returned as a ``BadSample`` (``guarded_collate`` and ``unwrap_batch`` apply ``data.on_bad_sample``);
- ``load_batches``: the planned batches through a ``DataLoader`` (``LoaderIterator``: its workers start when
  the epoch is opened and are joined by ``close_batches``), in-memory data sliced directly;
- ``finished_ahead``: batches a dataset completes on the device (``finish_batch``: GPU decoding), finished up to
  two batches ahead in a background thread.

The plugin API (``tasks.base``) re-exports these names.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import DataError


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's sample order and of its loader's generator: a function of (seed, epoch) only.
    Bit-identity (fused = sequential, resumed = uninterrupted) rests on every user of it drawing from this one
    formula."""
    return seed * 100_003 + epoch


class InMemoryDataset(Dataset):
    """Whole split as two tensors; batched by indexing, with no DataLoader overhead."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        assert len(x) == len(y)
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


# ------------------------------------------------------------------------------------------ batch plans
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=g)


def batch_plan(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    indices: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Index batches of one epoch."""
    if indices is None:
        indices = epoch_permutation(n, seed, epoch) if shuffle else torch.arange(n)
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    return [indices[i : i + batch_size] for i in range(0, stop, batch_size)]


def train_plan(
    n: int, batch_size: int, *, seed: int, epoch: int, shard: tuple[int, int] = (0, 1)
) -> list[torch.Tensor]:
    """One process's shuffled training batches of one epoch. The global batches are one process's (``batch_size``
    rounded down to a multiple of the ``world`` processes); the last partial one is dropped unless the split is
    smaller than one global batch. Each process takes its contiguous share of every global batch in rank order
    (``torch.tensor_split``), so the processes' rows gathered in rank order are one process's batch, in its order
    (``runners.distributed``: sample-coupled losses such as CC's or CRD's see the same rows in the same order)."""
    rank, world = shard
    size = max(1, batch_size // world) * world
    plan = batch_plan(n, size, shuffle=True, seed=seed, epoch=epoch, drop_last=n > size)
    return plan if world == 1 else [b.tensor_split(world)[rank] for b in plan]


@dataclass(frozen=True)
class BadSample:
    """Returned in place of a sample that failed to load; the collate function applies the policy."""

    path: str
    reason: str


class GuardedDataset(Dataset):
    """Wraps a map-style dataset of files so that

    - each sample's random augmentation is seeded by (seed, epoch, index): identical whatever the worker
      count, the resume point or the other students sharing the data pass;
    - a sample that fails to load comes back as ``BadSample(path, reason)`` instead of raising inside a
      worker (see ``guarded_collate``).
    """

    def __init__(self, ds: Dataset, seed: int, epoch: int):
        self.ds, self.seed, self.epoch = ds, seed, epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        s = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                state = random.getstate()
                random.seed(s)
                try:
                    return self.ds[i]
                finally:
                    random.setstate(state)
        except Exception as exc:
            return BadSample(sample_path(self.ds, i), f"{type(exc).__name__}: {exc}")


def sample_path(ds: Dataset, i: int) -> str:
    samples = getattr(ds, "samples", None)
    if samples is not None:
        return str(samples[i][0])
    return f"sample {i}"


@dataclass(frozen=True)
class PartialBatch:
    """A batch from which unreadable samples were dropped (policy ``skip``), with their paths."""

    batch: Any
    skipped: tuple[str, ...]


def guarded_collate(policy: str, inner: Callable[[list], Any] = default_collate) -> Callable[[list], Any]:
    """Collate (``inner``) that drops ``BadSample``s (policy ``skip``: a ``PartialBatch``) or returns the
    first one (``error``). It never raises, because it may run in a worker process: ``unwrap_batch`` acts on
    the result in the main process."""

    def collate(items: list):
        bad = [s for s in items if isinstance(s, BadSample)]
        if not bad:
            return inner(items)
        if policy != "skip":
            return bad[0]
        good = [s for s in items if not isinstance(s, BadSample)]
        return PartialBatch(inner(good) if good else None, tuple(b.path for b in bad))

    return collate


def unwrap_batch(batch: Any, skipped: list[str] | None) -> Any:
    """The batch to train on (None: every sample was skipped); raise ``DataError`` for a bad sample."""
    if isinstance(batch, BadSample):
        raise DataError(
            f"cannot read {batch.path}: {batch.reason} "
            "(check the data with 'lskd-bench check-data', or --set data.on_bad_sample=skip)"
        )
    if isinstance(batch, PartialBatch):
        if skipped is not None:
            skipped.extend(batch.skipped)
        return batch.batch
    return batch


class Batches:
    """The batches of one epoch: ``len()`` is known up front, iteration loads them. ``lead`` is how many
    batches its loader reads ahead of the consumer: once no more than ``lead`` batches remain, the loader
    has all its work in hand and the runner opens the next epoch's iterator, so that epoch's first batches
    load while this one finishes (``iter()`` starts the loading; ``close_batches`` stops it). ``plan``, where
    known, is each batch's sample indices in the split (what methods with ``needs.indices`` read: CRD)."""

    def __init__(
        self, n: int, it: Callable[[], Iterator[Any]], lead: int = 0, plan: Sequence[torch.Tensor] | None = None
    ):
        self._n, self._it, self.lead, self.plan = n, it, lead, plan

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        return self._it()


class LoaderIterator:
    """The batches of one epoch from a ``DataLoader``: its worker processes start when this is made (they begin
    reading at once, ``prefetch_factor`` batches each) and are stopped and joined by ``close()``, which
    exhaustion, an error while loading and ``close_batches`` call: no worker outlives the epoch's use."""

    def __init__(self, loader: DataLoader, wrap: Callable[[Iterator[Any]], Iterator[Any]]):
        self._loader_it: Any = iter(loader)  # the workers fork here, in the caller's thread
        self._it = wrap(self._loader_it)
        self._started = False

    def __iter__(self) -> LoaderIterator:
        return self

    def __next__(self) -> Any:
        if self._loader_it is None:
            raise StopIteration
        if not self._started:
            # The loader draws its workers' base seed from its own generator; the one draw that iter(loader) took
            # from the global RNG is taken here, when the epoch is consumed, so the caller's random stream (dropout)
            # is the same whether this epoch was opened ahead or not.
            self._started = True
            torch.empty((), dtype=torch.int64).random_()
        try:
            return next(self._it)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        it, self._loader_it = self._loader_it, None
        if it is None:
            return
        close = getattr(self._it, "close", None)
        if close is not None:
            close()  # the batch pipeline (and a finished_ahead thread) first
        shutdown = getattr(it, "_shutdown_workers", None)  # joins the workers; __del__ would do it later
        if shutdown is not None:
            shutdown()


def close_batches(it: Any) -> None:
    """Stop an epoch's loading early (its worker processes end); a no-op for in-process iterators."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


PREFETCH = 2  # batches each DataLoader worker reads ahead (torch's default prefetch_factor)


def load_batches(
    ds: Dataset,
    plan: Sequence[torch.Tensor],
    *,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    on_bad_sample: str = "error",
    skipped: list[str] | None = None,
) -> Batches:
    """Load the planned batches of ``ds`` ((x, y) pairs); in-memory data is sliced directly.

    A dataset with ``collate`` and ``finish_batch(batch, device)`` methods (``device_images.EncodedImages``)
    has its workers return raw samples that ``finish_batch`` completes on ``ds.device`` (GPU decoding), up to two
    batches ahead in a background thread (on its own CUDA stream), so that the next batch is decoded while
    the caller trains on this one."""
    if isinstance(ds, InMemoryDataset):
        return Batches(len(plan), lambda: ((ds.x[idx], ds.y[idx]) for idx in plan), plan=plan)

    def wrap(batches: Iterator[Any]) -> Iterator[Any]:
        return batch_pipeline(batches, ds, on_bad_sample, skipped)

    def it():
        loader = epoch_loader(ds, plan, seed, epoch, num_workers, pin_memory, on_bad_sample)
        # worker processes start here, in the caller's thread (never fork from the finishing thread)
        return LoaderIterator(loader, wrap)

    return Batches(len(plan), it, lead=num_workers * PREFETCH, plan=plan)


def epoch_loader(
    ds: Dataset,
    plan: Sequence[torch.Tensor],
    seed: int,
    epoch: int,
    num_workers: int,
    pin_memory: bool,
    on_bad_sample: str,
) -> DataLoader:
    """The ``DataLoader`` of one epoch's planned batches: samples guarded and seeded by (seed, epoch, index), its
    workers' base seed drawn from a generator of ``epoch_seed`` (see ``LoaderIterator.__next__``)."""
    return DataLoader(
        GuardedDataset(ds, seed, epoch),
        batch_sampler=[idx.tolist() for idx in plan],
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=guarded_collate(on_bad_sample, getattr(ds, "collate", default_collate)),
        worker_init_fn=_seed_worker,
        prefetch_factor=PREFETCH if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)),
    )


def batch_pipeline(batches: Iterator[Any], ds: Dataset, policy: str, skipped: list[str] | None) -> Iterator[Any]:
    """The loader's collated batches as the caller trains on them: bad samples handled by ``policy``, batches of
    a dataset with ``finish_batch`` finished ahead on its device, batches left empty by ``skip`` dropped."""
    finish = getattr(ds, "finish_batch", None)
    raw = (unwrap_batch(b, skipped) for b in batches)
    if finish is not None:
        device = getattr(ds, "device", torch.device("cpu"))
        raw = finished_ahead(iter(b for b in raw if b is not None), finish, device, policy, skipped)
    return (b for b in raw if b is not None)


class _Finisher:
    """``finish(batch, device)`` run in the background thread (on CUDA: on a side stream, recording an event),
    and the finished batch handed to the consumer (its stream waiting on that event; bad samples by policy)."""

    def __init__(self, finish: Callable, device: torch.device, policy: str, skipped: list[str] | None):
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # the caller's device, not the thread's
        self.finish, self.device, self.policy, self.skipped = finish, device, policy, skipped
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def job(self, b: Any) -> tuple[Any, list[BadSample], Any]:
        if self.stream is None:
            return (*self.finish(b, self.device), None)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            out, bad = self.finish(b, self.device)
            event = torch.cuda.Event()
            event.record(self.stream)
        return out, bad, event

    def ready(self, out: Any, bad: list[BadSample], event: Any) -> Any:
        if bad:
            if self.policy != "skip":
                unwrap_batch(bad[0], self.skipped)  # raises DataError naming the file
            if self.skipped is not None:
                self.skipped.extend(b.path for b in bad)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in out or ():
                if torch.is_tensor(t) and t.is_cuda:
                    t.record_stream(current)
        return out


def _submit_next(raw: Iterator[Any], pool: ThreadPoolExecutor, job: Callable, pending: deque) -> BaseException | None:
    """Pull the next raw batch (in the caller's thread) and queue its finishing; what ended the raw batches
    instead (``StopIteration()`` or the loading error), or None."""
    try:
        b = next(raw)
    except StopIteration:
        return StopIteration()
    except Exception as exc:
        return exc
    pending.append(pool.submit(job, b))
    return None


def finished_ahead(
    raw: Iterator[Any],
    finish: Callable,
    device: torch.device,
    policy: str,
    skipped: list[str] | None,
    depth: int = 2,
) -> Iterator[Any]:
    """``finish(batch, device)`` of each raw batch, up to ``depth`` batches ahead in one background thread (on
    CUDA: on a side stream; the consumer's stream waits on an event before it reads a batch). The raw batches
    are pulled here, in the caller's thread: loading without workers seeds the global RNG per sample, which
    must not race with the caller's own use of it. The bad samples ``finish`` reports follow the policy, as
    ``unwrap_batch`` applies it to the workers' output; an error while loading comes after the batches before it.
    Closing the generator early cancels the batches not started and waits for the one being finished."""
    finisher = _Finisher(finish, device, policy, skipped)
    pending: deque[Future] = deque()
    error: BaseException | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="lskd-finish") as pool:
        try:
            while True:
                if error is None and len(pending) <= depth:
                    error = _submit_next(raw, pool, finisher.job, pending)
                elif pending:
                    out = finisher.ready(*pending.popleft().result())
                    if out is not None:
                        yield out
                elif error is not None and not isinstance(error, StopIteration):
                    raise error
                else:
                    return
        finally:
            for f in pending:
                f.cancel()


def iterate_batches(
    ds: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    indices: torch.Tensor | None = None,
    on_bad_sample: str = "error",
) -> Batches:
    """(x, y) batches of a whole split (evaluation, feature export)."""
    plan = batch_plan(len(ds), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, indices=indices)
    return load_batches(ds, plan, seed=seed, epoch=epoch, num_workers=num_workers, on_bad_sample=on_bad_sample)


def _seed_worker(worker_id: int) -> None:  # pragma: no cover - runs in worker processes
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
