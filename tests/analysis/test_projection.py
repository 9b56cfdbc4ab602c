"""``lskd_bench.analysis.projection``: the 2-D projection of penultimate features (the paper's and the official
code's)."""

from __future__ import annotations

import numpy as np
import pytest

from lskd_bench.analysis.projection import PCA2, official_projection, pca_2d, project, projection_basis, with_bias


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
