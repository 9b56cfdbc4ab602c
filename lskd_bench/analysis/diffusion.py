"""The diffusion index of Chandrasegaran et al. (ICML 2022), computed on class centroids.

    eta(T1, T2; pi, S) = 1/|S| * sum_{k in S} [d(c_pi(T2), c_k(T2)) - d(c_pi(T1), c_k(T1))] / d(c_pi(T1), c_k(T1))

c_k(T) is the centroid (mean) of the penultimate-layer features of class k for the student distilled
at temperature T, and d the Euclidean distance between centroids, in the full penultimate space with no
other normalisation than the division by the T1 distance in the formula. eta(S) < 0: the target
class moved (relatively) closer to the classes of S as T grew from T1 to T2.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def class_centroids(features: np.ndarray, labels: np.ndarray, classes: Iterable[int]) -> dict[int, np.ndarray]:
    """Mean feature vector of each class in ``classes`` (ValueError if one has no sample)."""
    out = {}
    for k in classes:
        mask = labels == k
        if not mask.any():
            raise ValueError(f"class {k} has no samples")
        out[int(k)] = features[mask].astype(np.float64).mean(axis=0)
    return out


def diffusion_index(
    feats_t1: np.ndarray,
    labels_t1: np.ndarray,
    feats_t2: np.ndarray,
    labels_t2: np.ndarray,
    target: int,
    group: Sequence[int],
) -> float:
    """eta(T1, T2; target, group) from the features of the T1 and T2 students."""
    group = [int(k) for k in group if int(k) != int(target)]
    if not group:
        raise ValueError("the class group must contain at least one class other than the target")
    c1 = class_centroids(feats_t1, labels_t1, [target, *group])
    c2 = class_centroids(feats_t2, labels_t2, [target, *group])
    rel = []
    for k in group:
        d1 = float(np.linalg.norm(c1[target] - c1[k]))
        d2 = float(np.linalg.norm(c2[target] - c2[k]))
        if d1 == 0.0:
            raise ValueError(f"centroids of classes {target} and {k} coincide at T1")
        rel.append((d2 - d1) / d1)
    return float(np.mean(rel))


def verdict(eta_similar: float, eta_dissimilar: float) -> str:
    """Systematic diffusion: the target moves towards similar classes and away from dissimilar ones."""
    if eta_similar < 0 and eta_dissimilar > 0:
        return "systematic diffusion"
    return "no systematic diffusion"
