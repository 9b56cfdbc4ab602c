"""Tiny data sets in the real on-disk layouts: ImageNet ImageFolder and the official CUB_200_2011 folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n01440764", "n01443537", "n02085620"]  # tench, goldfish, Chihuahua
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "029.American_Crow"]


def _jpeg(path: Path, cls: int, i: int, size: int = 40) -> None:
    rng = np.random.default_rng(cls * 1000 + i)
    img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    img[..., cls % 3] += 150  # class-dependent colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="JPEG")


def make_imagefolder(root: Path, per_class: tuple[int, int] = (4, 2)) -> Path:
    for split, n in zip(("train", "val"), per_class):
        for c, wnid in enumerate(WNIDS):
            for i in range(n):
                _jpeg(root / split / wnid / f"{wnid}_{split}_{i}.JPEG", c, i + (100 if split == "val" else 0))
    return root


def make_cub(root: Path, per_class: tuple[int, int] = (4, 2)) -> Path:
    d = root / "CUB_200_2011"
    images, labels, split, classes = [], [], [], []
    img_id = 0
    for c, name in enumerate(CUB_CLASSES, 1):
        classes.append(f"{c} {name}")
        for is_train, n in ((1, per_class[0]), (0, per_class[1])):
            for i in range(n):
                img_id += 1
                rel = f"{name}/{name.split('.')[1]}_{img_id:04d}.jpg"
                _jpeg(d / "images" / rel, c - 1, img_id)
                images.append(f"{img_id} {rel}")
                labels.append(f"{img_id} {c}")
                split.append(f"{img_id} {is_train}")
    for fname, rows in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", classes),
    ):
        (d / fname).write_text("\n".join(rows) + "\n")
    return d


def make_cifar100(root: Path, per_class: tuple[int, int] = (6, 2), classes: int = 100) -> Path:
    """A ``cifar-100-python/`` folder in the release's format: ``train``/``test`` pickles (dicts with bytes keys:
    ``data`` uint8 (N, 3072) rows of R, G, B planes, ``fine_labels``, ``coarse_labels``, ``filenames``,
    ``batch_label``) and ``meta`` (``fine_label_names``, ``coarse_label_names``). Images are class-coloured
    noise, so a model can learn them."""
    import pickle

    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"class{c:02d}" for c in range(classes)]
    names[:3] = ["apple", "pear", "bus"]
    for split, n in (("train", per_class[0]), ("test", per_class[1])):
        labels = np.repeat(np.arange(classes), n)
        rng.shuffle(labels)
        img = rng.integers(0, 90, size=(len(labels), 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):
            img[i, c % 3] += np.uint8(60 + (c // 3) * 3)  # a class-dependent colour
        blob = {
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
            b"batch_label": split.encode(),
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
            b"data": img.reshape(len(labels), -1),
        }
        with open(d / split, "wb") as f:
            pickle.dump(blob, f, protocol=2)
    with open(d / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [s.encode() for s in names],
                b"coarse_label_names": [f"super{i}".encode() for i in range(classes // 5)],
            },
            f,
            protocol=2,
        )
    return d
