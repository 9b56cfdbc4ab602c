"""What a task plugin provides (the plugin API), and the default hooks of classification tasks.

The shared training loop (``runners/train.py``) owns optimisation, schedules, resume, DDP and the result
store. A task owns its data and models and tells the loop three things:

- ``train_batches(data, role_cfg, cfg, req)``: the batches of one epoch (``req``: a ``BatchRequest``), in an
  order that depends only on (seed, epoch), so a resumed or fused run sees exactly the batches an
  uninterrupted, unfused run sees. The loop opens the next epoch's batches (``iter()``) while the last
  ``Batches.lead`` batches of the current one are consumed, so loading that starts at ``iter()`` (DataLoader
  workers) runs across the epoch boundary;
- ``forward(model, batch)``: logits and integer targets over the positions that count, shape (N, K) and
  (N,): one row per image, or one row per non-pad target token for translation;
- ``evaluate(model, data, cfg, device)``: the task's metrics (top-1/top-5, BLEU...);
- ``assess(model, data, cfg, device, hp)``: those metrics plus the score the reported (selected) epoch is
  chosen on and files to keep (translation: validation loss or BLEU, test hypotheses); by default the metrics
  alone, the selected epoch then being the one with the highest primary metric on ``val`` (the paper's image
  convention, where ``val`` is the test set).

The loading engine the hooks use (batch plans, ``load_batches``, read-ahead) is ``tasks/loading.py``; its
public names are re-exported here, where task plugins import them.
"""

from __future__ import annotations

import functools
import inspect
import os
import stat
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from .. import store
from ..errors import UsageError
from ..metrics import METRICS, TOPK, Metric, MetricSpec
from ..models import ClassifierNet  # noqa: F401  (re-exported: task plugins build it)
from ..schema import TRAIN, Field, Flag, Section, _suggest, deep_merge

