"""Feature methods whose public reference is torchdistill (yoshitomo-matsubara/torchdistill@3e4373c,
``torchdistill/losses/mid_level.py`` and the sample configs ``configs/sample/ilsvrc2012/*/*.yaml``): CCKD's
kernel form, DIST+, SRD, PAD.

torchdistill composes a run's loss from its config's ``criterion.kwargs.sub_terms`` (a weighted sum); each
method's defaults here are those terms and weights, cited by config line. Parity is measured in the test module
(tests/methods/test_feat_torchdistill.py) against the reference's ``forward`` transcribed op for op, on the same
random inputs and the same weights, in float64: "loss / gradient" is max|ours - theirs| / max|theirs|, the
gradient with respect to the student's inputs and the method's own parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import Field
from . import METHODS, FeatureMethod, Needs, Probe, feature_section
from .feat_common import pool_to_smaller
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

    That config trains at lr 1e-4 (line 146), and the kernel of unnormalised outputs is a degree-2 polynomial of
    their dot products: at the CIFAR-100 recipe's lr 0.05 (resnet32x4 -> resnet8x4, the fixture data) the loss
    is inf at the second update. ``normalize: true`` L2-normalises both outputs first (the kernel then the Taylor
    expansion of the paper's RBF of unit vectors, bounded), not torchdistill's loss; off by default.

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
        normalize=Field(
            bool,
            False,
            "L2-normalise both linear outputs before the kernel (not torchdistill's: the paper's RBF of unit "
            "vectors, bounded; torchdistill's recipe trains at lr 1e-4, and unnormalised the kernel diverges at "
            "the CIFAR recipes' lr)",
        ),
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
        if p["normalize"]:
            z_s, z_t = F.normalize(z_s, dim=1), F.normalize(z_t, dim=1)
        c_s = cc_matrix(z_s, p["kernel"], p["gamma"], p["max_p"])
        c_t = cc_matrix(z_t, p["kernel"], p["gamma"], p["max_p"])
        n = z_t.shape[0]
        out = {"ce": self.cross_entropy(student, targets), "feat": p["beta"] * torch.dist(c_s, c_t, 2) / (n * n)}
        if p["kl_weight"]:
            out["kl"] = p["kl_weight"] * kd_kl(student["logits"], teacher["logits"], p["kl_T"])
        return out


# -- DIST+ --------------------------------------------------------------------------------------------------------
DISTP_CFG = "configs/sample/ilsvrc2012/dist_plus/resnet18_from_resnet34.yaml"


def _pearson_loss(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 - mean_i pearson(a_i, b_i)`` over the rows, the cosine of centred rows with torch's
    ``cosine_similarity`` (torchdistill ``DISTLoss``, mid_level.py:1637-1642)."""
    return 1 - F.cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps=eps).mean()


