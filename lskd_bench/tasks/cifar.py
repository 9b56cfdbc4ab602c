"""CIFAR-100 (Krizhevsky 2009) with the KD literature's teacher/student pairs and recipes.

Data: the standard ``cifar-100-python/`` folder (the ``train``, ``test`` and ``meta`` pickles of the official
release), read whole into memory as uint8. Training augmentation is the standard one (random 32 x 32 crop of
the image zero-padded by 4, horizontal flip with p = 0.5, normalisation with the CIFAR-100 mean/std of
mdistiller's dataset/cifar100.py:120-123) done on batched tensors: the batch is gathered padded as uint8 and
cropped, flipped and normalised by ``to_device`` on the training device (the GPU on CUDA). Each sample's crop
offset and flip are a hash of (seed, epoch, sample index), so a resumed, fused or sharded run sees exactly the
augmentation of an uninterrupted, unfused one.

Models: ``lskd_bench.cifar_models`` (state-dict names of the shared ``cifar_teachers`` checkpoints).
Recipes: ``configs/cifar100.yaml`` (common) and ``configs/cifar100_pairs.yaml`` (per pair, ``--pair``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..cifar_models import CIFAR_ARCHS, build_cifar_model
from ..errors import UsageError
from ..models import build_image_model, check_library_arch, is_library_arch
from ..schema import Field, Section
from . import TASKS
from .base import DATA_ROOT_FLAGS, PAIR, DataReport, Task, TaskData
from .cache import KeyedCache, files_key
from .loading import Batches, InMemoryDataset, train_plan

MEAN = (0.5071, 0.4867, 0.4408)  # mdistiller dataset/cifar100.py:123
STD = (0.2675, 0.2565, 0.2761)
PAD, SIZE = 4, 32
FILES = ("train", "test", "meta")
LAYOUT = "expected DIR/cifar-100-python/{train,test,meta} (or that folder itself): the official python release"

CIFAR_DATA = Section(
    {
        "root": Field(
            str, None, "data directory holding cifar-100-python/ (--data-root)", nullable=True, flags=DATA_ROOT_FLAGS
        ),
        "augment": Field(bool, True, "random crop 32 (padding 4) + horizontal flip while training"),
    }
)


def cifar_dir(root: Path) -> Path:
    """Accept the cifar-100-python folder itself or its parent."""
    return root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root


def _numpy_global(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


# (module, name) -> what it resolves to: the only globals a release pickle names (numpy arrays, and bytes as
# Python 3 writes them at protocol 2); anything else (os.system, eval, ...) is refused unresolved
_RELEASE_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("_codecs", "encode"): lambda: __import__("_codecs").encode,
    ("__builtin__", "bytes"): lambda: bytes,  # b"" at protocol 2 (an empty array's data)
    ("builtins", "bytes"): lambda: bytes,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    **{
        (f"numpy.{core}.multiarray", "_reconstruct"): lambda: _numpy_global("numpy._core.multiarray", "_reconstruct")
        for core in ("core", "_core")
    },
    **{
        (f"numpy.{core}.numeric", "_frombuffer"): lambda: _numpy_global("numpy._core.numeric", "_frombuffer")
        for core in ("core", "_core")
    },
}


class _ReleaseUnpickler(pickle.Unpickler):
    """Reads what the official CIFAR-100 pickles hold (dicts, lists, str, bytes, ints, numpy arrays) and nothing
    else: a pickle names the functions it calls, and one that names any other (a planted ``os.system``) is refused
    before it is looked up, so a data file never runs code (SECURITY.md)."""

    def find_class(self, module: str, name: str) -> Any:
        get = _RELEASE_GLOBALS.get((module, name))
        if get is None:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is forbidden (a CIFAR pickle holds only lists, "
                "bytes, numbers and numpy arrays)"
            )
        return get()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are forbidden")


def _checked_arrays(obj: Any, depth: int = 0) -> None:
    """No object arrays (their items would be opaque): every array is of numbers or bytes."""
    if depth > 4:
        return
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise pickle.UnpicklingError("an array of Python objects (the release holds uint8 arrays)")
    for v in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
        _checked_arrays(v, depth + 1)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = _ReleaseUnpickler(f, encoding="bytes").load()
        _checked_arrays(raw)
    except OSError as exc:
        raise UsageError(f"cifar100: cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise UsageError(
            f"cifar100: {path} is not a CIFAR python pickle ({type(exc).__name__}: {exc}); {LAYOUT}"
        ) from None
    if not isinstance(raw, dict):
        raise UsageError(f"cifar100: {path} holds a {type(raw).__name__}, not the release's dict; {LAYOUT}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in raw.items()}


def read_split(d: Path, name: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, 32, 32), fine labels int64 (N,)) of ``train`` or ``test``."""
    path = d / name
    raw = _unpickle(path)
    for key in ("data", "fine_labels"):
        if key not in raw:
            raise UsageError(f"cifar100: {path} lacks '{key}' (has: {', '.join(sorted(map(str, raw)))}); {LAYOUT}")
    data = np.asarray(raw["data"])
    labels = np.asarray(raw["fine_labels"])
    if data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE or data.dtype != np.uint8:
        raise UsageError(
            f"cifar100: {path}: 'data' must be uint8 rows of 3072 values, got {data.dtype} {tuple(data.shape)}"
        )
    if labels.shape != (len(data),):
        raise UsageError(f"cifar100: {path}: {len(labels)} fine_labels for {len(data)} images")
    if labels.size == 0:
        labels = labels.astype(np.int64)  # [] reads as float64
    if labels.dtype == object or labels.dtype.kind not in "iu":  # 3.5 would be cut to 3, True taken for 1
        bad = next((v for v in labels.tolist() if not isinstance(v, int) or isinstance(v, bool)), labels.dtype)
        raise UsageError(f"cifar100: {path}: fine_labels must be integers, got {bad!r}")
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(outside):
        i = int(outside[0])
        raise UsageError(
            f"cifar100: {path}: {len(outside)} fine_labels outside 0..{num_classes - 1} "
            f"(e.g. image {i}: {int(labels[i])})"
        )
    x = torch.from_numpy(data.reshape(-1, 3, SIZE, SIZE).copy())
    return x, torch.from_numpy(labels.astype(np.int64))


