"""What a task plugin provides, and the shared machinery of classification tasks.

The shared training loop (``runners/train.py``) owns optimisation, schedules, resume, DDP and the result
store. A task owns its data and models and tells the loop three things:

- ``train_batches(...)``: the batches of one epoch, in an order that depends only on (seed, epoch), so a
  resumed or fused run sees exactly the batches an uninterrupted, unfused run sees. The loop opens the next
  epoch's batches (``iter()``) while the last ``Batches.lead`` batches of the current one are consumed, so
  loading that starts at ``iter()`` (DataLoader workers) runs across the epoch boundary;
- ``forward(model, batch)``: logits and integer targets over the positions that count, shape (N, K) and
  (N,): one row per image, or one row per non-pad target token for translation;
- ``evaluate(model, data, cfg, device)``: the task's metrics (top-1/top-5, BLEU...);
- ``assess(model, data, cfg, device, hp)``: those metrics plus the score the best epoch is selected on and
  files to keep (translation: validation loss or BLEU, test hypotheses); by default the metrics alone,
  the best epoch then being the one with the highest primary metric on ``val`` (the paper's image convention,
  where ``val`` is the test set).
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import DataError, UsageError
from ..metrics import TOPK, MetricSpec, topk_correct
from ..models import ClassifierNet  # noqa: F401  (re-exported: task plugins build it)
from ..schema import TRAIN, Field, Section, _suggest, deep_merge


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's sample order and of its loader's generator: a function of (seed, epoch) only, so
    resumed and fused runs draw what an uninterrupted one draws."""
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


