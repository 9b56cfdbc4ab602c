"""What tasks keep of their data files (lskd_bench/tasks/cache.py) and the tasks that keep it: CIFAR's release
pickles, CUB's index tables and a translation corpus read by the layout check. A kept value is used only while
its key (the files' paths, sizes and mtimes, plus the reader's settings) is unchanged."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from lskd_bench.tasks import get_task
from lskd_bench.tasks.cache import KeyedCache, files_key


def _touch_later(path: Path) -> None:
    """The file's mtime one second later, its content unchanged."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# ---------------------------------------------------------------------------------------------- the cache
def test_files_key_changes_with_size_mtime_path_and_presence(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("one")
    b.write_text("two")
    key = files_key([a, b])
    assert key == files_key([a, b]) and key[0][0] == str(a.resolve())
    assert files_key([b, a]) != key  # the order is part of it
    _touch_later(a)
    assert files_key([a, b]) != key
    key = files_key([a, b])
    a.write_text("three")  # another size
    assert files_key([a, b]) != key
    missing = tmp_path / "c"
    gone = files_key([missing])
    assert gone == ((str(missing.resolve()), None, None),)
    missing.write_text("")
    assert files_key([missing]) != gone


def test_keyed_cache_keeps_one_value_for_its_key():
    cache: KeyedCache[list] = KeyedCache()
    made = []

    def make(v):
        return lambda: made.append(v) or [v]

    assert cache.key is None
    first = cache.get("k1", make(1))
    assert cache.get("k1", make(2)) is first and made == [1] and cache.key == "k1"
    assert cache.get("k2", make(3)) == [3] and made == [1, 3]  # a new key replaces the value
    assert cache.get("k1", make(4)) == [4]  # the old one is gone
    cache.clear()
    assert cache.key is None and cache.get("k1", make(5)) == [5]


def test_a_failed_read_leaves_nothing_behind():
    cache: KeyedCache[int] = KeyedCache()
    cache.put("k", 1)

    def fail():
        raise OSError("unreadable")

    with pytest.raises(OSError):
        cache.get("other", fail)
    assert cache.key is None and cache.take("k") is None


def test_take_hands_the_value_out_once():
    cache: KeyedCache[str] = KeyedCache()
    cache.put("k", "corpus")
    assert cache.take("k") == "corpus" and cache.take("k") is None
    cache.put("k", "corpus")
    assert cache.take("other") is None and cache.key is None  # a key that differs drops it too


# ---------------------------------------------------------------------------------------------- CIFAR
def _cifar(root: Path, classes: int = 3) -> Path:
    """A small release folder: train holds two images a class, test one."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for name, per in (("train", 2), ("test", 1)):
        labels = [c for c in range(classes) for _ in range(per)]
        data = np.arange(len(labels) * 3072, dtype=np.int64).astype(np.uint8).reshape(len(labels), 3072)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels}, f, protocol=2)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{c}".encode() for c in range(classes)]}, f, protocol=2)
    return d


def test_cifar_release_is_read_once_across_task_instances(tmp_path, monkeypatch):
    """The layout check and training run on separate instances of the task: both use one read, kept in the
    task's ``release_cache`` under the three files' key."""
    from lskd_bench.tasks import cifar

    d = _cifar(tmp_path)
    reads = []
    real = cifar.read_meta
    monkeypatch.setattr(cifar, "read_meta", lambda d: reads.append(d) or real(d))
    monkeypatch.setattr(cifar.CIFAR100Task, "release_cache", KeyedCache())
    cfg = {"data": {**cifar.CIFAR_DATA.defaults(), "root": str(tmp_path)}}
    names = get_task("cifar100").load_data(cfg).class_names
    assert get_task("cifar100").load_data(cfg).class_names == names == ["class0", "class1", "class2"]
    assert len(reads) == 1
    assert cifar.CIFAR100Task.release_cache.key == files_key(d / f for f in ("train", "test", "meta"))
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"a", b"b", b"c"]}, protocol=2))
    assert get_task("cifar100").load_data(cfg).class_names == ["a", "b", "c"] and len(reads) == 2


# ---------------------------------------------------------------------------------------------- CUB
def _cub_cfg(root: Path) -> dict:
    from lskd_bench.tasks.vision import IMAGE_DATA

    return {"data": {**IMAGE_DATA.defaults(), "root": str(root), "image_size": 32, "decode": "cpu"}, "device": "cpu"}


def test_cub_index_tables_are_read_once(cub_root, tmp_path, monkeypatch):
    """check_layout, files() (check-data) and the three datasets of load_data read each index table once."""
    from lskd_bench.tasks import vision

    root = tmp_path / "cub"
    shutil.copytree(cub_root, root)
    reads = []
    real = vision._read_table
    monkeypatch.setattr(vision, "_read_table", lambda path, n: reads.append(path.name) or real(path, n))
    monkeypatch.setattr(vision.CUBBase, "index_cache", KeyedCache())
    task, cfg = get_task("cub200"), _cub_cfg(root)
    task.check_layout(cfg)
    files = task.files(cfg)
    data = get_task("cub200").load_data(cfg)
    assert sorted(reads) == sorted(vision.CUB_FILES)
    assert len(files) == len(data.train) + len(data.val) == 18
    split = next(root.rglob("train_test_split.txt"))
    _touch_later(split)
    task.load_data(cfg)
    assert sorted(reads) == sorted(vision.CUB_FILES * 2)  # a table changed: all four read again, once


# ---------------------------------------------------------------------------------------------- translation
def _plain_corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    for split, n in (("train", 24), ("valid", 3), ("test", 3)):
        (root / f"{split}.en").write_text("".join(f"the cat {i} sees {split}\n" for i in range(n)))
        (root / f"{split}.de").write_text("".join(f"die Katze {i} sieht {split}\n" for i in range(n)))
    return root


def test_translation_corpus_checked_by_run_is_read_once(tmp_path, monkeypatch):
    """``run`` checks the layout (reading the corpus), then loads the data from that read; the corpus is handed
    out once (it is large), and a changed file or other data settings read it again."""
    from lskd_bench.tasks import nmt

    root = _plain_corpus(tmp_path / "data")
    reads = []
    real = nmt.read_corpus
    monkeypatch.setattr(nmt, "read_corpus", lambda *a, **kw: reads.append(a[0]) or real(*a, **kw))
    task = get_task("iwslt_ende")
    cfg = {"data": {**task.data_schema.defaults(), "root": str(root)}}
    task.check_layout(cfg)
    assert len(reads) == 1 and task.checked_corpus.key is not None
    corpus = task.corpus(cfg)
    assert len(reads) == 1 and len(corpus.train) == 24 and task.checked_corpus.key is None
    task.corpus(cfg)
    assert len(reads) == 2  # handed out once

    task.check_layout(cfg)
    _touch_later(root / "test.de")
    task.corpus(cfg)
    assert len(reads) == 4  # a corpus file changed after the check: read again

    task.check_layout(cfg)
    task.corpus({"data": {**cfg["data"], "max_len": 100}})
    assert len(reads) == 6  # other settings: read again
