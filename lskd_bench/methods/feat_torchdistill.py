"""Feature methods whose public reference is torchdistill (yoshitomo-matsubara/torchdistill@3e4373c,
``torchdistill/losses/mid_level.py`` and the sample configs ``configs/sample/ilsvrc2012/*/*.yaml``): CCKD's
kernel form.

torchdistill composes a run's loss from its config's ``criterion.kwargs.sub_terms`` (a weighted sum); each
method's defaults here are those terms and weights, cited by config line. Parity is measured in the test module
(tests/methods/test_feat_torchdistill.py) against the reference's ``forward`` transcribed op for op, on the same
random inputs and the same weights, in float64: "loss / gradient" is max|ours - theirs| / max|theirs|, the
gradient with respect to the student's inputs and the method's own parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..schema import Field
from . import METHODS, FeatureMethod, Needs, Probe, feature_section
from .losses import kd_kl

CCKD_CFG = "configs/sample/ilsvrc2012/cckd/resnet18_from_resnet50.yaml"


def _full(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def cc_matrix(z: torch.Tensor, kernel: str, gamma: float, max_p: int) -> torch.Tensor:
    """CCKD's batch correlation matrix of the rows of ``z`` (torchdistill ``CCKDLoss``, mid_level.py:757-772):
    ``bilinear``, ``z z^T``; ``gaussian``, the order-``max_p`` Taylor expansion of ``exp(-2 gamma + 2 gamma z_i .
    z_j)``, ``exp(-2 gamma) * sum_{p=0..P} (2 gamma)^p / p! * (z_i . z_j)^p`` (the RBF ``exp(-gamma |z_i - z_j|^2)``
    of unit rows; torchdistill does not normalise them, nor do we)."""
    m = z @ z.t()
    if kernel == "bilinear":
        return m
    k = 1 + (2 * gamma) * m
    for p in range(2, max_p + 1):
        k = k + ((2 * gamma) ** p) / math.factorial(p) * m**p
    return k * math.exp(-2 * gamma)


@METHODS.register("cckd")
class CCKD(FeatureMethod):
    """Correlation congruence (Peng et al., ICCV 2019) in torchdistill's kernel form (``CCKDLoss``,
    mid_level.py:716-788@3e4373c): both networks' ``embedding`` (the config's ``model.avgpool`` output) through a
    trainable linear layer each (``Linear4CCKD``, torchdistill/models/wrapper.py:379-425; 128 outputs with bias,
    config lines 110-136; the teacher's layer is trained too, lines 121-122), then ``||C_s - C_t||_F / N^2`` for
    the batch correlation matrices of the two (``cc_matrix``; a Gaussian kernel of order 2, gamma 0.4, lines
    176-179), weight beta 0.003 (line 181). lskd-bench's ``cc`` is RepDistiller's other form of the same paper.

    The config's other term is torchdistill's ``KDLoss`` with ``alpha: 0`` and temperature 1, weight 1 (lines
    158-169), which with alpha 0 returns the KL alone, no cross-entropy (mid_level.py:185-186): so the defaults are
    ``ce`` 0, ``kl_weight`` 1 at ``kl_T`` 1 (KL(softmax(t/T) || softmax(s/T)), batch mean, no T^2 as there). As
    published the config passes ``kernel_params: {key: ...}`` where the class reads ``kernel_config['type']``
    (mid_level.py:745-749): the values are the config's, the wiring ours.

    parity: yoshitomo-matsubara/torchdistill@3e4373c torchdistill/losses/mid_level.py:757-788 (+ Linear4CCKD's
    linear layers, the same weights), transcribed op for op in
    tests/methods/test_feat_torchdistill.py::test_cckd_equals_torchdistill_loss_and_gradient (float64, N 16,
    embeddings 24 / 40 wide, both kernels, three seeds): loss and gradient (student embedding, both linear
    layers) max relative difference 4.2e-16 / 1.3e-15 (the
    reference multiplies row by row, we the whole matrix at once: BLAS rounding)."""

    description = (
        "CCKD kernel form (Peng et al. 2019, torchdistill): ||C_s-C_t||_F/N^2 of Gaussian-kernel batch correlations"
    )
    needs = Needs(student=("logits", "embedding"), teacher=("logits", "embedding"))
    params = feature_section(
        "CCKD (kernel form)",
        0.003,
        f"torchdistill {CCKD_CFG}:181",
        feat_dim=Field(int, 128, f"width of both linear layers (torchdistill {CCKD_CFG}:115,135)", min=1, max=1 << 16),
        kernel=Field(
            str,
            "gaussian",
            f"the correlation kernel (torchdistill {CCKD_CFG}:177)",
            choices=("gaussian", "bilinear"),
        ),
        gamma=Field(float, 0.4, f"the Gaussian kernel's gamma ({CCKD_CFG}:178)", min=0.0, max=1e3),
        max_p=Field(int, 2, f"order of the Gaussian kernel's Taylor expansion ({CCKD_CFG}:179)", min=0, max=16),
        kl_weight=Field(
            float,
            1.0,
            f"weight of the config's KL term (torchdistill KDLoss, alpha 0: the KL only; {CCKD_CFG}:169)",
            min=0.0,
            max=1e6,
        ),
        kl_T=Field(
            float,
            1.0,
            f"temperature of that KL term ({CCKD_CFG}:166)",
            min=0.0,
            min_exclusive=True,
            max=1e3,
        ),
    ).extend(
        {
            "ce": Field(
                float,
                0.0,
                f"weight of the cross-entropy on the labels (0: the config's KDLoss with alpha 0 has none; "
                f"mid_level.py:185-186, {CCKD_CFG}:167)",
                min=0.0,
                max=1e6,
            )
        }
    )

    def setup(self, probe: Probe) -> None:
        self.linear_s = nn.Linear(probe.s["embedding"].flatten(1).shape[1], self.p["feat_dim"])
        self.linear_t = nn.Linear(probe.t["embedding"].flatten(1).shape[1], self.p["feat_dim"])

    def loss(self, student, targets, teacher, ctx):
        p = self.p
        z_s = self.linear_s(_full(student["embedding"]).flatten(1))
        z_t = self.linear_t(_full(teacher["embedding"]).flatten(1))
        c_s = cc_matrix(z_s, p["kernel"], p["gamma"], p["max_p"])
        c_t = cc_matrix(z_t, p["kernel"], p["gamma"], p["max_p"])
        n = z_t.shape[0]
        out = {"ce": self.cross_entropy(student, targets), "feat": p["beta"] * torch.dist(c_s, c_t, 2) / (n * n)}
        if p["kl_weight"]:
            out["kl"] = p["kl_weight"] * kd_kl(student["logits"], teacher["logits"], p["kl_T"])
        return out
