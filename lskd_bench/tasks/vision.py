"""Image classification tasks on standard on-disk layouts: ImageNet-1K (ImageFolder) and CUB200-2011.

Recipes (epochs, optimizer, schedule) ship as YAML in ``lskd_bench/configs/<task>.yaml``.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import UsageError
from ..hierarchy import groups_to_parents, load_wordnet_parents
from ..models import ClassifierNet, build_image_model, check_library_arch, init_path, is_library_arch
from ..schema import Field, Section, grid_values
from . import TASKS
from .base import (
    DATA_ROOT_FLAGS,
    PAIR,
    DataReport,
    Task,
    TaskData,
    load_recipe,  # noqa: F401  (load_recipe: re-exported)
    refuse_special,
)
from .cache import KeyedCache, files_key
from .device_images import MEAN, STD, EncodedImages, decode_device, decode_mode

# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS)
IMG_EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

IMAGE_DATA = Section(
    {
        "root": Field(str, None, "data directory (--data-root)", nullable=True, flags=DATA_ROOT_FLAGS),
        "image_size": Field(int, 224, "training crop / evaluation size in pixels", min=8, max=8192),
        "eval_resize": Field(
            int,
            None,
            "evaluation: resize the shorter side to this, then centre-crop image_size "
            "(default: image_size / 0.875, i.e. 256 for 224)",
            min=8,
            max=16384,
            nullable=True,
        ),
        "crop_scale": Field(
            [float],
            [0.08, 1.0],
            "RandomResizedCrop area range",
            min=0.0,
            max=1.0,
            check=lambda v: None if len(v) == 2 and v[0] <= v[1] else "must be [low, high]",
        ),
        "crop_ratio": Field(
            [float],
            [3 / 4, 4 / 3],
            "RandomResizedCrop aspect-ratio range",
            min=0.0,
            min_exclusive=True,
            check=lambda v: None if len(v) == 2 and v[0] <= v[1] else "must be [low, high]",
        ),
        "rotation": Field(float, 0.0, "RandomRotation in degrees (0: off)", min=0.0, max=180.0),
        "grayscale": Field(float, 0.0, "RandomGrayscale probability", min=0.0, max=1.0),
        "color_jitter": Field(
            [float],
            [0.0, 0.0],
            "ColorJitter brightness and contrast (0: off)",
            min=0.0,
            check=lambda v: None if len(v) == 2 else "must be [brightness, contrast]",
        ),
        "decode": Field(
            str,
            "auto",
            "where images are decoded and augmented: cpu (PIL in the loader workers), gpu (workers "
            "read bytes; torchvision.io.decode_jpeg and tensor augmentation on the training device, nvJPEG on "
            "CUDA, the same crop boxes), auto (gpu when training on CUDA)",
            choices=("auto", "cpu", "gpu"),
            identity=False,
        ),
        "on_bad_sample": Field(
            str,
            "error",
            "a sample that cannot be decoded: error (stop, naming the file) or skip it (listed in result.json)",
            choices=("error", "skip"),
            identity=False,
        ),
    }
)


def decode_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image (fully decoded, as training will), or None."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def scan_files(files: list[tuple[str, Path]], report: DataReport, progress: bool, workers: int = 0) -> None:
    """Decode every file (threads), adding one problem line per unreadable file and per set of duplicates."""

    def one(item):
        split, path = item
        try:
            digest = hashlib.md5(path.read_bytes()).hexdigest()
        except OSError as exc:
            return split, path, f"cannot read: {exc.strerror or exc}", None
        return split, path, decode_problem(path), digest

    seen: dict[str, list[str]] = {}
    n = workers or min(8, (os.cpu_count() or 1) * 2)
    with (
        ThreadPoolExecutor(n) as pool,
        tqdm(total=len(files), desc="decoding", unit="img", disable=not progress) as bar,
    ):
        for _split, path, problem, digest in pool.map(one, files, chunksize=64):
            if problem:
                report.problems.append(f"{path}: {problem}")
            if digest:
                seen.setdefault(digest, []).append(str(path))
            bar.update(1)
    for paths in seen.values():
        if len(paths) > 1:
            report.problems.append(
                f"duplicate files (same content): {', '.join(sorted(paths)[:4])}"
                + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
            )


def image_splits(cfg: dict[str, Any], train, val, train_eval) -> tuple[Dataset, Dataset, Dataset]:
    """The (train, val, train_eval) datasets of the configured pipeline: the PIL-transform datasets as
    given (``data.decode: cpu``), or the same samples as ``EncodedImages`` decoded on the device (gpu)."""
    if decode_mode(cfg) != "gpu":
        return train, val, train_eval
    d, dev, load = cfg["data"], decode_device(cfg), train.loader
    return (
        EncodedImages(train.samples, train.classes, d, True, dev, load),
        EncodedImages(val.samples, val.classes, d, False, dev, load),
        EncodedImages(train.samples, train.classes, d, False, dev, load),
    )


def transforms(d: dict[str, Any], train: bool):
    """torchvision transforms from the data section: RandomResizedCrop (+ rotation, grayscale, colour jitter
    as configured) + flip for training, Resize + CenterCrop for evaluation."""
    from torchvision import transforms as T  # heavy: torchvision loads only when an image task builds its data

    size = int(d["image_size"])
    if not train:
        resize = d["eval_resize"] or round(size / 0.875)
        return T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)])
    steps = [
        T.RandomResizedCrop(size, scale=tuple(d["crop_scale"]), ratio=tuple(d["crop_ratio"])),
        T.RandomHorizontalFlip(),
    ]
    if d["rotation"]:
        steps.append(T.RandomRotation(d["rotation"], interpolation=T.InterpolationMode.BILINEAR))
    if d["grayscale"]:
        steps.append(T.RandomGrayscale(d["grayscale"]))
    b, c = d["color_jitter"]
    if b or c:
        steps.append(T.ColorJitter(brightness=b, contrast=c))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])


class ImageClassificationTask(Task):
    recipe: str = ""
    archs: tuple[str, ...] = ()
    layout: str = ""
    data_schema = IMAGE_DATA

    def validate(self, cfg: dict[str, Any]) -> None:
        for role in ("teacher", "student"):
            arch = cfg[role]["arch"]
            if is_library_arch(arch):
                check_library_arch(arch)
            elif arch not in self.archs:
                raise UsageError(
                    f"{role} arch {arch!r} is not offered by task {self.name} (known: {', '.join(self.archs)})"
                )
            ckpt = cfg[role]["init_checkpoint"]
            if ckpt:
                for alpha in grid_values(cfg)[0]:
                    init_path(ckpt, alpha)
        self.check_layout(cfg)

    def root(self, cfg: dict[str, Any]) -> Path:
        root = cfg["data"]["root"]
        if not root:
            raise UsageError(f"task {self.name} needs --data-root DIR ({self.layout})")
        return Path(root)

    def check_layout(self, cfg: dict[str, Any]) -> None:
        raise NotImplementedError

    def files(self, cfg: dict[str, Any]) -> list[tuple[str, Path]]:
        """(split, path) of every image the task reads."""
        raise NotImplementedError

    def check_data(self, cfg: dict[str, Any], progress: bool = True) -> DataReport:
        self.check_layout(cfg)
        files = self.files(cfg)
        report = DataReport()
        for split, _ in files:
            report.counts[split] = report.counts.get(split, 0) + 1
        scan_files(files, report, progress, cfg["num_workers"])
        return report

    def build_model(self, arch: str, data: TaskData, cfg: dict[str, Any], hp: dict[str, Any]) -> ClassifierNet:
        return build_image_model(arch, data.num_classes)

    def probe_shape(self, cfg: dict[str, Any]) -> tuple[int, ...]:
        return (3, int(cfg["data"]["image_size"]), int(cfg["data"]["image_size"]))


# ---------------------------------------------------------------------------------------------- ImageNet
def _class_dirs(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if p.is_dir())


def _images(d: Path) -> list[Path]:
    """Image files under class folder ``d``: the one listing both ``check-data`` and training read.

    ImageFolder's walk and order (``sorted(os.walk(d, followlinks=True))``, names sorted; any entry with an
    image extension, so a dangling link is listed and then fails to decode, in both), except that a directory
    reached twice (a symlink loop) is walked once."""
    found = sorted(_walk(d))
    return [Path(root, n) for root, names in found for n in sorted(names) if n.lower().endswith(IMG_EXT)]


def _walk(d: Path):
    """``os.walk(d, followlinks=True)`` that enters each real directory once: (root, file names). Only regular
    files and dangling links are named: a FIFO, socket or device (``fifo.JPEG``) is skipped unopened, since
    opening a FIFO waits forever for a writer. Entry types come from the directory listing (no stat per file)."""
    seen: set[str] = set()
    todo = [str(d)]
    while todo:
        root = todo.pop()
        real = os.path.realpath(root)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        names = []
        for e in entries:
            try:
                if e.is_dir():  # follows links, as os.walk(followlinks=True)
                    todo.append(e.path)
                elif e.is_file() or (e.is_symlink() and not os.path.exists(e.path)):
                    names.append(e.name)
            except OSError:
                names.append(e.name)  # listed: it fails to decode, naming it (as a dangling link)
        yield root, names


def _has_images(d: Path) -> bool:
    """Does ``_images(d)`` list anything? (stops at the first image: cheap on a full ImageNet)"""
    return any(n.lower().endswith(IMG_EXT) for _, names in _walk(d) for n in names)


def _image_folder(split_dir: Path, transform, classes: list[str] | None = None):
    """torchvision's ImageFolder over the shared listing (``_images``); ``classes``: the class folders it reads, in
    class-index order (default: every folder, sorted, as torchvision)."""
    from torchvision.datasets import ImageFolder  # heavy: torchvision loads only when ImageNet data loads

    class ListedImageFolder(ImageFolder):
        def find_classes(self, directory):
            if classes is None:
                return super().find_classes(directory)
            return list(classes), {c: i for i, c in enumerate(classes)}

        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return [(str(p), class_to_idx[c]) for c in sorted(class_to_idx) for p in _images(Path(directory) / c)]

    return ListedImageFolder(split_dir, transform)


class ImageFolderBase(ImageClassificationTask):
    """A task whose data is an ImageFolder, ``DIR/train/<class>/`` and ``DIR/val/<class>/`` with the same class
    folders (class index = sorted folder name, as torchvision): ImageNet and any folder of images (``imagefolder``).
    ``selected_classes`` may restrict the task to some of the folders."""

    def selected_classes(self, cfg: dict[str, Any]) -> list[str] | None:
        """The class folders the task reads, sorted; None: every folder of train/ (which val/ must match)."""
        return None

    def check_layout(self, cfg: dict[str, Any]) -> None:
        root = self.root(cfg)
        for split in ("train", "val"):
            d = root / split
            if not d.is_dir() or not _class_dirs(d):
                raise UsageError(f"{self.name}: {d} is missing or has no class folders; {self.layout}")
        tr, va = _class_dirs(root / "train"), _class_dirs(root / "val")
        wanted = self.selected_classes(cfg)
        if wanted is not None:
            for split, have in (("train", tr), ("val", va)):
                absent = [c for c in wanted if c not in have]
                if absent:
                    raise UsageError(
                        f"{self.name}: data.classes names {len(absent)} class(es) without a folder in {split}/ "
                        f"(e.g. {', '.join(absent[:3])}); {self.layout}"
                    )
            tr = va = wanted
        if tr != va:
            only_tr, only_va = sorted(set(tr) - set(va)), sorted(set(va) - set(tr))
            what = (
                f"{len(only_tr)} class(es) missing from val/ (e.g. {', '.join(only_tr[:3])})"
                if only_tr
                else f"{len(only_va)} class(es) in val/ but not in train/ (e.g. {', '.join(only_va[:3])})"
            )
            raise UsageError(f"{self.name}: train/ and val/ class folders differ: {what}; {self.layout}")
        for split in ("train", "val"):
            for c in tr:
                d = root / split / c
                if not _has_images(d):
                    raise UsageError(
                        f"{self.name}: class folder {d} has no image files ({', '.join(IMG_EXT)}); {self.layout}"
                    )

    def class_folders(self, cfg: dict[str, Any], split: str) -> list[str]:
        """The class folders of ``split`` the task reads (after ``check_layout``: the class names)."""
        wanted = self.selected_classes(cfg)
        return wanted if wanted is not None else _class_dirs(self.root(cfg) / split)

    def files(self, cfg: dict[str, Any]) -> list[tuple[str, Path]]:
        root = self.root(cfg)
        return [
            (split, p)
            for split in ("train", "val")
            for c in self.class_folders(cfg, split)
            for p in _images(root / split / c)
        ]

    def load_data(self, cfg: dict[str, Any], cache_dir=None) -> TaskData:
        root, d, classes = self.root(cfg), cfg["data"], self.selected_classes(cfg)
        train = _image_folder(root / "train", transforms(d, True), classes)  # class index = sorted folder names
        val = _image_folder(root / "val", transforms(d, False), classes)
        train_eval = (
            _image_folder(root / "train", transforms(d, False), classes) if decode_mode(cfg) == "cpu" else train
        )
        train, val, train_eval = image_splits(cfg, train, val, train_eval)
        return TaskData(
            train=train, val=val, num_classes=len(train.classes), class_names=list(train.classes), train_eval=train_eval
        )


class ImageNetBase(ImageFolderBase):
    # the official visualisation's triple (alpha-LS-KD_imagenet_centroids.py:119-121)
    projection_classes = ("n02113712", "n02113799", "n04347754")  # miniature poodle, standard poodle, submarine
    layout = "expected DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG (val sorted into class folders)"

    def class_hierarchy(self, class_names: list[str]) -> dict[str, str]:
        return load_wordnet_parents()


@TASKS.register("imagenet")
class ImageNetTask(ImageNetBase):
    name = "imagenet"
    description = (
        "ImageNet-1K (ImageFolder train/ val/), resnet50 -> resnet18 (or -> resnet50); --pair for the KD "
        "benchmark's resnet34 -> resnet18 and resnet50 -> mobilenet_v1 (mdistiller recipe)"
    )
    recipe = "imagenet"
    archs = ("resnet50", "resnet18", "resnet34", "mobilenet_v1")
    pairs_recipe = "imagenet_pairs"
    extra_sections: ClassVar[dict[str, Section]] = {"pair": PAIR}


@TASKS.register("imagenet_compact")
class ImageNetCompactTask(ImageNetBase):
    name = "imagenet_compact"
    description = "ImageNet-1K, resnet50 -> compact students efficientnet_b0 / mobilenetv2_100 (timm)"
    recipe = "imagenet_compact"
    archs = ("resnet50", "efficientnet_b0", "mobilenetv2_100")


# ---------------------------------------------------------------------------------------------- CUB
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def cub_dir(root: Path) -> Path:
    """Accept the CUB_200_2011 folder itself or its parent."""
    return root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root


def _read_table(path: Path, n: int) -> dict[int, list[str]]:
    rows = {}
    refuse_special(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Windows editors) is not a field
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=n - 1)
        if len(parts) != n or not parts[0].isdigit():
            raise UsageError(f"{path}:{i}: expected {n} fields, got {line!r}")
        rows[int(parts[0])] = parts[1:]
    return rows


@dataclass(frozen=True)
class CubIndex:
    """The index tables of a CUB_200_2011 folder (``CUB_FILES``), each {id: [fields after the id]}."""

    images: dict[int, list[str]]  # image id -> [path under images/]
    labels: dict[int, list[str]]  # image id -> [class id, 1-based]
    split: dict[int, list[str]]  # image id -> ["1"] (train) or ["0"] (test)
    classes: dict[int, list[str]]  # class id -> [class name]


def read_cub_index(d: Path) -> CubIndex:
    """The four index tables of the CUB_200_2011 folder ``d``, read in ``CUB_FILES`` order."""
    return CubIndex(*(_read_table(d / f, 2) for f in CUB_FILES))


class CUBDataset(Dataset):
    """The official CUB_200_2011 folder read through its index files (labels are 1-based there); ``index``: the
    folder's tables already read (``CUBBase.cub_index``), else they are read here."""

    def __init__(self, root: Path, train: bool, transform=None, index: CubIndex | None = None):
        d = cub_dir(Path(root))
        index = index or read_cub_index(d)
        images, labels, split, classes = index.images, index.labels, index.split, index.classes
        self.classes = [classes[k][0] for k in sorted(classes)]
        ids = sorted(i for i in images if (split[i][0] == "1") == train)
        self.samples = [(d / "images" / images[i][0], int(labels[i][0]) - 1) for i in ids]
        self.targets = [y for _, y in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, y = self.samples[i]
        img = self.loader(path)
        return (self.transform(img) if self.transform else img), y

    @staticmethod
    def loader(path):
        with Image.open(path) as im:
            return im.convert("RGB")


def cub_genus(class_name: str) -> str:
    """'001.Black_footed_Albatross' -> 'Albatross' (the last word of a CUB class name names its kind)."""
    return class_name.split(".", 1)[-1].split("_")[-1].lower()


class CUBBase(ImageClassificationTask):
    layout = (
        "expected the official CUB_200_2011/ folder: images.txt, image_class_labels.txt, train_test_split.txt, "
        "classes.txt, images/"
    )
    # the last index read, shared by every instance: the layout check, check-data's listing and the three datasets
    # of load_data use one read while the four files are unchanged
    index_cache: ClassVar[KeyedCache[CubIndex]] = KeyedCache()

    @classmethod
    def cub_index(cls, d: Path) -> CubIndex:
        """``read_cub_index(d)``, kept in ``index_cache`` under the index files' paths, sizes and mtimes."""
        return cls.index_cache.get(files_key(d / f for f in CUB_FILES), lambda: read_cub_index(d))

    def check_layout(self, cfg: dict[str, Any]) -> None:
        d = cub_dir(self.root(cfg))
        missing = [f for f in (*CUB_FILES, "images") if not (d / f).exists()]
        if missing:
            raise UsageError(f"{self.name}: {d} lacks {', '.join(missing)}; {self.layout}")
        index = self.cub_index(d)
        self._check_index(d, index)
        images = index.images
        absent = [images[i][0] for i in sorted(images) if not (d / "images" / images[i][0]).is_file()]
        if absent:
            raise UsageError(
                f"{self.name}: {d / 'images' / absent[0]} (from images.txt) does not exist or is not a "
                "regular file"
                f" ({len(absent)} listed file(s) missing); {self.layout}"
            )

    def _check_index(self, d: Path, index: CubIndex) -> None:
        """The index tables agree: the same image ids, valid values, class ids 1..n, every class in both splits."""
        images, labels, split, classes = index.images, index.labels, index.split, index.classes
        if set(images) != set(labels) or set(images) != set(split):
            raise UsageError(
                f"{self.name}: images.txt, image_class_labels.txt and train_test_split.txt list different image ids"
            )
        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", split)):
            for i, (v,) in sorted(table.items()):
                if not v.isdigit() or (name == "train_test_split.txt" and v not in ("0", "1")):
                    want = "1 (train) or 0 (test)" if name == "train_test_split.txt" else "one integer class id"
                    raise UsageError(f"{self.name}: {d / name}: image {i} has {v!r}, expected {want}")
        if sorted(classes) != list(range(1, len(classes) + 1)):
            gap = next(k for k in range(1, len(classes) + 2) if k not in classes)
            raise UsageError(
                f"{self.name}: {d / 'classes.txt'}: class ids must be 1..{len(classes)} without gaps "
                f"(id {gap} is missing; a subset of CUB must be renumbered, in image_class_labels.txt too)"
            )
        bad = sorted({int(v[0]) for v in labels.values() if int(v[0]) not in classes})
        if bad:
            raise UsageError(f"{self.name}: image_class_labels.txt uses class ids not in classes.txt (e.g. {bad[0]})")
        for want, split_name in (("1", "train"), ("0", "test")):
            have = {labels[i][0] for i in images if split[i][0] == want}
            missing = sorted(set(map(str, classes)) - have, key=int)
            if missing:
                raise UsageError(
                    f"{self.name}: class {classes[int(missing[0])][0]} has no {split_name} images "
                    f"({len(missing)} class(es) without; train_test_split.txt)"
                )

    def files(self, cfg: dict[str, Any]) -> list[tuple[str, Path]]:
        d = cub_dir(self.root(cfg))
        index = self.cub_index(d)
        images, split = index.images, index.split
        return [("train" if split[i][0] == "1" else "test", d / "images" / images[i][0]) for i in sorted(images)]

    def load_data(self, cfg: dict[str, Any], cache_dir=None) -> TaskData:
        root, d = self.root(cfg), cfg["data"]
        index = self.cub_index(cub_dir(root))
        train = CUBDataset(root, True, transforms(d, True), index)
        val = CUBDataset(root, False, transforms(d, False), index)
        train, val, train_eval = image_splits(cfg, train, val, CUBDataset(root, True, transforms(d, False), index))
        return TaskData(
            train=train, val=val, num_classes=len(train.classes), class_names=train.classes, train_eval=train_eval
        )

    def class_hierarchy(self, class_names: list[str]) -> dict[str, str]:
        groups: dict[str, list[str]] = {}
        for c in class_names:
            groups.setdefault(cub_genus(c), []).append(c)
        return groups_to_parents(groups)


@TASKS.register("cub200")
class CUB200Task(CUBBase):
    name = "cub200"
    description = "CUB200-2011 (official folder), resnet50 -> resnet18 / resnet50, convnext_tiny"
    recipe = "cub200"
    archs = ("resnet50", "resnet18", "convnext_tiny")


@TASKS.register("cub200_compact")
class CUB200CompactTask(CUBBase):
    name = "cub200_compact"
    description = "CUB200-2011, resnet50 -> compact students efficientnet_b0 / mobilenetv2_100 (timm)"
    recipe = "cub200_compact"
    archs = ("resnet50", "efficientnet_b0", "mobilenetv2_100")
