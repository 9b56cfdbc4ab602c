"""``imagefolder``: any folder of images as a classification task, ``DIR/train/<class>/`` and ``DIR/val/<class>/``.

The ImageFolder machinery is ImageNet's (``vision.ImageFolderBase``: one listing of files for check-data and
training, class index = sorted folder name); this task adds what ImageNet fixes and a custom data set must choose:
which classes (``data.classes``), the image size and archs (``lskd_bench/configs/imagefolder.yaml``: small-data
defaults), and an optional class hierarchy for ``analyze`` (``data.hierarchy``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..hierarchy import read_hierarchy_file
from ..models import ARCHS
from ..schema import Field
from . import TASKS
from .base import DataReport
from .vision import IMAGE_DATA, ImageFolderBase


def _class_names_check(names: list[str]) -> str | None:
    if not names:
        return "must name at least one class folder"
    if len(set(names)) != len(names):
        return "names a class twice"
    if any(not n or "/" in n or "\\" in n or n in (".", "..") for n in names):
        return "must be folder names (no path separators)"
    return None


IMAGEFOLDER_DATA = IMAGE_DATA.extend(
    {
        "classes": Field(
            [str],
            None,
            "the class folders to read (class index = sorted name); null: every folder of train/, which val/ must "
            "match",
            nullable=True,
            check=_class_names_check,
        ),
        "hierarchy": Field(
            str,
            None,
            "class hierarchy file for analyze's similar / dissimilar classes: 'child parent' lines or JSON "
            "(null: analyze needs --similar and --dissimilar)",
            nullable=True,
            identity=False,
        ),
    }
)


@TASKS.register("imagefolder")
class ImageFolderTask(ImageFolderBase):
    name = "imagefolder"
    description = (
        "your own images: DIR/train/<class>/ and DIR/val/<class>/ (any class names), resnet18 -> mobilenet_v1 at "
        "64 px (small-data recipe); classes, size, archs from config, data.hierarchy optional"
    )
    recipe = "imagefolder"
    archs = tuple(ARCHS)  # every named arch (and any timm:NAME / torchvision:NAME)
    layout = "expected DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg with the same class folders"
    data_schema = IMAGEFOLDER_DATA

    def selected_classes(self, cfg: dict[str, Any]) -> list[str] | None:
        classes = cfg["data"]["classes"]
        return sorted(classes) if classes else None

    def check_layout(self, cfg: dict[str, Any]) -> None:
        super().check_layout(cfg)
        if cfg["data"]["hierarchy"]:
            self.hierarchy(cfg, self.class_folders(cfg, "train"))

    def check_data(self, cfg: dict[str, Any], progress: bool = True) -> DataReport:
        report = super().check_data(cfg, progress)
        classes = self.class_folders(cfg, "train")
        report.notes.append(
            f"{self.name}: {len(classes)} classes ({', '.join(classes[:8])}{', ...' * (len(classes) > 8)})"
        )
        if cfg["data"]["hierarchy"]:
            report.notes.append(f"{self.name}: class hierarchy {cfg['data']['hierarchy']} places every class")
        else:
            report.notes.append(
                f"{self.name}: no data.hierarchy: analyze will need --similar and --dissimilar (or --hierarchy FILE)"
            )
        return report

    def hierarchy(self, cfg: dict[str, Any], class_names: list[str]) -> dict[str, str]:
        """The links of ``data.hierarchy``, which must give every class a parent (UsageError otherwise)."""
        path = cfg["data"]["hierarchy"]
        parents = read_hierarchy_file(path)
        lacking = [c for c in class_names if c not in parents]
        if lacking:
            raise UsageError(
                f"{self.name}: class hierarchy {path} gives no parent to {len(lacking)} class(es) "
                f"(e.g. {', '.join(lacking[:3])}): add a '<class> <parent>' line for each class folder"
            )
        return parents

    def configured_hierarchy(self, class_names: list[str], cfg: dict[str, Any]) -> dict[str, str]:
        path = cfg["data"].get("hierarchy")
        if not path:
            return {}
        if not Path(path).exists():
            raise UsageError(
                f"{self.name}: the cells' data.hierarchy {path} does not exist (a relative path is read from the "
                "directory you run in): give --hierarchy FILE, or --similar and --dissimilar"
            )
        return self.hierarchy(cfg, class_names)