@dataclass
class TaskData:
    train: Dataset
    val: Dataset
    num_classes: int
    class_names: list[str]
    # training split without augmentation (feature extraction for analysis); defaults to ``train``
    train_eval: Dataset | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Dataset:
        if name == "train_eval":
            return self.train_eval if self.train_eval is not None else self.train
        return getattr(self, name)

    def labels(self, name: str) -> torch.Tensor:
        ds = self.split(name)
        if isinstance(ds, InMemoryDataset):
            return ds.y
        targets = getattr(ds, "targets", None)
        if targets is None:
            raise TypeError(f"{type(ds).__name__} exposes no .targets")
        return torch.as_tensor(targets)


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
    shard: tuple[int, int] = (0, 1),
    indices: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Index batches of one epoch. ``shard=(rank, world)`` gives each DDP process every world-th sample of
    the same permutation, trimmed so that all processes take the same number of steps."""
    if indices is None:
        indices = epoch_permutation(n, seed, epoch) if shuffle else torch.arange(n)
    rank, world = shard
    if world > 1:
        indices = indices[: len(indices) - len(indices) % world][rank::world]
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    return [indices[i : i + batch_size] for i in range(0, stop, batch_size)]


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
    finish = getattr(ds, "finish_batch", None)

    def wrap(batches: Iterator[Any]) -> Iterator[Any]:
        raw = (unwrap_batch(b, skipped) for b in batches)
        if finish is not None:
            raw = finished_ahead(
                iter(b for b in raw if b is not None),
                finish,
                getattr(ds, "device", torch.device("cpu")),
                on_bad_sample,
                skipped,
            )
        return (b for b in raw if b is not None)

    def it():
        loader = DataLoader(
            GuardedDataset(ds, seed, epoch),
            batch_sampler=[idx.tolist() for idx in plan],
            num_workers=num_workers,
            pin_memory=pin_memory,
            collate_fn=guarded_collate(on_bad_sample, getattr(ds, "collate", default_collate)),
            worker_init_fn=_seed_worker,
            prefetch_factor=PREFETCH if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)),  # see LoaderIterator.__next__
        )
        # worker processes start here, in the caller's thread (never fork from the finishing thread)
        return LoaderIterator(loader, wrap)

    return Batches(len(plan), it, lead=num_workers * PREFETCH, plan=plan)


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
    ``unwrap_batch`` applies it to the workers' output; an error while loading comes after the batches before it."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # the caller's device, not the thread's
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def job(b):
        if stream is None:
            return (*finish(b, device), None)
        with torch.cuda.device(device), torch.cuda.stream(stream):
            out, bad = finish(b, device)
            event = torch.cuda.Event()
            event.record(stream)
        return out, bad, event

    def ready(out, bad, event):
        if bad:
            if policy != "skip":
                unwrap_batch(bad[0], skipped)  # raises DataError naming the file
            if skipped is not None:
                skipped.extend(b.path for b in bad)
        if event is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(event)
            for t in out or ():
                if torch.is_tensor(t) and t.is_cuda:
                    t.record_stream(current)
        return out

    pending: deque = deque()
    error: BaseException | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="lskd-finish") as pool:
        try:
            while True:
                if error is None and len(pending) <= depth:
                    try:
                        b = next(raw)
                    except StopIteration:
                        error = StopIteration()
                    except Exception as exc:
                        error = exc
                    else:
                        pending.append(pool.submit(job, b))
                    continue
                if pending:
                    out = ready(*pending.popleft().result())
                    if out is not None:
                        yield out
                    continue
                if error is not None and not isinstance(error, StopIteration):
                    raise error
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
):
    """(x, y) batches of a whole split (evaluation, feature export)."""
    plan = batch_plan(len(ds), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, indices=indices)
    return load_batches(ds, plan, seed=seed, epoch=epoch, num_workers=num_workers, on_bad_sample=on_bad_sample)


def _seed_worker(worker_id: int) -> None:  # pragma: no cover - runs in worker processes
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


# ------------------------------------------------------------------------------------------------ Task
def load_recipe(name: str) -> dict[str, Any]:
    """The recipe ``lskd_bench/configs/<name>.yaml``; ``base: other`` merges it over ``other.yaml`` (compact
    recipes extend their parents)."""
    text = resources.files("lskd_bench").joinpath("configs", f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    base = data.pop("base", None)
    return deep_merge(load_recipe(base), data) if base else data


# top-level config key of tasks with pairs (``Task.pairs_recipe``): not part of a cell's identity, the values
# it sets (archs, recipe, method parameters) are
PAIR = Field(
    str,
    None,
    "teacher-student pair whose published recipe is applied over the task's (--pair; 'lskd-bench tasks' lists them)",
    nullable=True,
)


@dataclass
class Evaluation:
    """What one evaluation of a model gives the training loop.

    ``metrics``: the reported metrics (on ``data.val``: the test split). ``selection``: the score the best
    epoch is chosen on (None: ``metrics[primary_metric]``, higher is better). ``outputs``: files written into
    the cell directory, name -> lines; ``{which}`` in a name becomes ``last`` (every evaluation) and
    ``selected`` (the evaluations that improve the selection score)."""

    metrics: dict[str, float]
    selection: float | None = None
    outputs: dict[str, list[str]] = field(default_factory=dict)


def refuse_special(path: Path) -> None:
    """UsageError for a data file that is not a regular file (a FIFO, socket, device, folder), before it is
    opened: opening a FIFO waits forever for a writer."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the read that follows says so
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise UsageError(f"{path} is {kind}, not a data file: refused unopened")


