"""``lskd_bench.runners.moved``: the data's fingerprint, data.json, finished cells found at another data path."""

from __future__ import annotations

import errno
import json

from lskd_bench import store
from lskd_bench.runners import moved
from lskd_bench.runners.cells import plan_cells

from ..fixtures import REAL_RESULT


def _cfg_with_root(tiny_cfg, root):
    return {**tiny_cfg, "data": {**tiny_cfg["data"], "root": str(root)}}


def _unreadable(name: str, error: int = errno.EACCES):
    """``open`` as the module sees it, failing on files named ``name`` (we are root: chmod 000 still reads)."""
    real = open

    def fake(path, *args, **kw):
        if str(path).endswith(name):
            raise PermissionError(error, "Permission denied" if error == errno.EACCES else "I/O error", str(path))
        return real(path, *args, **kw)

    return fake


def test_an_unreadable_data_file_is_named_and_costs_no_finished_cell(tmp_path, tiny_cfg, monkeypatch):
    """One file of the data root that cannot be read (permission denied, an I/O error) leaves the data without a
    fingerprint, said in one line naming the file: no data.json is written and nothing raises, at the end of a
    grid (record_fingerprints) and when a later run looks for moved cells (find_moved)."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.bin").write_bytes(b"a" * 10)
    (root / "locked.bin").write_bytes(b"b" * 10)
    cfg = _cfg_with_root(tiny_cfg, root)
    cells = plan_cells(cfg)
    out = tmp_path / "runs"
    done = cells[0].dir(out)
    done.mkdir(parents=True)
    (done / store.RESULT).write_text(REAL_RESULT.read_text())
    moved._CACHE.clear()
    for error in (errno.EACCES, errno.EIO):
        monkeypatch.setattr(moved, "open", _unreadable("locked.bin", error), raising=False)
        problems: list[str] = []
        assert moved.data_fingerprint(cfg, problems) is None
        assert (
            len(problems) == 1
            and f"not fingerprinted: the data at {root} (cannot read {root / 'locked.bin'}: " in (problems[0])
        )
        lines = moved.record_fingerprints(cells, cfg, out)
        assert lines == problems and not (done / moved.DATA_JSON).exists()
    monkeypatch.undo()
    assert moved.record_fingerprints(cells, cfg, out) == []  # readable again: recorded
    assert json.loads((done / moved.DATA_JSON).read_text())["fingerprint"].startswith("content:")


def test_an_unlistable_data_folder_is_named_too(tmp_path, tiny_cfg, monkeypatch):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.bin").write_bytes(b"x")
    real_scandir = moved.os.scandir

    def scandir(path="."):
        if str(path).endswith("sub"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(moved.os, "scandir", scandir)
    problems: list[str] = []
    assert moved.data_fingerprint(_cfg_with_root(tiny_cfg, root), problems) is None
    assert problems and f"(cannot read {root / 'sub'}: Permission denied)" in problems[0]
