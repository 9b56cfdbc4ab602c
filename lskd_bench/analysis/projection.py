"""Penultimate-layer projection (Algorithm 1 of Chandrasegaran et al.; Müller et al., 2019), as the official
code does it (sutd-visual-computing-group/LS-KD-compatibility@fb2eb12,
src/visualization/alpha-LS-KD_imagenet_centroids.py):

1. features get a constant 1 appended (the bias input, :79-80);
2. an orthonormal basis of the three classes' final-layer rows ``[w_k | b_k]`` by QR (:176-180);
3. features and class centroids are projected onto it (:192-198);
4. PCA to 2-D is fitted on the *training* projections together with the centroids (:203-206) and the same
   PCA is applied to the validation points (:208-210).

The official script indexes the biases with the plotted classes' positions (0, 1, 2) instead of their class
ids (:178); lskd-bench uses the biases of the three plotted classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def with_bias(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    return np.concatenate([f, np.ones((len(f), 1))], axis=1)


def projection_basis(
    head_weight: np.ndarray, classes: Sequence[int], head_bias: np.ndarray | None = None
) -> np.ndarray:
    """Orthonormal basis (D' x 3) of the span of the three classes' head rows: ``[w_k | b_k]`` (D + 1) when the
    bias is given, ``w_k`` (D) otherwise."""
    rows = np.asarray(head_weight, dtype=np.float64)[list(classes)]
    if head_bias is not None:
        rows = np.concatenate([rows, np.asarray(head_bias, dtype=np.float64)[list(classes)][:, None]], axis=1)
    q, r = np.linalg.qr(rows.T)
    if np.min(np.abs(np.diag(r))) < 1e-10 * max(np.abs(r).max(), 1e-30):
        raise ValueError(f"final-layer weights of classes {list(classes)} are linearly dependent")
    return q


def project(features: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Coordinates of the features in the basis (N x 3)."""
    return np.asarray(features, dtype=np.float64) @ basis


@dataclass
class PCA2:
    """Two principal components of a point set (centre + axes), applicable to other points."""

    mean: np.ndarray
    axes: np.ndarray  # 2 x d

    @classmethod
    def fit(cls, points: np.ndarray) -> PCA2:
        mean = points.mean(axis=0)
        _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
        return cls(mean, vt[:2])

    def transform(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points) - self.mean) @ self.axes.T


def pca_2d(points: np.ndarray) -> np.ndarray:
    """Centre the points and keep their two principal components (N x 2)."""
    return PCA2.fit(points).transform(points)


def centroids(points: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    return np.stack([points[labels == k].mean(axis=0) for k in classes])


def official_projection(
    train: tuple[np.ndarray, np.ndarray],
    head_weight: np.ndarray,
    head_bias: np.ndarray,
    classes: Sequence[int],
    others: Sequence[tuple[np.ndarray, np.ndarray]] = (),
):
    """The official algorithm for one model: ``train`` and each of ``others`` are (features, labels) of the
    three classes' samples. Returns, for train then each other split, (2-D points, 2-D class centroids), all
    through the PCA fitted on the train projections and train centroids."""
    basis = projection_basis(head_weight, classes, head_bias)
    out = []
    fitted: PCA2 | None = None
    for feats, labels in (train, *others):
        proj = project(with_bias(feats), basis)
        cents = centroids(proj, labels, classes)
        if fitted is None:
            fitted = PCA2.fit(np.concatenate([proj, cents]))
        out.append((fitted.transform(proj), fitted.transform(cents)))
    return out
