"""Shared test helpers (plain functions and data; pytest fixtures live in conftest.py): tiny data sets in the
real on-disk layouts (ImageNet ImageFolder, the official CUB_200_2011 folder, CIFAR-100's pickles, raw and plain
parallel corpora), tiny grid overrides, hand-written results, and the fused-equals-alone check."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lskd_bench import store
from lskd_bench.runners.train import train_group

ROOT = Path(__file__).resolve().parents[1]  # the repository


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


FOLDER_CLASSES = ["bird", "cat", "dog"]  # sorted: class indices 0, 1, 2


def make_classfolder(
    root: Path, classes: tuple[str, ...] | list[str] = FOLDER_CLASSES, per_class: tuple[int, int] = (4, 2)
) -> Path:
    """A generic ImageFolder (``imagefolder``'s layout): ``root/{train,val}/<class>/`` with arbitrary class names,
    small images of mixed formats and sizes (JPEG ``.jpg`` and ``.JPEG``, PNG), class-coloured so a model can
    learn them."""
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(classes):
            for i in range(n):
                seed = i + (100 if split == "val" else 0)
                ext = (".jpg", ".png", ".JPEG")[i % 3]
                path = root / split / name / f"{name}_{split}_{i}{ext}"
                if ext == ".png":
                    rng = np.random.default_rng(c * 1000 + seed)
                    img = rng.integers(0, 60, size=(36, 44, 3), dtype=np.uint8)
                    img[..., c % 3] += 150
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img).save(path, format="PNG")
                else:
                    _jpeg(path, c, seed, size=48 if i % 2 else 40)
    return root


def make_cub(root: Path, per_class: tuple[int, int] = (4, 2)) -> Path:
    d = root / "CUB_200_2011"
    images, labels, split, classes = [], [], [], []
    img_id = 0
    for c, name in enumerate(CUB_CLASSES, 1):
        classes.append(f"{c} {name}")
        for is_train, n in ((1, per_class[0]), (0, per_class[1])):
            for _i in range(n):
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


SUBJECTS = [("the cat", "die Katze"), ("the dog", "der Hund"), ("the child", "das Kind"), ("my friend", "mein Freund")]
VERBS = [("sees", "sieht"), ("likes", "mag"), ("finds", "findet")]
OBJECTS = [("the house", "das Haus"), ("a book", "ein Buch"), ("the garden", "den Garten"), ("the tree", "den Baum")]


def sentence(i: int) -> tuple[str, str]:
    (se, sd), (ve, vd), (oe, od) = SUBJECTS[i % 4], VERBS[(i // 4) % 3], OBJECTS[(i // 12) % 4]
    return f"{se[0].upper()}{se[1:]} {ve} {oe}.", f"{sd[0].upper()}{sd[1:]} {vd} {od}."


def pairs(n: int, offset: int = 0) -> list[tuple[str, str]]:
    return [sentence(i + offset) for i in range(n)]


def make_raw_iwslt(root: Path, pair: str = "de-en", n_train: int = 60, n_test: tuple[int, int] = (4, 5)) -> Path:
    """``root/<pair>/``: train.tags.<pair>.{en,de} with metadata lines, two dev/tst XML files per language."""
    d = root / pair
    d.mkdir(parents=True, exist_ok=True)
    en, de = [], []
    for i, (e, g) in enumerate(pairs(n_train)):
        if i % 20 == 0:  # a talk header, as in the release files
            for tag in (
                "<url>http://www.ted.com/talks/x.html</url>",
                "<keywords>talks, science</keywords>",
                "<speaker>Jane Doe</speaker>",
                f"<talkid>{i}</talkid>",
            ):
                en.append(tag)
                de.append(tag)
            en.append("<title>Jane Doe: A talk</title>")
            de.append("<title>Jane Doe: Ein Vortrag</title>")
        en.append(e)
        de.append(g)
    (d / f"train.tags.{pair}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    (d / f"train.tags.{pair}.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    offset = 100
    for name, n in zip(("IWSLT14.TED.dev2010", "IWSLT14.TED.tst2010"), n_test):
        for lang, col in (("en", 0), ("de", 1)):
            segs = [f'<seg id="{k + 1}"> {p[col].replace("&", "&amp;")} </seg>' for k, p in enumerate(pairs(n, offset))]
            body = "\n".join(segs)
            (d / f"{name}.{pair}.{lang}.xml").write_text(
                f'<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n<srcset setid="{name}" srclang="english">\n'
                f'<doc docid="1" genre="lectures">\n{body}\n</doc>\n</srcset>\n</mteval>\n',
                encoding="utf-8",
            )
        offset += n
    return d


def make_plain(
    root: Path, n_train: int = 48, n_valid: int = 4, n_test: int = 6, src: str = "en", tgt: str = "de"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n, off in (("train", n_train, 0), ("valid", n_valid, 200), ("test", n_test, 300)):
        ps = pairs(n, off)
        (root / f"{split}.{src}").write_text("\n".join(p[0] for p in ps) + "\n", encoding="utf-8")
        (root / f"{split}.{tgt}").write_text("\n".join(p[1] for p in ps) + "\n", encoding="utf-8")
    return root


def make_django_plain(root: Path, lang: str = "de", every: int = 2) -> Path:
    """A plain-layout corpus of a few hundred real sentence pairs: every ``every``-th pair of Django's bundled
    En->``lang`` UI-string catalogues (the demo's source; ~780 pairs for de), split by position: a tenth
    test, a tenth valid, the rest train."""
    from lskd_bench.tasks.nmt.gettext_corpus import catalogue_pairs

    ps = catalogue_pairs(lang)[::every]
    root.mkdir(parents=True, exist_ok=True)
    splits = {"test": ps[0::10], "valid": ps[5::10], "train": [p for i, p in enumerate(ps) if i % 10 not in (0, 5)]}
    for split, sp in splits.items():
        (root / f"{split}.en").write_text("".join(s + "\n" for s, _ in sp), encoding="utf-8")
        (root / f"{split}.{lang}").write_text("".join(t + "\n" for _, t in sp), encoding="utf-8")
    return root


def tiny_overrides(epochs: int = 1, **extra):
    o = {
        "grid": {"alphas": [0.0, 0.1], "temperatures": [1.0, 4.0], "seeds": [0]},
        "teacher": {"epochs": epochs},
        "student": {"epochs": epochs},
    }
    o["grid"] = {**o["grid"], **extra.pop("grid", {})}  # one seed unless a test asks for more
    o.update(extra)
    return o


def require(module: str, what: str):
    """Import an optional dependency, or skip the test module with the reason. CI sets
    LSKD_REQUIRE_ALL=1, which turns such a skip into a failure: there every test must run."""

    if os.environ.get("LSKD_REQUIRE_ALL") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed: {what}")


def weights(d):
    return torch.load(d / store.MODEL, weights_only=True)


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def assert_fused_equals_alone(task, students, cfg, data, tmodel, tmp_path) -> None:
    """``students`` trained in one fused group under tmp_path/fused and one by one under tmp_path/alone: the same
    weights, metrics and loss history, member by member."""
    fused = train_group(
        task, students, cfg, data, [tmp_path / "fused" / c.name for c in students], teacher=tmodel, progress=False
    )
    for c, f in zip(students, fused):
        (alone,) = train_group(task, [c], cfg, data, [tmp_path / "alone" / c.name], teacher=tmodel, progress=False)
        assert f.error is None and alone.error is None
        assert same_weights(tmp_path / "fused" / c.name, tmp_path / "alone" / c.name), c.name
        assert f.result["metrics"] == alone.result["metrics"]
        assert [h["loss"] for h in f.result["history"]] == [h["loss"] for h in alone.result["history"]]


def digits_students(tmp_path, methods, epochs: int = 1, student: dict | None = None):
    """Digits, a teacher (alpha 0.1, ``epochs`` epochs) trained under tmp_path/t, and the student cells of
    ``methods`` and KD (T 4) under it (``student``: more of the students' recipe): (cfg, task, data, students,
    teacher model)."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import load_model
    from lskd_bench.tasks import get_task

    overrides = tiny_overrides(
        epochs=epochs, methods=[*methods, "kd"], grid={"alphas": [0.1], "temperatures": [4.0]}, baseline=False
    )
    overrides["student"].update(student or {})
    cfg = resolve_config("digits", {}, overrides)
    task = get_task("digits")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    (o,) = train_group(task, [teacher], cfg, data, [teacher.dir(tmp_path / "t")], progress=False)
    assert o.error is None
    tmodel = load_model(task, teacher.arch, data, cfg, teacher.dir(tmp_path / "t") / store.MODEL, torch.device("cpu"))
    students = [c for c in cells if c.role == "student"]
    assert sorted(c.method for c in students) == sorted([*methods, "kd"])
    return cfg, task, data, students, tmodel


def fused_with_kd(tmp_path, methods, student: dict | None = None):
    """The students of ``methods`` and KD (T 4) under a digits teacher (``digits_students``, 1 epoch; ``student``:
    more of the students' recipe): fused in one group they train bit for bit as alone
    (``assert_fused_equals_alone``)."""
    cfg, task, data, students, tmodel = digits_students(tmp_path, methods, student=student)
    assert_fused_equals_alone(task, students, cfg, data, tmodel, tmp_path)


def train_then_kill(task, students, cfg, data, tmodel, tmp_path, at_epoch: int = 2) -> tuple[Path, Path]:
    """``students`` trained as one fused group to the end under tmp_path/ref, and again under tmp_path/cut stopped
    by a KeyboardInterrupt at the end of epoch ``at_epoch``: (ref, cut), for the resume-identity tests."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    train_group(task, students, cfg, data, [ref / c.name for c in students], teacher=tmodel, progress=False)

    def stop(epoch):
        if epoch == at_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dirs = [cut / c.name for c in students]
        train_group(task, students, cfg, data, dirs, teacher=tmodel, progress=False, on_epoch_end=stop)
    return ref, cut


def resume_matches(task, students, cfg, data, tmodel, ref: Path, cut: Path, keys=("loss",)) -> list[tuple]:
    """The group killed under ``cut`` (``train_then_kill``) resumed to its end: every student equals the
    uninterrupted one under ``ref`` in weights (bit for bit), in each history ``keys`` and in metrics. Returns each
    student's (resumed, uninterrupted) result, for a test's own checks."""
    out = train_group(task, students, cfg, data, [cut / c.name for c in students], teacher=tmodel, progress=False)
    assert all(o.error is None for o in out)
    results = []
    for c in students:
        assert same_weights(cut / c.name, ref / c.name), c.name
        a, b = (json.loads((d / c.name / store.RESULT).read_text()) for d in (cut, ref))
        for key in keys:
            assert [h[key] for h in a["history"]] == [h[key] for h in b["history"]], (c.name, key)
        assert a["metrics"] == b["metrics"], c.name
        results.append((a, b))
    return results


def example_site(tmp_path: Path, example: str, module: str, entry_point: str | dict[str, str]) -> dict[str, str]:
    """The module (or package folder) ``module`` of ``examples/<example>`` made importable as ``pip install``
    would leave it: copied to a site folder with a .dist-info holding its entry points (``name = module:Class``
    in ``lskd_bench.methods``, or {group: lines}). Returns the environment of a process that sees it."""
    import shutil

    site = tmp_path / "site"
    site.mkdir()
    source = ROOT / "examples" / example / module
    if source.is_dir():  # a package, with its data files (a task's recipe)
        shutil.copytree(source, site / module, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy(source.with_suffix(".py"), site)
    dist = module.replace("_", "-")
    info = site / f"{module}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    groups = entry_point if isinstance(entry_point, dict) else {"lskd_bench.methods": entry_point}
    (info / "entry_points.txt").write_text("".join(f"[{g}]\n{lines}\n" for g, lines in groups.items()))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def result(role, arch, alpha, T, seed, top1, top5, h, teacher_arch=None, method=None):
    return {
        "cell": {
            "task": "digits", "role": role, "arch": arch, "method": method or ("kd" if role == "student" else "ls"),
            "alpha": alpha, "T": T, "seed": seed, "hash": h, "teacher_arch": teacher_arch,
        },
        "metrics": {"top1": top1, "top5": top5},
        "epochs": 30,
        "timings": {"wall_s": 1.5},
        "finished_at": "2026-11-24T00:00:00+00:00",
    }  # fmt: skip


def lambda_sweep(root: Path) -> None:
    """A kd.lambda sweep in one run dir (hand-written results): teachers at alpha 0 and 0.1; at each alpha and T 4,
    kd with lambda 1 (seeds 0-2: top1 90, 91, 92) and lambda 0.5 (seeds 3-5: 80, 81, 82), dkd (seeds 0-2: 95, 96,
    97)."""
    rows = [result("teacher", "big", a, None, 0, 99.0, 100.0, f"t{a}", "big") for a in (0.0, 0.1)]
    for a in (0.0, 0.1):
        for lam, seeds, vs in ((1.0, (0, 1, 2), (90, 91, 92)), (0.5, (3, 4, 5), (80, 81, 82))):
            for s, v in zip(seeds, vs):
                r = result("student", "small", a, 4.0, s, float(v), 99.0, f"kd{a}-{lam}-{s}", "big", method="kd")
                r["config"] = {"method": {"lambda": lam}}
                rows.append(r)
        for s, v in enumerate((95, 96, 97)):
            rows.append(result("student", "small", a, 4.0, s, float(v), 99.0, f"dkd{a}-{s}", "big", method="dkd"))
    for i, r in enumerate(rows):
        store.write_json(root / "digits" / f"c{i}" / store.RESULT, r)


# ------------------------------------------------------------------------------ results written as train.py writes them
def fake_results(
    runs: Path,
    task: str = "digits",
    arch: str = "cnn_tiny",
    bad_field: str | None = None,
    bad_value: str = "../../../ESCAPE",
) -> None:
    """A finished teacher and two students (kd, dkd) per alpha, written as train.py writes them."""
    cells = []
    for a in (0.0, 0.1):
        cells.append(
            {"role": "teacher", "arch": "cnn_wide", "method": "ce", "alpha": a, "T": None, "teacher_arch": "cnn_wide"}
        )
        for m in ("kd", "dkd"):
            cells.append(
                {"role": "student", "arch": arch, "method": m, "alpha": a, "T": 1.0, "teacher_arch": "cnn_wide"}
            )
    for i, c in enumerate(cells):
        name = f"{c['role']}_{c['method']}_{i}"
        cell = {"task": task, "seed": 0, "hash": f"{i:012x}", "name": name, "teacher": None, **c}
        if bad_field and c["role"] == "student" and c["method"] == "dkd":
            cell[bad_field] = bad_value
        res = {
            "cell": cell,
            "metrics": {"top1": 50.0 + i, "top5": 90.0},
            "best": None,
            "epochs": 2,
            "primary_metric": "top1",
            "timings": {"wall_s": 1.0},
            "history": [
                {"epoch": 1, "loss": 2.0, "eval": {"top1": 40.0}},
                {"epoch": 2, "loss": 1.0, "eval": {"top1": 50.0 + i}},
            ],
        }
        d = runs / "digits" / f"{name}-{i:012x}"
        d.mkdir(parents=True)
        (d / store.RESULT).write_text(json.dumps(res))


# ------------------------------------------------------------------------- a real result.json and hostile edits of it
REAL_RESULT = ROOT / "tests" / "data" / "result.json"  # a kd student's result.json as this version writes it (digits)


def real_result() -> dict:
    return json.loads(REAL_RESULT.read_text())


def _set(*path_value):
    *path, value = path_value

    def edit(r):
        for k in path[:-1]:
            r = r[k]
        r[path[-1]] = value

    return edit


# A hand-edited result.json whose JSON types pass a shape check by type alone, keyed by what it breaks
# (the key named in the reader's "skipped: FILE (why)" line).
HOSTILE_EDITS = {
    "teacher_weights a string": ("teacher_weights", _set("teacher_weights", "selected")),
    "teacher_weights a list": ("teacher_weights", _set("teacher_weights", ["selected", 3])),
    "best.epoch a word": ("best.epoch", _set("best", "epoch", "abc")),
    "best.epoch a fraction": ("best.epoch", _set("best", "epoch", 1.5)),
    "alpha 10**400": ("cell.alpha", _set("cell", "alpha", 10**400)),
    "metric 10**400": ("metrics.top1", _set("metrics", "top1", 10**400)),
    "best metric 10**400": ("best.metrics.top5", _set("best", "metrics", "top5", 10**400)),
    "seed 10**30": ("cell.seed", _set("cell", "seed", 10**30)),
    "epochs 10**30": ("epochs", _set("epochs", 10**30)),
    "finished_at a number": ("finished_at", _set("finished_at", 1765000000)),
    "env value a mapping": ("env.torch", _set("env", "torch", {"version": "2"})),
    "env value nested lists": ("env.gpus", _set("env", "gpus", [["0"]])),
    "env value 10**30": ("env.threads", _set("env", "threads", 10**30)),
    "T infinite": ("cell.T", _set("cell", "T", float("inf"))),
    "alpha null in a student": ("cell.alpha", _set("cell", "alpha", None)),
    "metric named like a column": ("metrics", _set("metrics", "task", 1.0)),
    "primary metric not reported": ("metrics", _set("primary_metric", "bleu")),
    "best lacks a metric": ("best.metrics", lambda r: r["best"]["metrics"].pop("top5")),
    "metric format bogus": ("metric_specs[0].format", _set("metric_specs", 0, "format", "%%q")),
    "selection.metric a number": ("selection.metric", _set("selection", "metric", 5)),
    "weights.selected a path": ("weights.selected", _set("weights", "selected", "../../model.pt")),
    "wall_s NaN": ("timings.wall_s", _set("timings", "wall_s", float("nan"))),
    "history epoch a word": ("history[0].epoch", _set("history", 0, "epoch", "one")),
    "cell a list": ("cell", _set("cell", ["student"])),
    "task name of 5000 characters": ("cell.task", _set("cell", "task", "t" * 5000)),
    "valid selection without its metric": ("selection", _set("selection", {"split": "valid", "mode": "min"})),
}


def plant_results(runs: Path, edits: list[str]) -> dict[str, Path]:
    """A run directory holding the real result and one copy per edit of ``HOSTILE_EDITS``, each in a cell folder of
    its own: {edit: its result.json}."""
    good = runs / "digits" / "student_kd_cnn_tiny_a0.1_T1_s0-824028d8"
    good.mkdir(parents=True)
    (good / store.RESULT).write_text(REAL_RESULT.read_text())
    planted = {}
    for i, edit in enumerate(edits):
        res = real_result()
        HOSTILE_EDITS[edit][1](res)
        d = runs / "digits" / f"student_kd_cnn_tiny_a0.1_T1_s{i + 1}-{i + 1:08x}"
        d.mkdir()
        planted[edit] = d / store.RESULT
        planted[edit].write_text(json.dumps(res))
    return planted


FAST = {"image_size": 32}


def tiny(root, **role):
    o = {
        "data": {"root": str(root), **FAST},
        "grid": {"alphas": [0.1], "temperatures": [1.0]},
        "num_workers": 0,
        "eval_batch_size": 8,
        "teacher": {"epochs": 1, "batch_size": 4, "lr": 0.001},
        "student": {"epochs": 1, "batch_size": 4, "lr": 0.001},
    }
    for r, arch in role.items():
        o[r]["arch"] = arch
    return o


# ------------------------------------------------------------------------------------------ run directories
HANG_GUARD_S = 15 * 60  # only prevents a hung test; no assertion depends on speed
TINY_ARGS = ["--alphas", "0.1", "--temperatures", "1", "--seeds", "0", "--epochs", "1", "--no-progress"]
IMAGE_ARGS = [
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--num-workers",
    "0",
    "--lr",
    "0.001",
    "--alphas",
    "0.1",
    "--temperatures",
    "1",
    "--set",
    "data.image_size=32",
    "--no-progress",
]


def cell_dirs(out: Path) -> dict[str, Path]:
    return {p.name.rsplit("-", 1)[0]: p for p in (out / "digits").iterdir() if "_" in p.name}


def result_metrics(d: Path) -> dict:
    return json.loads((d / store.RESULT).read_text())["metrics"]


def aged(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def results_by_cell(out: Path) -> dict[str, dict]:
    return {p.parent.name.rsplit("-", 1)[0]: json.loads(p.read_text()) for p in out.rglob(store.RESULT)}


# ------------------------------------------------------------------------------------------ data edits
def edit_cifar_train(d: Path, edit) -> None:

    with open(d / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    edit(raw)
    with open(d / "train", "wb") as f:
        pickle.dump(raw, f, protocol=2)
