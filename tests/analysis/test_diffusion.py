"""Diffusion index, projection, verdict, hierarchy-based class choice, the PNG and the analyze CLI."""

from __future__ import annotations

import numpy as np
import pytest

from lskd_bench.analysis.diffusion import class_centroids, diffusion_index, verdict
from lskd_bench.analysis.projection import PCA2, official_projection, pca_2d, project, projection_basis, with_bias
from lskd_bench.hierarchy import ancestors, groups_to_parents, lca_depth, similar_and_dissimilar


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


def test_projection_keeps_distances_of_features_in_the_span():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(10, 16))  # K x D head weight
    classes = [2, 5, 7]
    coeffs = rng.normal(size=(50, 3))
    feats = coeffs @ W[classes]  # every feature lies in span{w_2, w_5, w_7}
    q = projection_basis(W, classes)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    p = project(feats, q)
    d_orig = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    d_proj = np.linalg.norm(p[:, None] - p[None], axis=-1)
    np.testing.assert_allclose(d_proj, d_orig, rtol=1e-9, atol=1e-9)
    # PCA of points already on a plane keeps their distances too
    flat = coeffs.copy()
    flat[:, 2] = 0
    p2 = pca_2d(project(flat @ W[classes], q))
    np.testing.assert_allclose(
        np.linalg.norm(p2[:, None] - p2[None], axis=-1),
        np.linalg.norm((flat @ W[classes])[:, None] - (flat @ W[classes])[None], axis=-1),
        rtol=1e-9,
        atol=1e-9,
    )


def test_official_projection_uses_bias_rows_and_the_train_pca_for_val():
    rng = np.random.default_rng(1)
    K, D = 6, 8
    W, b = rng.normal(size=(K, D)), rng.normal(size=K)
    classes = [4, 1, 5]
    q = projection_basis(W, classes, b)
    assert q.shape == (D + 1, 3)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    rows = np.concatenate([W[classes], b[classes][:, None]], axis=1)
    np.testing.assert_allclose(q @ (q.T @ rows.T), rows.T, atol=1e-10)  # spans exactly the [w | b] rows
    b2 = b.copy()
    b2[0] += 10.0  # the bias of a class that is not plotted (the official code's index bug would read it)
    np.testing.assert_allclose(projection_basis(W, classes, b2), q)
    feats = rng.normal(size=(30, D))
    labels = np.repeat(classes, 10)
    val = rng.normal(size=(9, D))
    val_labels = np.repeat(classes, 3)
    (tr_pts, tr_c), (va_pts, va_c) = official_projection((feats, labels), W, b, classes, [(val, val_labels)])
    proj = with_bias(feats) @ q
    cents = np.stack([proj[labels == k].mean(0) for k in classes])
    pca = PCA2.fit(np.concatenate([proj, cents]))  # fitted on train projections + centroids
    np.testing.assert_allclose(tr_pts, pca.transform(proj), atol=1e-10)
    np.testing.assert_allclose(tr_c, pca.transform(cents), atol=1e-10)
    vproj = with_bias(val) @ q
    np.testing.assert_allclose(va_pts, pca.transform(vproj), atol=1e-10)  # the train PCA, reused
    np.testing.assert_allclose(
        va_c, pca.transform(np.stack([vproj[val_labels == k].mean(0) for k in classes])), atol=1e-10
    )


def test_projection_rejects_dependent_weights():
    W = np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0]])
    with pytest.raises(ValueError, match="linearly dependent"):
        projection_basis(W, [0, 1, 2])


HIER = {
    # animal -> {bird -> {sparrow, finch}, dog -> {terrier, hound}}, vehicle -> {car}
    "bird": "animal", "dog": "animal", "animal": "entity", "vehicle": "entity",
    "sparrow": "bird", "finch": "bird", "terrier": "dog", "hound": "dog", "car": "vehicle",
}  # fmt: skip
CLASSES = ["sparrow", "finch", "terrier", "hound", "car"]


def test_hierarchy_selection():
    assert ancestors("finch", HIER) == ["bird", "animal", "entity"]
    assert lca_depth("sparrow", "finch", HIER) == 2 and lca_depth("sparrow", "car", HIER) == 0
    assert similar_and_dissimilar("sparrow", CLASSES, HIER) == (["finch"], ["car"])
    # car has no sibling: every other class is equally far, so none counts as dissimilar
    assert similar_and_dissimilar("car", CLASSES, HIER) == (["sparrow", "finch", "terrier", "hound"], [])
    parents = groups_to_parents({"loops": ["0", "6"], "straight": ["1", "7"]})
    assert similar_and_dissimilar("0", ["0", "1", "6", "7"], parents) == (["6"], ["1", "7"])


def test_hierarchy_cycle_is_an_error():
    with pytest.raises(ValueError, match="cycle"):
        ancestors("a", {"a": "b", "b": "a"})


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


def test_visualize_writes_png_of_expected_size(digits_runs, cli):
    from PIL import Image

    png = digits_runs / "proj.png"
    rc, out, err = cli("visualize", "--runs", str(digits_runs), "--out", str(png))  # digits' default: 3, 5, 8
    assert rc == 0, err
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (900, 600)  # 3 columns (teacher, T=1, T=3) x 2 alphas, 300 px each


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
