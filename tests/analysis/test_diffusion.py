"""``lskd_bench.analysis.diffusion``: the diffusion index and verdict; the PNG and the analyze CLI."""

from __future__ import annotations

import numpy as np
import pytest

from lskd_bench.analysis.diffusion import class_centroids, diffusion_index, verdict


def features_at(centroids: dict[int, list[float]], n: int = 4, seed: int = 0):
    """Samples spread symmetrically around the given centroids (so their mean is exact)."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for k, c in centroids.items():
        noise = rng.normal(size=(n, len(c)))
        noise = np.concatenate([noise, -noise])
        feats.append(np.asarray(c) + 0.01 * noise)
        labels += [k] * (2 * n)
    return np.concatenate(feats), np.array(labels)


T1 = {0: [0.0, 0.0], 1: [2.0, 0.0], 2: [0.0, 4.0], 3: [-1.0, 0.0]}


def test_centroids_are_class_means():
    f, y = features_at(T1)
    c = class_centroids(f, y, [0, 1, 2])
    np.testing.assert_allclose(c[1], [2.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError):
        class_centroids(f, y, [7])


def test_eta_negative_when_target_moves_closer():
    f1, y1 = features_at(T1)
    # at T2 class 0 sits at (1, 0): distance to class 1 drops 2 -> 1 (-0.5), to class 3 grows 1 -> 2 (+1.0)
    f2, y2 = features_at({**T1, 0: [1.0, 0.0]})
    assert diffusion_index(f1, y1, f2, y2, 0, [1]) == pytest.approx(-0.5)
    assert diffusion_index(f1, y1, f2, y2, 0, [3]) == pytest.approx(1.0)
    assert diffusion_index(f1, y1, f2, y2, 0, [1, 3]) == pytest.approx(0.25)  # mean of -0.5 and +1.0


def test_eta_zero_when_nothing_moves_and_target_ignored_in_group():
    f1, y1 = features_at(T1)
    f2, y2 = features_at(T1, seed=1)
    assert diffusion_index(f1, y1, f2, y2, 0, [0, 1, 2]) == pytest.approx(0.0, abs=1e-12)


def test_eta_positive_under_uniform_expansion():
    f1, y1 = features_at(T1)
    assert diffusion_index(f1, y1, 3 * f1, y1, 0, [1, 2]) == pytest.approx(2.0)


def test_verdict():
    assert verdict(-0.1, 0.2) == "systematic diffusion"
    assert verdict(-0.1, -0.2) == "no systematic diffusion"
    assert verdict(0.1, 0.2) == "no systematic diffusion"
    assert verdict(0.0, 0.2) == "no systematic diffusion"


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    from lskd_bench.runners.grid import resolve_config, run_grid

    out = tmp_path_factory.mktemp("runs")
    cfg = resolve_config(
        "digits",
        {},
        {
            "grid": {"alphas": [0.0, 0.1], "temperatures": [1.0, 3.0], "seeds": [0]},
            "teacher": {"epochs": 2},
            "student": {"epochs": 2},
        },
    )
    run_grid(cfg, out, progress=False)
    return out


@pytest.mark.slow
def test_visualize_writes_png_of_expected_size(digits_runs, cli):
    from PIL import Image

    png = digits_runs / "proj.png"
    rc, _out, err = cli("visualize", "--runs", str(digits_runs), "--out", str(png))  # digits' default: 3, 5, 8
    assert rc == 0, err
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (900, 600)  # 3 columns (teacher, T=1, T=3) x 2 alphas, 300 px each


@pytest.mark.slow
def test_analyze_cli_table(digits_runs, cli):
    rc, out, err = cli("analyze", "--runs", str(digits_runs), "--target", "3", "--out", str(digits_runs / "eta"))
    assert rc == 0, err
    assert "| α | target class | Train S1 | Train S2 | Val S1 | Val S2 | verdict |" in out
    assert "S1 (similar) = 2 5; S2 (dissimilar) = 0 1 4 6 7 8 9" in out
    csv_lines = (digits_runs / "eta.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[1].startswith("digits,cnn_tiny,kd,0,0.0,1.0,3.0,3,")
    rc, _, err = cli("analyze", "--runs", str(digits_runs), "--target", "3", "--t2", "64")
    assert rc == 2 and "no finished student at alpha 0, T 64" in err
    rc, _, err = cli("analyze", "--runs", str(digits_runs), "--target", "nine")
    assert rc == 2 and "unknown class 'nine'" in err


@pytest.mark.slow
def test_analyze_and_visualize_say_which_results_they_skipped(digits_runs, cli, tmp_path):
    """An unreadable result.json beside the grid is skipped with a warning naming it (as the leaderboard does),
    not silently."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(digits_runs, runs)
    torn = runs / "digits" / "stray_cell" / "result.json"
    torn.parent.mkdir(parents=True)
    torn.write_text('{"cell": {"task": "dig', encoding="utf-8")
    rc, _, err = cli("analyze", "--runs", str(runs), "--target", "3", "--out", str(tmp_path / "eta"))
    assert rc == 0, err
    assert f"warning: skipped: {torn} (" in err
    rc, _, err = cli("visualize", "--runs", str(runs), "--out", str(tmp_path / "p.png"))
    assert rc == 0, err
    assert err.count(f"warning: skipped: {torn} (") == 1
