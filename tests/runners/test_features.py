"""``lskd_bench.runners.features``: penultimate features for the analysis commands, computed when they are first
needed (not at the end of every cell: no pass over the data that no command asked for) and kept."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lskd_bench import store

from ..fixtures import TINY_ARGS, cell_dirs


@pytest.mark.slow
def test_features_computed_on_demand_equal_the_export_at_the_end_of_training(tmp_path, cli):
    """A grid trained with analysis.export=true (the files written at the end of training) and the same grid
    without them: analyze computes each cell's features from its final weights, the same arrays bit for bit, so
    the diffusion index and the projections are the ones the export gave; a second analyze reads the kept files."""
    exported, lazy = tmp_path / "exported", tmp_path / "lazy"
    grid = [*TINY_ARGS, "--alphas", "0,0.1", "--temperatures", "1,4"]
    rc, _, err = cli("run", "--out", str(exported), *grid, "--set", "analysis.export=true")
    assert rc == 0, err
    shutil.copytree(exported, lazy)
    for f in lazy.rglob(store.FEATURES):
        f.unlink()
    analyze = ["analyze", "--target", "3", "--similar", "5", "--dissimilar", "1", "--t2", "4"]
    rc, want, err = cli(*analyze, "--runs", str(exported))
    assert rc == 0, err
    rc, got, err = cli(*analyze, "--runs", str(lazy))
    assert rc == 0, err
    assert got.replace(str(lazy), "") == want.replace(str(exported), "")  # the same eta table
    students = {n: d for n, d in cell_dirs(lazy).items() if n.startswith("student_kd")}
    assert len(students) == 4
    for name, d in students.items():
        with np.load(d / store.FEATURES) as a, np.load(cell_dirs(exported)[name] / store.FEATURES) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), name
    kept = {n: (d / store.FEATURES).stat().st_mtime_ns for n, d in students.items()}
    rc, again, _ = cli(*analyze, "--runs", str(lazy))
    assert rc == 0 and again == got
    assert {n: (d / store.FEATURES).stat().st_mtime_ns for n, d in students.items()} == kept  # read, not recomputed
    png = tmp_path / "p.png"
    rc, _, err = cli("visualize", "--runs", str(lazy), "--classes", "3,5,1", "--out", str(png))
    assert rc == 0 and png.stat().st_size > 0, err