def read_meta(d: Path) -> list[str]:
    raw = _unpickle(d / "meta")
    names = raw.get("fine_label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise UsageError(f"cifar100: {d / 'meta'} lacks 'fine_label_names'; {LAYOUT}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


Release = tuple[list[str], tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def read_release(d: Path) -> Release:
    """(class names, (train images, labels), (test images, labels)) of the release folder ``d``."""
    names = read_meta(d)
    return names, read_split(d, "train", len(names)), read_split(d, "test", len(names))


# --------------------------------------------------------------------------------------- augmentation
_M = 2_147_483_647  # 2^31 - 1: every product below stays under 2^62 (no int64 overflow)


def augment_params(indices: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """Per-sample (dy, dx, flip) of shape (N, 3), a hash of (seed, epoch, index) only: the same sample gets the
    same crop and flip in any batch, shard, fused group or resumed run."""
    key = ((seed * 1_000_003 + epoch) * 10_000_019) % _M
    h = (indices.to(torch.int64) + key) % _M
    for mul in (48271, 69621, 16807):  # three multiply-xorshift rounds
        h = (h * mul + 12345) % _M
        h = h ^ (h >> 13)
    span = 2 * PAD + 1
    return torch.stack([h % span, (h // span) % span, (h // (span * span)) % 2], 1)


def crop_flip(xp: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Crop 32 x 32 windows at (dy, dx) from padded images (N, C, H, W), reversing columns where flip = 1: one
    ``gather`` over the flattened pixels (several times faster than 4-D advanced indexing)."""
    n, c, h, w = xp.shape
    ar = torch.arange(SIZE, device=xp.device)
    dy, dx, flip = (params[:, i].to(xp.device) for i in range(3))
    rows = dy[:, None] + ar
    cols = dx[:, None] + torch.where(flip[:, None].bool(), SIZE - 1 - ar, ar)
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, SIZE * SIZE).expand(n, c, SIZE * SIZE)
    return xp.reshape(n, c, h * w).gather(2, flat).reshape(n, c, SIZE, SIZE)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, ToTensor + Normalize(MEAN, STD) as one multiply-add."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in STD], device=x.device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(MEAN, STD)], device=x.device).view(1, 3, 1, 1)
    return torch.addcmul(shift, x.float(), scale)


class _Normalised:
    """A uint8 image tensor seen as normalised floats, converted per indexed batch (keeps memory at uint8)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx):
        if isinstance(idx, int):
            return normalise(self.x[idx : idx + 1])[0]
        return normalise(self.x[idx])


class CifarSplit(InMemoryDataset):
    """A split as uint8 images (``raw``) and labels; ``x`` yields normalised floats (evaluation, features)."""

    def __init__(self, raw: torch.Tensor, y: torch.Tensor):
        super().__init__(_Normalised(raw), y)
        self.raw = raw
        self.targets = y


class AugmentedBatch(tuple):
    """(padded uint8 images, per-sample (dy, dx, flip), labels): cropped and normalised by ``to_device``."""


# ------------------------------------------------------------------------------------------------ task
@TASKS.register("cifar100")
class CIFAR100Task(Task):
    name = "cifar100"
    description = (
        "CIFAR-100 (cifar-100-python/), the KD literature's pairs (default resnet32x4 -> resnet8x4; "
        "--pair), mdistiller recipes"
    )
    data_schema = CIFAR_DATA
    recipe = "cifar100"
    pairs_recipe = "cifar100_pairs"
    extra_sections: ClassVar[dict[str, Section]] = {"pair": PAIR}
    projection_classes = ("apple", "pear", "bus")  # two similar fruits, one distant vehicle
    # the last release read, shared by every instance of the task (the layout check and training make their own)
    release_cache: ClassVar[KeyedCache[Release]] = KeyedCache()

    def validate(self, cfg: dict[str, Any]) -> None:
        for role in ("teacher", "student"):
            arch = cfg[role]["arch"]
            if is_library_arch(arch):
                check_library_arch(arch)
            elif arch not in CIFAR_ARCHS:
                raise UsageError(
                    f"{role} arch {arch!r} is not offered by task cifar100 (known: {', '.join(CIFAR_ARCHS)})"
                )
        self._check_files(cfg)

    def root(self, cfg: dict[str, Any]) -> Path:
        root = cfg["data"]["root"]
        if not root:
            raise UsageError(f"task cifar100 needs --data-root DIR ({LAYOUT})")
        return cifar_dir(Path(root))

    def _check_files(self, cfg: dict[str, Any]) -> Path:
        """The folder and its three files exist (cheap: every config resolution checks it)."""
        d = self.root(cfg)
        if not d.is_dir():
            raise UsageError(f"cifar100: {d} does not exist; {LAYOUT}")
        missing = [f for f in FILES if not (d / f).is_file()]
        if missing:
            raise UsageError(f"cifar100: {d} lacks {', '.join(missing)}; {LAYOUT}")
        return d

    def check_layout(self, cfg: dict[str, Any]) -> None:
        """Read the three pickles as training will (the loader's own checks: meta's class names, train/test's
        keys, shapes, dtype and labels), so a truncated or garbage file stops ``run`` and ``run --dry-run``
        before anything is written (a few seconds: the release is ~180 MB), and the checks ``check-data`` makes."""
        d = self._check_files(cfg)
        names, (_, ytr), (_, yte) = self._read(d)
        problems = self._problems(names, {"train": ytr, "test": yte})
        if problems:
            more = (
                f" ({len(problems) - 1} more problem(s): 'lskd-bench check-data' lists them)"
                if len(problems) > 1
                else ""
            )
            raise UsageError(f"cifar100: {d}: {problems[0]}{more}")

    @classmethod
    def _read(cls, d: Path) -> Release:
        """The three pickles, read once per process while the files are unchanged (``run`` checks the layout, then
        trains from the same read): kept in ``release_cache`` under the files' paths, sizes and mtimes."""
        return cls.release_cache.get(files_key(d / f for f in FILES), lambda: read_release(d))

    @staticmethod
    def _problems(names: list[str], splits: dict[str, torch.Tensor]) -> list[str]:
        """What ``check-data`` reports and ``run`` refuses alike: a split whose classes lack images."""
        problems = []
        for split, y in splits.items():
            missing = sorted(set(range(len(names))) - set(y.unique().tolist()))
            if missing:
                problems.append(
                    f"{split}: {len(missing)} class(es) without images (e.g. {names[missing[0]]})"
                    + (" (it holds no images)" if len(y) == 0 else "")
                )
        return problems

    def check_data(self, cfg: dict[str, Any], progress: bool = True) -> DataReport:
        data = self.load_data(cfg)
        report = DataReport(counts={"train": len(data.train), "test": len(data.test)})
        report.problems += self._problems(data.class_names, {"train": data.train.y, "test": data.test.y})
        return report

    def load_data(self, cfg: dict[str, Any], cache_dir: Path | None = None) -> TaskData:
        names, (xtr, ytr), (xte, yte) = self._read(self._check_files(cfg))
        train = CifarSplit(xtr, ytr)
        return TaskData(
            train=train,
            val=CifarSplit(xte, yte),
            num_classes=len(names),
            class_names=names,
            train_eval=train,
            extras={"padded": None},
        )

    def probe_shape(self, cfg: dict[str, Any]) -> tuple[int, ...]:
        return (3, 32, 32)

    def build_model(self, arch: str, data: TaskData, cfg: dict[str, Any], hp: dict[str, Any]):
        return (
            build_image_model(arch, data.num_classes)
            if is_library_arch(arch)
            else build_cifar_model(arch, data.num_classes)
        )

    # -- augmentation on batched tensors --------------------------------------------------------------
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
        ds: CifarSplit = data.train  # type: ignore[assignment]
        plan = train_plan(len(ds), int(role_cfg["batch_size"]), seed=seed, epoch=epoch, shard=shard)[start:]
        if not cfg["data"]["augment"]:
            return Batches(len(plan), lambda: ((normalise(ds.raw[idx]), ds.y[idx]) for idx in plan), plan=plan)
        if data.extras.get("padded") is None:  # zero padding as RandomCrop(32, padding=4), once per process
            data.extras["padded"] = torch.nn.functional.pad(ds.raw, (PAD, PAD, PAD, PAD))
        xp = data.extras["padded"]

        def it():
            for idx in plan:
                parts = (xp[idx], augment_params(idx, seed, epoch), ds.y[idx])
                yield AugmentedBatch(t.pin_memory() for t in parts) if pin_memory else AugmentedBatch(parts)

        return Batches(len(plan), it, plan=plan)

    def to_device(self, batch: Any, device: torch.device, cfg: dict[str, Any]) -> Any:
        if isinstance(batch, AugmentedBatch):
            xp, params, y = (t.to(device, non_blocking=True) for t in batch)
            batch = (normalise(crop_flip(xp, params)), y)
        return super().to_device(batch, device, cfg)