def _pool_channels(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two maps (N, C, H, W) at the smaller channel count: the wider one's channels average-pooled in groups."""
    c = min(a.shape[1], b.shape[1])

    def fit(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == c:
            return x
        n, _, h, w = x.shape
        return F.adaptive_avg_pool1d(x.flatten(2).transpose(1, 2), c).transpose(1, 2).reshape(n, c, h, w)

    return fit(a), fit(b)


def dist_plus_parts(
    s_logits: torch.Tensor, t_logits: torch.Tensor, f_s: torch.Tensor, f_t: torch.Tensor, tau: float, eps: float
) -> dict[str, torch.Tensor]:
    """DIST+'s four relations as torchdistill ``DISTPlusLoss`` computes them (mid_level.py:1647-1658, 1838-1859):
    ``inter`` and ``intra``, DIST's at ``tau`` (each x tau^2); ``channel``, the mean over samples and positions of
    the Pearson correlation of the student's and the teacher's channel vectors (as coded there: the correlation
    itself, not 1 minus it); ``spatial``, 1 - the mean over positions of the Pearson correlation across the batch
    of the channel-summed maps."""
    y_s = (_full(s_logits) / tau).softmax(dim=1)
    y_t = (_full(t_logits) / tau).softmax(dim=1)
    f_s, f_t = _full(f_s), _full(f_t)
    cs, ct = f_s - f_s.mean(dim=1, keepdim=True), f_t - f_t.mean(dim=1, keepdim=True)
    num = (cs * ct).sum(dim=1)
    den = torch.sqrt((cs**2).sum(dim=1) * (ct**2).sum(dim=1))
    return {
        "inter": tau**2 * _pearson_loss(y_s, y_t, eps),
        "intra": tau**2 * _pearson_loss(y_s.t(), y_t.t(), eps),
        "channel": (num / (den + eps)).mean(),
        "spatial": _pearson_loss(f_s.sum(dim=1).flatten(1).t(), f_t.sum(dim=1).flatten(1).t(), eps),
    }


@METHODS.register("dist_plus")
class DISTPlus(FeatureMethod):
    """DIST+ (Huang et al., TPAMI 2025) as torchdistill's ``DISTPlusLoss`` (mid_level.py:1784-1859@3e4373c) with
    its sample config (configs/sample/ilsvrc2012/dist_plus/resnet18_from_resnet34.yaml:133-169): ``ce * CE +
    beta * (inter_weight * inter + intra_weight * intra + channel_weight * channel + spatial_weight * spatial)``
    (``dist_plus_parts``) on the logits at DIST's own ``tau`` (the grid's T does not apply) and the last stage of
    each network (the config's ``layer4``, lines 160-163); defaults CE 1 (line 151), beta 2 (line 169), inter 2,
    intra 2, channel 1, spatial 1, tau 1 (lines 164-168), eps 1e-8 (mid_level.py:1825).

    As torchdistill codes it, the channel term is the mean correlation itself (mid_level.py:1845), where the other
    three are 1 minus a correlation: minimising it drives the channel vectors towards anti-correlation. We follow
    the code (parity is the contract); ``channel_form: one_minus`` gives ``1 - correlation`` instead. The two
    maps must have the same channel count and spatial size there (resnet34 -> resnet18); where they differ (the
    digits pair) the wider map's channels are average-pooled in groups and the larger map adaptive-average-pooled
    to the smaller (our deviation, the identity where the shapes agree).

    parity: yoshitomo-matsubara/torchdistill@3e4373c torchdistill/losses/mid_level.py:1637-1658 and 1838-1859,
    transcribed op for op in tests/methods/test_feat_torchdistill.py::
    test_dist_plus_equals_torchdistill_loss_and_gradient (float64, N 16, K 10, maps (16, 12, 4, 4), tau 1 and 4,
    three seeds): the DIST+ term and its gradient (student logits and map) max relative difference 0.0e+00 /
    0.0e+00 (the CE is ``FeatureMethod.cross_entropy``'s, in float32 as for every feature method)."""

    description = "DIST+ (Huang et al. 2025, torchdistill): DIST's relations + channel and spatial map relations"
    needs = Needs(student=("logits", "last_stage"), teacher=("logits", "last_stage"))
    params = feature_section(
        "DIST+",
        2.0,
        f"torchdistill {DISTP_CFG}:169",
        inter_weight=Field(float, 2.0, f"weight of the inter-class relation (DISTPlusLoss beta; {DISTP_CFG}:164)",
                           min=0.0, max=1e6),
        intra_weight=Field(float, 2.0, f"weight of the intra-class relation (gamma; {DISTP_CFG}:165)", min=0.0,
                           max=1e6),
        channel_weight=Field(float, 1.0, f"weight of the channel relation (iota; {DISTP_CFG}:166)", min=0.0,
                             max=1e6),
        spatial_weight=Field(float, 1.0, f"weight of the spatial relation (kappa; {DISTP_CFG}:167)", min=0.0,
                             max=1e6),
        tau=Field(float, 1.0, f"DIST's temperature ({DISTP_CFG}:168)", min=0.0, min_exclusive=True, max=1e3),
        channel_form=Field(
            str,
            "torchdistill",
            "the channel term: 'torchdistill', the mean correlation as coded there (mid_level.py:1845); "
            "'one_minus', 1 - it, as the other three relations",
            choices=("torchdistill", "one_minus"),
        ),
    )  # fmt: skip

    def loss(self, student, targets, teacher, ctx):
        p = self.p
        f_s, f_t = _pool_channels(*pool_to_smaller(student.stages()[-1], teacher.stages()[-1]))
        r = dist_plus_parts(student["logits"], teacher["logits"], f_s, f_t, p["tau"], 1e-8)
        channel = 1 - r["channel"] if p["channel_form"] == "one_minus" else r["channel"]
        feat = (
            p["inter_weight"] * r["inter"]
            + p["intra_weight"] * r["intra"]
            + p["channel_weight"] * channel
            + p["spatial_weight"] * r["spatial"]
        )
        return {"ce": self.cross_entropy(student, targets), "feat": p["beta"] * feat}


# -- SRD ----------------------------------------------------------------------------------------------------------
SRD_CFG = "configs/sample/ilsvrc2012/srd/resnet18_from_resnet34.yaml"


@METHODS.register("srd")
class SRD(FeatureMethod):
    """SRD, "Understanding the role of the projector in knowledge distillation" (Miles & Mikolajczyk, AAAI 2024),
    as torchdistill's ``SRDLoss`` (mid_level.py:1659-1721@3e4373c) and ``SRDModelWrapper``
    (torchdistill/models/wrapper.py:863-913) with the sample config (configs/sample/ilsvrc2012/srd/
    resnet18_from_resnet34.yaml:104-190; the official roymiles/aaai2024 config has the same loss): the last stage
    of each network averaged over its positions; the student's through a trainable linear projector to the
    teacher's width (lines 135-137) then a BatchNorm1d without affine parameters, eps 1e-4 (lines 131-134), the
    teacher's through its own such BatchNorm1d (lines 112-115); loss ``ce * CE + beta * (2 * log(sum |z_s -
    z_t|^exponent) + KL(softmax(t/T) || softmax(s/T)))``, the KL batch-mean at SRD's own ``temperature``, no T^2
    (the grid's T does not apply). Defaults CE 1 (line 174), beta 1 (line 190), exponent 4 (line 187),
    temperature 1 (line 188).

    Both BatchNorm1d layers normalise with the batch's statistics while training (torchdistill never puts the
    auxiliary wrappers in eval mode: a module is created in training mode, and core/interfaces/pre_epoch_proc.py:22
    sets only the student's); their running statistics are the method's buffers, saved with it.

    parity: yoshitomo-matsubara/torchdistill@3e4373c torchdistill/losses/mid_level.py:1710-1721 and
    torchdistill/models/wrapper.py:908-913, transcribed op for op in tests/methods/test_feat_torchdistill.py::
    test_srd_equals_torchdistill_loss_gradient_and_state (float64, N 16, K 10, maps (16, 12, 4, 4) -> (16, 20, 2, 2),
    the same projector weights, three seeds, exponent 4 and 2): loss and gradient (student logits and map,
    projector) max relative difference 0.0e+00 / 2.2e-16; the BatchNorm running statistics equal."""

    description = "SRD (Miles & Mikolajczyk 2024, torchdistill): 2*log(sum|BN(P(z_s))-BN(z_t)|^4) + KL, projector"
    needs = Needs(student=("logits", "last_stage"), teacher=("logits", "last_stage"))
    params = feature_section(
        "SRD",
        1.0,
        f"torchdistill {SRD_CFG}:190",
        exponent=Field(float, 4.0, f"exponent of the feature distance (SRDLoss exponent; {SRD_CFG}:187)", min=0.0,
                       min_exclusive=True, max=64.0),
        temperature=Field(float, 1.0, f"temperature of SRD's KL term ({SRD_CFG}:188)", min=0.0, min_exclusive=True,
                          max=1e3),
    )  # fmt: skip

    def setup(self, probe: Probe) -> None:
        c_s, c_t = probe.s.stages()[-1].shape[1], probe.t.stages()[-1].shape[1]
        self.projector = nn.Linear(c_s, c_t)
        self.norm_s = nn.BatchNorm1d(c_t, eps=1e-4, affine=False)
        self.norm_t = nn.BatchNorm1d(c_t, eps=1e-4, affine=False)

    def loss(self, student, targets, teacher, ctx):
        z_s = self.norm_s(self.projector(_full(student.stages()[-1]).mean(-1).mean(-1)))
        z_t = self.norm_t(_full(teacher.stages()[-1]).mean(-1).mean(-1))
        feat = torch.log((z_s - z_t).abs().pow(self.p["exponent"]).sum())
        T = self.p["temperature"]
        kl = kd_kl(student["logits"], teacher["logits"], T)
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * (2 * feat + kl)}


# -- PAD ----------------------------------------------------------------------------------------------------------
PAD_CFG = "configs/sample/ilsvrc2012/pad/resnet18_from_resnet34.yaml"


def pad_l2(z_s: torch.Tensor, z_t: torch.Tensor, log_var: torch.Tensor, eps: float) -> torch.Tensor:
    """PAD's L2 term (torchdistill ``PADL2Loss.forward``, mid_level.py:1316-1325, reduction 'mean'): per sample,
    the mean over the features of ``(z_t - z_s)**2 / (eps + exp(log_var)) + log_var``, then the batch mean."""
    return torch.mean((z_t - z_s) ** 2 / (eps + torch.exp(log_var)) + log_var, dim=1).mean()


@METHODS.register("pad")
class PAD(FeatureMethod):
    """Prime-Aware Adaptive Distillation (Zhang et al., ECCV 2020) as torchdistill's ``PADL2Loss``
    (mid_level.py:1263-1325@3e4373c) with ``VarianceBranch4PAD`` (torchdistill/models/wrapper.py:607-651) and the
    sample config's second stage (configs/sample/ilsvrc2012/pad/resnet18_from_resnet34.yaml:170-224): the
    student's and the teacher's ``embedding`` (the config's ``avgpool`` outputs, lines 216-219), a trainable
    variance branch on the student's embedding, ``Linear`` then ``BatchNorm1d`` (wrapper.py:636-639; batch
    statistics while training, as SRD's), whose output is each feature's log-variance; loss ``ce * CE + beta *
    pad_l2``: CE 1 (line 211), beta 1 (line 224), eps 1e-6 (line 222).

    Deviations, stated: that config's first stage (lines 80-169: 10 epochs of CE + MSE of the embeddings, which
    also initialise the variance branch's checkpoint) is not run: lskd-bench trains the second stage's loss from
    the first epoch. torchdistill needs equal embedding widths (resnet34 -> resnet18: 512); where they differ a
    trainable linear connector (with bias) maps the student's embedding to the teacher's width and the variance
    branch maps the student's embedding to that width too; where they agree there is no connector (torchdistill's
    loss exactly).

    parity: yoshitomo-matsubara/torchdistill@3e4373c torchdistill/losses/mid_level.py:1316-1325 and
    torchdistill/models/wrapper.py:636-639, 649-651, transcribed op for op in
    tests/methods/test_feat_torchdistill.py::test_pad_equals_torchdistill_loss_gradient_and_state (float64, N 16,
    embeddings 24 -> 24, the same variance-branch weights, three seeds): loss and gradient (student embedding,
    variance branch) max relative difference 0.0e+00 / 0.0e+00; the BatchNorm running statistics equal."""

    description = "PAD (Zhang et al. 2020, torchdistill): embedding L2 over a learned per-sample variance + log-var"
    needs = Needs(student=("logits", "embedding"), teacher=("embedding",))
    params = feature_section(
        "PAD",
        1.0,
        f"torchdistill {PAD_CFG}:224",
        eps=Field(float, 1e-6, f"added to the variance (PADL2Loss eps; {PAD_CFG}:222)", min=0.0, max=1.0),
    )

    def setup(self, probe: Probe) -> None:
        d_s, d_t = probe.s["embedding"].flatten(1).shape[1], probe.t["embedding"].flatten(1).shape[1]
        self.connector = nn.Linear(d_s, d_t) if d_s != d_t else None
        self.var_estimator = nn.Sequential(nn.Linear(d_s, d_t), nn.BatchNorm1d(d_t))

    def loss(self, student, targets, teacher, ctx):
        z_s = _full(student["embedding"]).flatten(1)
        log_var = self.var_estimator(z_s)
        if self.connector is not None:
            z_s = self.connector(z_s)
        feat = pad_l2(z_s, _full(teacher["embedding"]).flatten(1), log_var, self.p["eps"])
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}
