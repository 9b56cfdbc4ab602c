"""``store.output_kind`` / ``store.write_output``: how a file a command writes for the user is written (SECURITY.md:
``-`` is stdout, devices, FIFOs and open descriptors written through, other non-regular files refused, regular
files replaced atomically). The commands' side: ``tests/integration/test_security.py``."""

from __future__ import annotations

import os

import pytest

from lskd_bench import store
from lskd_bench.errors import UsageError


def test_output_kind_by_what_the_path_is(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "null").symlink_to(os.devnull)
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    kinds = {name: store.output_kind(tmp_path / name) for name in ("file", "link", "null", "fifo", "new", "dangling")}
    assert kinds == {
        "file": "replace",
        "link": "replace",  # the link itself is replaced, as before: the file it names is left alone
        "null": "through",
        "fifo": "through",
        "new": "replace",
        "dangling": "replace",
    }
    assert store.output_kind("-") == "stdout"
    with pytest.raises(UsageError, match=r"^--out .*/dir: is a directory$"):
        store.output_kind(tmp_path / "dir", "--out")
    with pytest.raises(UsageError, match=r"^output directory .*/file is not writable: .*/file is not a directory$"):
        store.check_output(tmp_path / "file" / "x", "--out")
    # a path the user did not name: judged by the entry itself, never followed
    assert store.output_kind(tmp_path / "null", follow=False) == "replace"
    with pytest.raises(UsageError, match=r"/fifo: is a FIFO$"):
        store.output_kind(tmp_path / "fifo", follow=False)


def test_write_output_through_an_open_file_descriptor_writes_in_place(tmp_path):
    """/dev/fd/N (/proc/self/fd/N) of a regular file: truncated and written like a shell's '>', not replaced."""
    with open(tmp_path / "held", "w") as f:
        f.write("old contents, longer than the new")
        f.flush()
        path = f"/dev/fd/{f.fileno()}"
        assert store.output_kind(path) == "through"
        store.write_output(path, lambda out: out.write("new\n"), mode="w")
    assert (tmp_path / "held").read_text() == "new\n"
    assert _no_leftovers(tmp_path)


def _no_leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) == ["held"]