# the loading engine (tasks/loading.py), re-exported: task plugins build their batches with these
from .loading import (  # noqa: F401
    PREFETCH,
    BadSample,
    Batches,
    GuardedDataset,
    InMemoryDataset,
    LoaderIterator,
    PartialBatch,
    batch_plan,
    close_batches,
    epoch_permutation,
    epoch_seed,
    finished_ahead,
    guarded_collate,
    iterate_batches,
    load_batches,
    sample_path,
    train_plan,
    unwrap_batch,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; a name in annotations only


@dataclass(frozen=True)
class BatchRequest:
    """Which training batches ``Task.train_batches`` gives: those of ``epoch`` in the order drawn from (``seed``,
    ``epoch``) alone, process ``shard`` = (rank, world size)'s share, from batch number ``start`` on (a resumed
    run); ``pin_memory`` when they go to a GPU; unreadable samples skipped under ``on_bad_sample: skip`` are
    appended to ``skipped`` (the training loop's list, shared, so it is not part of the request's equality)."""

    seed: int
    epoch: int
    shard: tuple[int, int] = (0, 1)
    start: int = 0
    pin_memory: bool = False
    skipped: list[str] | None = field(default=None, compare=False)

    def keywords(self) -> dict[str, Any]:
        """The fields as the keyword arguments of the earlier ``train_batches`` signature."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class TaskData:
    """A task's data as the training loop reads it.

    Two fields keep the names of the paper's image tasks although they mean more: ``val`` is the held-out split
    ``evaluate`` reports on, the *test* split of every built-in task (ImageNet's val/ folder is its test set, the
    paper's convention; CUB's and CIFAR's test sets; digits' one held-out split; translation's test set, its
    validation split being ``extras["valid"]``); ``num_classes`` is the models' output size, the vocabulary size
    for translation. Read them by the honest names ``test`` and ``num_outputs`` (aliases of the same values);
    tasks set the fields."""

    train: Dataset
    val: Dataset  # the evaluated split: the test set (also read as ``test``)
    num_classes: int  # the models' output size: classes, or the vocabulary (also read as ``num_outputs``)
    class_names: list[str]  # empty where outputs are not named classes (translation)
    # training split without augmentation (feature extraction for analysis); defaults to ``train``
    train_eval: Dataset | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def test(self) -> Dataset:
        """The split ``evaluate`` reports on (the ``val`` field): the test set."""
        return self.val

    @property
    def num_outputs(self) -> int:
        """The models' output size (the ``num_classes`` field): classes, or the vocabulary for translation."""
        return self.num_classes

    def split(self, name: str) -> Dataset:
        """``train``, ``val`` (= ``test``) or ``train_eval`` (the training split without augmentation)."""
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


# ------------------------------------------------------------------------------------------------ Task
BUILTIN_CONFIGS = "lskd_bench/configs"


@dataclass(frozen=True)
class RecipeFolder:
    """Where a task's recipe and pair files are (``Task.recipe_folder``): ``root`` to read from, ``label`` to show."""

    root: Traversable
    label: str

    def file(self, name: str) -> Traversable | None:
        """The file ``name`` (``x`` means ``x.yaml``; a name ending in .yaml/.yml is taken as given), or None."""
        leaf = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
        path = self.root.joinpath(*leaf.split("/"))
        return path if path.is_file() else None

    def where(self, name: str) -> str:
        leaf = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
        return f"{self.label}/{leaf}"


BUILTIN = RecipeFolder(resources.files("lskd_bench").joinpath("configs"), BUILTIN_CONFIGS)


def recipe_folder(cls: type) -> RecipeFolder:
    """The folder of the module that defines task class ``cls``, as package resources (a plugin ships its YAML
    beside its code, declared as package data); lskd_bench/configs for the built-in tasks."""
    module = cls.__module__
    if module.partition(".")[0] == "lskd_bench":
        return BUILTIN
    mod = sys.modules.get(module)
    if mod is not None and hasattr(mod, "__path__"):  # the class is defined in a package's __init__
        return RecipeFolder(resources.files(module), f"package {module}")
    if mod is not None and mod.__package__:
        return RecipeFolder(resources.files(mod.__package__), f"package {mod.__package__}")
    folder = Path(getattr(mod, "__file__", None) or ".").resolve().parent  # a top-level module: its folder
    return RecipeFolder(folder, str(folder))


# libyaml's safe loader where PyYAML was built with it (the same documents, ~8x faster than the pure-Python one:
# a run's recipes are read at every start)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_recipe(name: str, folder: RecipeFolder = BUILTIN, task: str = "") -> dict[str, Any]:
    """The recipe ``<name>.yaml`` in ``folder`` (lskd_bench/configs by default); ``base: other`` merges it over
    ``other.yaml``, looked up in the same folder, then in lskd_bench/configs (compact recipes extend their
    parents; a plugin's recipe may extend a built-in one). A missing file: one UsageError naming ``task`` and
    where it looked."""
    data = yaml.load(_read(name, folder, task, "recipe"), Loader=SAFE_LOADER) or {}
    base = data.pop("base", None)
    if not base:
        return data
    parent = folder if folder.file(base) is not None or folder is BUILTIN else BUILTIN
    return deep_merge(load_recipe(base, parent, task), data)


def _read(name: str, folder: RecipeFolder, task: str, what: str) -> str:
    path = folder.file(name)
    if path is None:
        who = f"task {task}: " if task else ""
        raise UsageError(f"{who}{what} {name!r} not found (looked for {folder.where(name)})")
    return path.read_text(encoding="utf-8")


# top-level config key of tasks with pairs (``Task.pairs_recipe``): not part of a cell's identity, the values
# it sets (archs, recipe, method parameters) are
PAIR = Field(
    str,
    None,
    "teacher-student pair whose published recipe (archs, lr, method hyper-parameters) is applied over the task's, "
    "e.g. resnet32x4-resnet8x4 (cifar100); 'lskd-bench tasks' lists them",
    nullable=True,
    flags=(Flag("--pair"),),
)

# the option of every task's data.root (one option, whatever the task: its help names each task's layout)
DATA_ROOT_FLAGS = (
    Flag(
        "--data-root",
        help="data directory (ImageFolder for imagenet* and imagefolder, CUB_200_2011/ for cub200*, "
        "cifar-100-python/ for cifar100, the raw IWSLT release or train/valid/test.<lang> for iwslt_*)",
        path=True,
    ),
)


@dataclass
class Evaluation:
    """What one evaluation of a model gives the training loop.

    ``metrics``: the reported metrics (on ``data.val``: the test split). ``selection``: the score the best
    epoch is chosen on (None: ``metrics[primary_metric]``, higher is better). ``outputs``: files written into
    the cell directory, name -> lines; ``{which}`` in a name becomes ``last`` (every evaluation) and
    ``selected`` (the evaluations that improve the selection score). ``loss``: the mean cross-entropy (no label
    smoothing) on the split the metrics are computed on, when the task computes it (loggers: ``val/loss``)."""

    metrics: dict[str, float]
    selection: float | None = None
    outputs: dict[str, list[str]] = field(default_factory=dict)
    loss: float | None = None


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
    extra_metrics: tuple[str, ...] = ()  # registered metrics (lskd_bench.metrics) it reports too, after ``metrics``
    primary_metric: str = "top1"  # picks the selected epoch (in its direction) and the leaderboard's bold cell
    supports_analysis: bool = True  # penultimate features exported for analyze / visualize
    projection_classes: tuple[str, ...] = ()  # visualize's default class triple
    recipe: str = ""  # <recipe>.yaml next to the task's module (built-ins: lskd_bench/configs): its default config
    data_schema: Section = Section({})
    train_schema: Section = TRAIN
    extra_sections: ClassVar[dict[str, Section]] = {}  # more top-level config sections of this task

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def metric(self, name: str) -> MetricSpec:
        return next(m for m in self.metrics if m.name == name)

    @property
    def feeds_metrics(self) -> bool:
        """Does its evaluation feed registered metrics (the classification pass: the default ``evaluate`` and
        ``assess``)? A task with its own evaluation (translation) reports its own ``metrics`` only."""
        cls = type(self)
        return cls.assess is Task.assess and cls.evaluate is Task.evaluate

    def registered_metrics(self, cfg: dict[str, Any]) -> tuple[str, ...]:
        """The registered metrics this task reports besides its own: ``extra_metrics``, then the run's ``metrics``
        (the config key), each once. UsageError for an unknown one, one whose name is not a metric name or is one
        of the task's own, or any at all for a task whose evaluation does not feed them."""
        names = tuple(dict.fromkeys([*self.extra_metrics, *cfg.get("metrics", ())]))
        if names and not self.feeds_metrics:
            raise UsageError(
                f"task {self.name} computes its own metrics ({', '.join(self.metric_names)}): registered metrics "
                f"({', '.join(names)}) need the classification evaluation"
            )
        for name in names:
            spec = METRICS.get(name).spec
            problem = store.metric_name(name) or (f"its spec is named {spec.name!r}" if spec.name != name else None)
            if problem:
                raise UsageError(f"metric {name!r} cannot be reported: {problem}")
            if name in self.metric_names:
                raise UsageError(f"metric {name!r} is already reported by task {self.name}: drop it from 'metrics'")
        return names

    def reported_metrics(self, cfg: dict[str, Any]) -> tuple[MetricSpec, ...]:
        """The specs of every metric a cell trained with ``cfg`` reports, in table order (result.json's
        ``metric_specs``): the task's own, then the registered ones (``registered_metrics``)."""
        return (*self.metrics, *(METRICS.get(n).spec for n in self.registered_metrics(cfg)))

    pairs_recipe: str = ""  # <name>.yaml with the task's teacher-student pairs (--pair), found as ``recipe`` is

    # -- config -----------------------------------------------------------------------------------
    @classmethod
    def recipe_folder(cls) -> RecipeFolder:
        """Where ``recipe`` and ``pairs_recipe`` are found: next to the module that defines the task class (its
        package's resources); lskd_bench/configs for the built-in tasks."""
        return recipe_folder(cls)

    def default_config(self) -> dict[str, Any]:
        """The task's recipe (values that differ from the schema defaults): ``<recipe>.yaml`` in ``recipe_folder``."""
        return load_recipe(self.recipe, self.recipe_folder(), self.name) if self.recipe else {}

    def recipe_source(self) -> str:
        return f"recipe {self.recipe_folder().where(self.recipe)}" if self.recipe else f"task {self.name} defaults"

    def pairs_source(self) -> str:
        """The pairs file as shown to users (e.g. ``lskd_bench/configs/cifar100_pairs.yaml``)."""
        return self.recipe_folder().where(self.pairs_recipe)

    def _pairs_file(self) -> dict[str, Any]:
        return (
            yaml.load(_read(self.pairs_recipe, self.recipe_folder(), self.name, "pairs recipe"), Loader=SAFE_LOADER)
            or {}
        )

    def pairs(self) -> dict[str, dict[str, Any]]:
        """Named teacher-student pairs, each a partial config (its published recipe) with a ``source``."""
        if not self.pairs_recipe:
            return {}
        return dict(self._pairs_file()["pairs"])

    def pair_settings(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """KD-method settings across the pairs: ({method: keys some pair sets}, {method: why it has one setting for
        every pair}); the pairs recipe's ``shared`` block gives the reasons (their authors publish no per-pair
        values)."""
        if not self.pairs_recipe:
            return {}, {}
        data = self._pairs_file()
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
        return f"pair {pair} ({self.pairs_source()})", {**layer, "pair": pair}

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

    def train_samples(self, cfg: dict[str, Any]) -> int | None:
        """How many training samples an epoch reads, if the task knows without reading its data folder (a data set
        in memory); None: unknown. Sizes the grid's training work (``runners/threads.cpu_jobs``)."""
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
        """How the selected epoch is chosen (saved in result.json): split, metric, mode ("max" or "min").
        By default the primary metric, in its declared direction, on ``val``, which is the test set, as the paper
        reports."""
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

    def configured_hierarchy(self, class_names: list[str], cfg: dict[str, Any]) -> dict[str, str]:
        """``class_hierarchy`` of cells trained with ``cfg`` (their resolved config): what the analysis reads. A task
        whose hierarchy is part of its config (``imagefolder``'s ``data.hierarchy``) overrides this."""
        return self.class_hierarchy(class_names)

    # -- the training loop's hooks (classification defaults) ---------------------------------------
    def train_batches(
        self, data: TaskData, role_cfg: dict[str, Any], cfg: dict[str, Any], req: BatchRequest
    ) -> Batches:
        """The training batches of ``req.epoch`` from batch number ``req.start`` on (see ``BatchRequest``)."""
        plan = train_plan(len(data.train), int(role_cfg["batch_size"]), seed=req.seed, epoch=req.epoch, shard=req.shard)
        return load_batches(
            data.train,
            plan[req.start :],
            seed=req.seed,
            epoch=req.epoch,
            num_workers=cfg["num_workers"],
            pin_memory=req.pin_memory,
            on_bad_sample=on_bad_sample(cfg),
            skipped=req.skipped,
        )

    def open_batches(self, data: TaskData, role_cfg: dict[str, Any], cfg: dict[str, Any], req: BatchRequest) -> Batches:
        """``train_batches`` as the training loop calls it. A task written against the keyword signature of
        earlier versions (``train_batches(data, role_cfg, cfg, *, seed, epoch, shard, start, pin_memory,
        skipped)``) is called with the request's fields as keywords."""
        if _keyword_hook(type(self).train_batches):
            return self.train_batches(data, role_cfg, cfg, **req.keywords())  # type: ignore[call-arg]
        return self.train_batches(data, role_cfg, cfg, req)

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
        """One evaluation for the training loop (``hp``: the role's recipe); see ``Evaluation``. With the default
        ``evaluate``, the loss of the same pass too."""
        if getattr(self.evaluate, "__func__", None) is not Task.evaluate:  # a task's own metrics: no loss from them
            return Evaluation(self.evaluate(model, data, cfg, device))
        metrics, loss = self._classify(model, data, cfg, device)
        return Evaluation(metrics, loss=loss)

    def evaluate(self, model: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device) -> dict[str, float]:
        return self._classify(model, data, cfg, device)[0]

    @torch.inference_mode()
    def _classify(
        self, model: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device
    ) -> tuple[dict[str, float], float]:
        """(top-1/top-5 in percent and the registered metrics the task reports, mean cross-entropy) of
        ``data.test``; the loss summed on the device."""
        model.eval()
        names = (*(m.name for m in TOPK), *(self.registered_metrics(cfg) if self.feeds_metrics else ()))
        metrics: dict[str, Metric] = {name: METRICS.get(name)() for name in names}
        n = 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        batch = eval_batch_size(model, data.test, cfg, device)
        for x, y in iterate_batches(data.test, batch, num_workers=cfg["num_workers"], on_bad_sample=on_bad_sample(cfg)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, cfg):
                logits = model(x).float()
            for m in metrics.values():
                m.update(logits, y)
            loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
            n += int(y.numel())
        return {name: float(m.compute()) for name, m in metrics.items()}, float(loss_sum) / max(n, 1)


@functools.cache
def _keyword_hook(fn: Any) -> bool:
    """Is ``fn`` a ``train_batches`` of the keyword signature (a ``seed`` parameter) rather than one request?"""
    return "seed" in inspect.signature(fn).parameters


EVAL_BATCH_CUDA = 256  # the evaluation batch on CUDA (eval_batch_size null)
EVAL_BATCH_CPU = (16, 256)  # the bounds of the CPU's
EVAL_BYTES_CPU = 8 * 2**20  # the CPU's batch: the largest whose largest activation stays within this


def eval_batch_size(model: nn.Module, ds: Dataset, cfg: dict[str, Any], device: torch.device) -> int:
    """The batch ``model`` is evaluated at on ``ds``: ``eval_batch_size`` when set; else ``EVAL_BATCH_CUDA`` off the
    CPU; on the CPU the largest power of two within ``EVAL_BATCH_CPU`` whose largest activation (a module's output,
    measured on one sample of ``ds``) stays within ``EVAL_BYTES_CPU``. A batch of a CPU-evaluated model that
    outgrows the cache runs slower per sample: CIFAR's resnet32x4 at 256 took 1.36-1.65x the time of 32 (issue
    36), while a model of a few kilobytes an activation (digits) gains from large batches. The metrics do not
    depend on the batch (every sample is scored alone); its logits only differ in float rounding."""
    if cfg["eval_batch_size"]:
        return int(cfg["eval_batch_size"])
    if device.type != "cpu":
        return EVAL_BATCH_CUDA
    lo, batch = EVAL_BATCH_CPU
    per_sample = largest_activation(model, ds, cfg, device)
    while batch > lo and batch * per_sample > EVAL_BYTES_CPU:
        batch //= 2
    return batch


def largest_activation(model: nn.Module, ds: Dataset, cfg: dict[str, Any], device: torch.device) -> int:
    """Bytes of the largest tensor a module of ``model`` outputs for the first sample of ``ds`` (0 for an empty
    split, or a first sample skipped as unreadable); one forward in eval mode, without gradients, the random state
    untouched."""
    first = next(
        iter(iterate_batches(ds, 1, indices=torch.arange(min(1, len(ds))), on_bad_sample=on_bad_sample(cfg))), None
    )
    if first is None or len(first[0]) == 0:
        return 0
    largest = 0

    def measure(_m: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal largest
        if isinstance(out, torch.Tensor):
            largest = max(largest, out.numel() * out.element_size())

    x = first[0]
    was_training = model.training
    hooks = [m.register_forward_hook(measure) for m in model.modules()]
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            model.eval()(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return largest


def on_bad_sample(cfg: dict[str, Any]) -> str:
    """The data section's policy for unreadable samples; "error" for tasks whose data has no such key
    (in-memory data cannot be unreadable)."""
    return cfg["data"].get("on_bad_sample", "error")


def autocast(device: torch.device, cfg: dict[str, Any]):
    """bf16 autocast on CUDA when ``amp: bf16`` (the default there); a no-op on the CPU."""
    enabled = device.type == "cuda" and cfg["amp"] == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