@dataclass
class DataReport:
    """What ``lskd-bench check-data`` found: counts per split and problems (each one line)."""

    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Task:
    """Base class of task plugins. Subclasses set the class attributes and implement the hooks."""

    name: str = ""
    description: str = ""
    kind: str = "classification"  # or "translation": which KD methods apply
    metrics: tuple[MetricSpec, ...] = TOPK  # what evaluate() returns, in table order
    primary_metric: str = "top1"  # picks the best epoch (in its direction) and the leaderboard's bold cell
    supports_analysis: bool = True  # penultimate features exported for analyze / visualize
    projection_classes: tuple[str, ...] = ()  # visualize's default class triple
    recipe: str = ""  # lskd_bench/configs/<recipe>.yaml: the task's default config over the schema's
    data_schema: Section = Section({})
    train_schema: Section = TRAIN
    extra_sections: dict[str, Section] = {}  # more top-level config sections of this task

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def metric(self, name: str) -> MetricSpec:
        return next(m for m in self.metrics if m.name == name)

    pairs_recipe: str = ""  # lskd_bench/configs/<name>.yaml with the task's teacher-student pairs (--pair)

    # -- config -----------------------------------------------------------------------------------
    def default_config(self) -> dict[str, Any]:
        """The task's recipe (values that differ from the schema defaults): ``lskd_bench/configs/<recipe>.yaml``."""
        return load_recipe(self.recipe) if self.recipe else {}

    def recipe_source(self) -> str:
        return f"recipe lskd_bench/configs/{self.recipe}.yaml" if self.recipe else f"task {self.name} defaults"

    def pairs(self) -> dict[str, dict[str, Any]]:
        """Named teacher-student pairs, each a partial config (its published recipe) with a ``source``."""
        if not self.pairs_recipe:
            return {}
        text = (
            resources.files("lskd_bench").joinpath("configs", f"{self.pairs_recipe}.yaml").read_text(encoding="utf-8")
        )
        return dict(yaml.safe_load(text)["pairs"])

    def pair_settings(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """KD-method settings across the pairs: ({method: keys some pair sets}, {method: why it has one setting for
        every pair}); the pairs recipe's ``shared`` block gives the reasons (their authors publish no per-pair values)."""
        if not self.pairs_recipe:
            return {}, {}
        text = resources.files("lskd_bench").joinpath("configs", f"{self.pairs_recipe}.yaml").read_text()
        data = yaml.safe_load(text)
        per_pair: dict[str, set] = {}
        for layer in data["pairs"].values():
            for section, values in layer.items():
                if section not in ("source", "teacher", "student", "data") and isinstance(values, dict):
                    per_pair.setdefault(section, set()).update(values)
        return {m: sorted(k) for m, k in sorted(per_pair.items())}, dict(data.get("shared") or {})

    def pair_layer(self, pair: str) -> tuple[str, dict[str, Any]]:
        """The config layer of ``pair`` (applied over the task's recipe, under config files and the command line)."""
        pairs = self.pairs()
        if not pairs:
            raise UsageError(f"task {self.name} has no teacher-student pairs (--pair applies to: cifar100, imagenet)")
        if pair not in pairs:
            raise UsageError(
                f"unknown pair {pair!r} for task {self.name}{_suggest(pair, list(pairs))} (known: {', '.join(pairs)})"
            )
        layer = {k: v for k, v in pairs[pair].items() if k != "source"}
        return f"pair {pair} (lskd_bench/configs/{self.pairs_recipe}.yaml)", {**layer, "pair": pair}

    def validate(self, cfg: dict[str, Any]) -> None:
        """Cheap checks of task-specific settings (data root layout, arch names); raise UsageError."""

    def check_layout(self, cfg: dict[str, Any]) -> None:
        """The data check ``run`` (and ``run --dry-run``) makes before writing anything: the layout and index
        files as training will read them (not every sample's content; ``check-data`` decodes those).
        Raise UsageError. Built-in data (digits) has nothing to check."""

    def probe_shape(self, cfg: dict[str, Any]) -> tuple[int, ...] | None:
        """The shape of one input sample (C, H, W), for checking a feature method's needs against the models before
        any data is read; None: the task's models have no named outputs (translation)."""
        return None

    def cpu_reason(self, cfg: dict[str, Any]) -> str | None:
        """Why ``device: auto`` should train on the CPU although a GPU is there (models too small to gain from
        it), or None."""
        return None

    def check_data(self, cfg: dict[str, Any], progress: bool = True) -> DataReport:
        """Scan the whole data root (decode every file...) for ``lskd-bench check-data``."""
        self.validate(cfg)
        data = self.load_data(cfg)
        return DataReport(counts={"train": len(data.train), "val": len(data.val)})

    # -- data and models --------------------------------------------------------------------------
    def load_data(self, cfg: dict[str, Any], cache_dir: Path | None = None) -> TaskData:
        """``cache_dir`` is a per-task directory of the run where derived data (a sub-word model) may
        be cached and shared by all cells."""
        raise NotImplementedError

    def build_model(self, arch: str, data: TaskData, cfg: dict[str, Any], hp: dict[str, Any]) -> nn.Module:
        """A fresh model; ``hp`` is the role's recipe (``cfg["teacher"]`` or ``cfg["student"]``)."""
        raise NotImplementedError

    def metric_info(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """How the metrics were computed (e.g. sacreBLEU's signature), saved in result.json."""
        return {}

    def selection(self, cfg: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any]:
        """How the best epoch is chosen (saved in result.json): split, metric, mode ("max" or "min").
        By default the primary metric, in its declared direction, on ``val``, which is the test set, as the paper reports."""
        higher = self.metric(self.primary_metric).higher_is_better
        return {
            "split": "val",
            "metric": self.primary_metric,
            "mode": "max" if higher else "min",
            "note": "the validation split is the test set (the paper's convention)",
        }

    def class_hierarchy(self, class_names: list[str]) -> dict[str, str]:
        """Child -> parent links over class names and their ancestors (analysis picks similar classes
        as siblings and dissimilar ones across distant branches). Empty: no hierarchy known."""
        return {}

    # -- the training loop's hooks (classification defaults) ---------------------------------------
    def train_batches(
        self,
        data: TaskData,
        role_cfg: dict[str, Any],
        cfg: dict[str, Any],
        *,
        seed: int,
        epoch: int,
        shard: tuple[int, int] = (0, 1),
        start: int = 0,
        pin_memory: bool = False,
        skipped: list[str] | None = None,
    ) -> Batches:
        """The training batches of ``epoch`` from batch number ``start`` on."""
        rank, world = shard
        bs = max(1, int(role_cfg["batch_size"]) // world)  # the global batch stays batch_size
        n = len(data.train)
        plan = batch_plan(n, bs, shuffle=True, seed=seed, epoch=epoch, drop_last=n > bs * world, shard=shard)
        return load_batches(
            data.train,
            plan[start:],
            seed=seed,
            epoch=epoch,
            num_workers=cfg["num_workers"],
            pin_memory=pin_memory,
            on_bad_sample=on_bad_sample(cfg),
            skipped=skipped,
        )

    def to_device(self, batch: Any, device: torch.device, cfg: dict[str, Any]) -> Any:
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cfg["channels_last"] and device.type == "cuda" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return model(x), y

    def teacher_targets(
        self, teacher: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device, cache: Path
    ) -> TaskData:
        """The training data relabelled by the teacher (sequence-level KD); cached at ``cache``."""
        raise NotImplementedError(f"task {self.name} does not produce teacher-generated targets")

    def export_artifacts(self, data: TaskData, cfg: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
        """Copy what using the finished cell needs besides its weights into ``cell_dir`` (a sub-word model);
        return the files, by role, for result.json."""
        return {}

    # -- evaluation -------------------------------------------------------------------------------
    def assess(
        self, model: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device, hp: dict[str, Any]
    ) -> Evaluation:
        """One evaluation for the training loop (``hp``: the role's recipe); see ``Evaluation``."""
        return Evaluation(self.evaluate(model, data, cfg, device))

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device) -> dict[str, float]:
        model.eval()
        totals = {1: 0, 5: 0}
        n = 0
        for x, y in iterate_batches(
            data.val, cfg["eval_batch_size"], num_workers=cfg["num_workers"], on_bad_sample=on_bad_sample(cfg)
        ):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, cfg):
                logits = model(x)
            for k, c in topk_correct(logits.float(), y, (1, 5)).items():
                totals[k] += c
            n += int(y.numel())
        n = max(n, 1)
        return {"top1": 100.0 * totals[1] / n, "top5": 100.0 * totals[5] / n}


def on_bad_sample(cfg: dict[str, Any]) -> str:
    """The data section's policy for unreadable samples; "error" for tasks whose data has no such key
    (in-memory data cannot be unreadable)."""
    return cfg["data"].get("on_bad_sample", "error")


def autocast(device: torch.device, cfg: dict[str, Any]):
    """bf16 autocast on CUDA when ``amp: bf16`` (the default there); a no-op on the CPU."""
    enabled = device.type == "cuda" and cfg["amp"] == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
