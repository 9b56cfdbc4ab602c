"""Security (SECURITY.md): a run directory, a data file and a result file are untrusted input. Nothing read from
them runs code, and no name read from them becomes a path outside the folder a command writes to."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lskd_bench import store

from ..fixtures import ROOT, fake_results, make_cifar100


class _Planted:
    """Pickles to a call of ``os.system`` (what an attacker plants): unpickling it runs the command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "model": _Planted(marker)}, path)


def test_planted_pickle_runs_when_loaded_unrestricted(tmp_path):
    """The attack works (so the tests below can fail): an unrestricted load runs the planted command."""
    marker = tmp_path / "MARKER"
    _plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("planted", [store.STATE, store.STATE_PREV])
def test_planted_checkpoint_runs_no_code_when_its_cell_resumes(tmp_path, tiny_cfg, planted):
    """A planted state.pt (or state.prev.pt beside a truncated state.pt) is refused unloaded: moved aside as corrupt,
    the cell trains from scratch to the result of a clean run, and the planted command never runs."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.train import train_group
    from lskd_bench.tasks import get_task

    task = get_task("digits")
    data = task.load_data(tiny_cfg)
    teacher = next(c for c in plan_cells(tiny_cfg) if c.role == "teacher")
    (ref,) = train_group(task, [teacher], tiny_cfg, data, [tmp_path / "clean"], progress=False)
    d, marker = tmp_path / "cell", tmp_path / "MARKER"
    d.mkdir()
    _plant(d / planted, marker)
    if planted == store.STATE_PREV:
        (d / store.STATE).write_bytes(b"PK\x03\x04 truncated")
    (out,) = train_group(task, [teacher], tiny_cfg, data, [d], progress=False)
    assert not marker.exists()
    assert out.error is None and out.result["metrics"] == ref.result["metrics"]
    assert len(list(d.glob(f"{planted}.corrupt-*"))) == 1
    assert "the cell restarts from scratch" in out.notes[0]


@pytest.mark.slow
def test_no_unrestricted_unpickling_in_the_package():
    """Every torch.load is weights-only; the only pickle reader is the restricted CIFAR unpickler."""
    hits = subprocess.run(
        ["grep", "-rn", "--include=*.py", r"weights_only=False\|pickle.load(\|pickle.loads(\|Unpickler(", "lskd_bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert {h.split(":")[0] for h in hits} == {"lskd_bench/tasks/cifar.py"}, hits
    assert all("_ReleaseUnpickler" in h or "RestrictedUnpickler" in h for h in hits), hits


# ------------------------------------------------------------------------------------------ CIFAR pickles
@pytest.mark.slow
def test_planted_cifar_pickle_runs_no_code_in_check_data_or_dry_run(tmp_path, cli):
    d = make_cifar100(tmp_path / "data", per_class=(1, 1))
    marker = tmp_path / "MARKER"
    with open(d / "train", "wb") as f:
        pickle.dump({b"data": _Planted(marker), b"fine_labels": [0]}, f, protocol=2)
    for argv in (["check-data", "--no-progress"], ["run", "--dry-run", "--out", str(tmp_path / "runs")]):
        rc, _, err = cli(*argv, "--task", "cifar100", "--data-root", str(tmp_path / "data"))
        assert rc == 2 and err.count("\n") == 1, err
        assert f"cifar100: {d / 'train'} is not a CIFAR python pickle" in err and "posix.system" in err, err
        assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("n", [2, 0])
def test_restricted_unpickler_reads_the_release_format(tmp_path, protocol, n):
    """dicts of bytes keys, lists of ints and bytes, uint8 arrays: as the release (protocol 2, Python 2 cPickle) and
    as re-saved by Python 3 (protocols 4 and 5)."""
    from lskd_bench.tasks.cifar import _unpickle

    img = (np.arange(n * 3072) % 256).astype(np.uint8).reshape(n, 3072)  # n = 0: b"" pickles as a call of bytes()
    blob = {b"data": img, b"fine_labels": [3, 7][:n], b"filenames": [b"a.png", b"b.png"][:n], b"batch_label": b""}
    (tmp_path / "train").write_bytes(pickle.dumps(blob, protocol=protocol))
    raw = _unpickle(tmp_path / "train")
    assert raw["fine_labels"] == [3, 7][:n] and raw["filenames"] == [b"a.png", b"b.png"][:n]
    assert raw["data"].dtype == np.uint8 and (raw["data"] == img).all()


def test_restricted_unpickler_reads_a_python2_release_pickle(tmp_path):
    """The bytes of a Python 2 cPickle (protocol 2) of the release's layout: str keys, a uint8 numpy array."""
    from lskd_bench.tasks.cifar import _unpickle

    # what Python 2.7 + numpy 1.x write for {'fine_labels': [1], 'data': numpy.zeros((1, 2), numpy.uint8)}
    py2 = (
        b"\x80\x02}q\x01(U\x0bfine_labelsq\x02]q\x03K\x01aU\x04dataq\x04cnumpy.core.multiarray\n_reconstruct\n"
        b"q\x05cnumpy\nndarray\nq\x06K\x00\x85U\x01b\x87Rq\x07(K\x01K\x01K\x02\x86cnumpy\ndtype\nq\x08U\x02u1K\x00"
        b"K\x01\x87Rq\t(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x02\x05\x06tbu."
    )
    (tmp_path / "train").write_bytes(py2)
    raw = _unpickle(tmp_path / "train")
    assert raw["fine_labels"] == [1] and raw["data"].dtype == np.uint8 and raw["data"].tolist() == [[5, 6]]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("field", ["task", "arch", "teacher_arch", "method", "name"])
def test_names_from_result_json_never_become_paths_outside_the_output(tmp_path, cli, field):
    runs = tmp_path / "a" / "b" / "runs"
    fake_results(runs, bad_field=field)
    before = _files(tmp_path)
    for argv in (["plot", "--runs", str(runs)], ["compare", "--runs", str(runs)], ["leaderboard", "--runs", str(runs)]):
        rc, _, err = cli(*argv)
        assert rc == 0, (argv, err)
        assert re.search(
            rf"warning: skipped: {re.escape(str(runs))}/digits/student_dkd_\d-\w+/result.json .*{field}", err
        ), err
    written = _files(tmp_path) - before
    assert written and all(p.is_relative_to(runs) for p in written), sorted(written)
    assert not any("ESCAPE" in str(p) for p in written)
