"""Feature methods of RepDistiller's CIFAR-100 benchmark (HobbitLong/RepDistiller@b84f547,
``distiller_zoo/*.py``, ``train_student.py``, ``helper/loops.py``): FitNet, AT, SP, CC, VID, RKD, PKT, NST, KDSVD.

Each loss is ``ce * CE(s, y) + beta * L_feat`` with RepDistiller's default weights (its ``-r 1 -a 0 -b BETA``,
``scripts/run_cifar_distill.sh``); the student's CE is computed as in ``train_student.py``. Which features each
method reads is RepDistiller's ``helper/loops.py`` ``train_distill`` (lines 126-170): ``feat[1:-1]`` is
``Outputs.stages()``, ``feat[-2]`` the last stage, ``feat[-1]`` the ``embedding``.

Where the two networks differ in stage count (the digits pair: 3 vs 2), the stage-wise methods (AT, NST, VID)
pair the stages both have, by index (``feat_common.paired``; RepDistiller zips the two lists); where a pair differs
in spatial size, the larger map is adaptive-average-pooled to the smaller one, as RepDistiller's AT, NST and VID
do (``feat_common.pool_to_smaller``; RepDistiller pools to a square ``(H, H)``, the same for its square maps).

Parity with the authors' code (extracted from RepDistiller@b84f547 into a scratch folder, never part of this
repository) was measured on random non-negative tensors, the same inputs for both and, for FitNet, VID and CC, the
same initial weights: three seeds of small maps (N 8; equal sizes, and maps of unequal size that are pooled) and
ResNet-8x4-sized stages (N 16, 64/128/256 channels at 32/16/8) and embeddings (N 64, 256-d), in float32 and float64.
Each method's docstring records "loss / gradient" as the max over those runs of max|ours - theirs| / max|theirs|,
the gradient with respect to the student's features (and the method's own parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..outputs import Outputs
from ..schema import Field
from . import METHODS, FeatureMethod, Needs, Probe, feature_section
from .feat_common import paired, pool_to_smaller

SCRIPT = "scripts/run_cifar_distill.sh"  # RepDistiller's per-method -b, one line per method


class ConvReg(nn.Module):
    """FitNet's regressor from a student map to a teacher map (RepDistiller ``models/util.py`` ConvReg): a
    stride-2 3x3 conv (student twice the size), a 4x4 transposed conv (half the size) or a (1+dH)x(1+dW) conv,
    then BN and ReLU."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], use_relu: bool = True):
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = s_shape, t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise UsageError(
                f"FitNet cannot regress a student map of shape {tuple(s_shape)} onto a teacher map of "
                f"shape {tuple(t_shape)} (the student map is smaller and not half the size)"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


@METHODS.register("fitnet")
class FitNet(FeatureMethod):
    """FitNets (Romero et al., ICLR 2015), as RepDistiller's ``HintLoss`` (``distiller_zoo/FitNet.py:12``): MSE
    between ``ConvReg(student stage_h)`` and the teacher's ``stage_h`` (``--hint_layer`` 2,
    ``train_student.py:88``; ``helper/loops.py:126-129``), weight beta 100 (``scripts/run_cifar_distill.sh:7``).
    RepDistiller trains the regressor jointly with the student (its two-stage variant is not the benchmark's).

    parity: HobbitLong/RepDistiller@b84f547 distiller_zoo/FitNet.py:12 + models/util.py:131 (ConvReg, same
    weights), loss and gradient (student maps, regressor) max relative difference 0.0e+00 / 0.0e+00 (float32 and
    float64)."""

    description = "FitNet hints: ce*CE + beta*MSE(ConvReg(s_stage), t_stage), beta 100, stage 2"
    needs = Needs(student=("logits", "stage2"), teacher=("stage2",))  # the default hint_layer's
    params = feature_section(
        "FitNet",
        100.0,
        f"{SCRIPT}:7",
        hint_layer=Field(
            int,
            2,
            "the stage whose output is the hint (RepDistiller --hint_layer: feat[2], the second stage; "
            "train_student.py:88)",
            min=0,
            max=64,
        ),
    )

    def __init__(self, params=None):
        super().__init__(params)
        self.stage = f"stage{self.p['hint_layer']}"
        self.needs = Needs(student=("logits", self.stage), teacher=(self.stage,))

    def setup(self, probe: Probe) -> None:
        self.regressor = ConvReg(tuple(probe.s[self.stage].shape[1:]), tuple(probe.t[self.stage].shape[1:]))

    def loss(self, student, targets, teacher, ctx):
        hint = F.mse_loss(self.regressor(student[self.stage]), teacher[self.stage])
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * hint}


# -- stage-wise losses ------------------------------------------------------------------------------------------


def attention_map(f: torch.Tensor, p: int) -> torch.Tensor:
    """AT's spatial attention of a map (N, C, H, W): the channel mean of ``f**p``, flattened and L2-normalised
    per sample (RepDistiller ``distiller_zoo/AT.py:28-29``)."""
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: int) -> torch.Tensor:
    """Mean squared difference of the two attention maps at the smaller map's size (``AT.py:18-26``)."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def _squared_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over samples and channel pairs of ``<a_i, b_j>**2`` (NST's degree-2 polynomial kernel of unit rows,
    ``NST.py:38-42``) as a batched matrix product (RepDistiller broadcasts an (N, C, C, HW) product)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Neuron selectivity transfer: squared MMD with the kernel ``k(x, y) = <x, y>**2`` between the channels of
    the two maps, each channel's spatial vector L2-normalised; the teacher-teacher term is a constant
    (``NST.py:16-36``, ``full_loss = True``). Computed in float64: the loss is a small difference of large kernel
    means, and float32 loses about 1e-6 of its gradient to rounding (RepDistiller's float32 sums as much)."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    s = F.normalize(f_s.flatten(2).double(), dim=2)
    t = F.normalize(f_t.flatten(2).double(), dim=2)
    mmd = _squared_cosines(t, t).detach() + _squared_cosines(s, s) - 2 * _squared_cosines(s, t)
    return mmd.to(f_s.dtype)


def similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """SP: squared Frobenius distance of the row-normalised batch Gram matrices, over ``N**2``
    (``distiller_zoo/SP.py:16-30``)."""
    n = f_s.shape[0]
    s, t = f_s.reshape(n, -1), f_t.reshape(n, -1)
    g_s = F.normalize(s @ s.t(), dim=1)
    g_t = F.normalize(t @ t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (n * n)


def _stagewise(student: Outputs, teacher: Outputs, fn) -> torch.Tensor:
    """The sum of ``fn(student stage, teacher stage)`` over the paired stages (RepDistiller's ``sum(loss_group)``)."""
    terms = [fn(s, t) for s, t in paired(student.stages(), teacher.stages())]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


@METHODS.register("at")
class AT(FeatureMethod):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), as RepDistiller's ``Attention``
    (``distiller_zoo/AT.py``): the sum over paired stages (``feat[1:-1]``, ``helper/loops.py:134-138``) of
    ``mean((a_s - a_t)**2)``, ``a = normalize(mean_c f**p)``, p 2 (``AT.py:11``), beta 1000
    (``scripts/run_cifar_distill.sh:9``).

    parity: HobbitLong/RepDistiller@b84f547 distiller_zoo/AT.py:15, loss and gradient max relative difference
    0.0e+00 / 0.0e+00 (float32 and float64)."""

    description = "attention transfer: ce*CE + beta*sum_stages mean((a_s-a_t)^2), a=normalize(mean_c f^p), beta 1000"
    needs = Needs(student=("logits", "stages"), teacher=("stages",))
    params = feature_section(
        "AT",
        1000.0,
        f"{SCRIPT}:9",
        p=Field(
            int,
            2,
            "the power p of the attention map mean_c f^p (RepDistiller Attention(p=2), distiller_zoo/AT.py:11)",
            min=1,
            max=16,
        ),
    )

    def loss(self, student, targets, teacher, ctx):
        feat = _stagewise(student, teacher, lambda s, t: at_loss(s, t, self.p["p"]))
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}


@METHODS.register("nst")
class NST(FeatureMethod):
    """Neuron selectivity transfer (Huang & Wang, 2017), as RepDistiller's ``NSTLoss`` (``distiller_zoo/NST.py``):
    the sum over paired stages (``feat[1:-1]``, ``helper/loops.py:139-143``) of the squared MMD with the
    polynomial kernel ``<x, y>**2`` between the spatially L2-normalised channels, beta 50
    (``scripts/run_cifar_distill.sh:27``). The kernel means are batched matrix products (RepDistiller
    broadcasts an (N, C_t, C_s, H*W) tensor: same sums, far less memory).

    parity: HobbitLong/RepDistiller@b84f547 distiller_zoo/NST.py:16, loss and gradient max relative difference
    6.0e-07 / 6.4e-07 (float32: RepDistiller's own float32 rounding; ours is 9.5e-09 / 5.8e-08 from RepDistiller
    in float64), 5.6e-16 / 3.1e-15 (float64)."""

    description = "neuron selectivity transfer: ce*CE + beta*sum_stages MMD^2 (kernel <x,y>^2) of channels, beta 50"
    needs = Needs(student=("logits", "stages"), teacher=("stages",))
    params = feature_section("NST", 50.0, f"{SCRIPT}:27")

    def loss(self, student, targets, teacher, ctx):
        feat = _stagewise(student, teacher, nst_loss)
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}


@METHODS.register("sp")
class SP(FeatureMethod):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019), as RepDistiller's ``Similarity``
    (``distiller_zoo/SP.py``) on the last stage of each network (``feat[-2]``, ``helper/loops.py:144-148``; the
    two may differ in shape: each Gram matrix is N x N), beta 3000 (``scripts/run_cifar_distill.sh:11``).

    parity: HobbitLong/RepDistiller@b84f547 distiller_zoo/SP.py:16, loss and gradient max relative difference
    0.0e+00 / 0.0e+00 (float32 and float64)."""

    description = "similarity-preserving KD: ce*CE + beta*||norm(G_t)-norm(G_s)||^2/N^2 on the last stage, beta 3000"
    needs = Needs(student=("logits", "last_stage"), teacher=("last_stage",))  # feat[-2]
    params = feature_section("SP", 3000.0, f"{SCRIPT}:11")

    def loss(self, student, targets, teacher, ctx):
        feat = similarity_loss(student.stages()[-1], teacher.stages()[-1])
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}


# -- VID --------------------------------------------------------------------------------------------------------


class VIDRegressor(nn.Module):
    """VID's Gaussian predictor of a teacher map from a student map (RepDistiller ``distiller_zoo/VID.py:12-36``):
    the mean is three 1x1 convs without bias (ReLU between; middle width ``mid``), the variance per teacher
    channel ``softplus(log_scale) + eps``, ``log_scale`` starting where the variance is ``init_pred_var``."""

    def __init__(self, c_in: int, mid: int, c_out: int, init_pred_var: float, eps: float):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(c_in, mid, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, c_out, kernel_size=1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((c_out,), math.log(math.exp(init_pred_var - eps) - 1.0)))
        self.eps = eps

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """The mean Gaussian negative log-likelihood (without the constant) of ``f_t`` (``VID.py:38-54``)."""
        f_s, f_t = pool_to_smaller(f_s, f_t)
        var = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((self.mean(f_s) - f_t).pow(2) / var + var.log())).mean()


@METHODS.register("vid")
class VID(FeatureMethod):
    """Variational information distillation (Ahn et al., CVPR 2019), as RepDistiller's ``VIDLoss``
    (``distiller_zoo/VID.py``): per paired stage (``feat[1:-1]``, ``helper/loops.py:166-170``) a regressor
    ``VIDLoss(s_channels, t_channels, t_channels)`` (``train_student.py:219-226``: 1x1 convs, the middle width the
    teacher's, learned per-channel variances starting at 5), trained with the student; the sum of their NLLs,
    beta 1 (``scripts/run_cifar_distill.sh:15``). The variance is ``softplus(log_scale) + eps`` (RepDistiller
    writes ``log(1 + exp(.))``: the same values, without its overflow past 88).

    parity: HobbitLong/RepDistiller@b84f547 distiller_zoo/VID.py:38 (same weights), loss and gradient (student
    maps, regressor weights, log_scale) max relative difference 0.0e+00 / 8.2e-08 (float32), 0.0e+00 / 1.5e-16
    (float64)."""

    description = "variational information distillation: ce*CE + beta*sum_stages Gaussian NLL(t | 1x1-conv(s)), beta 1"
    needs = Needs(student=("logits", "stages"), teacher=("stages",))
    params = feature_section(
        "VID",
        1.0,
        f"{SCRIPT}:15",
        init_pred_var=Field(
            float,
            5.0,
            "initial variance of each teacher channel's Gaussian (RepDistiller VIDLoss "
            "init_pred_var, distiller_zoo/VID.py:16)",
            min=0.0,
            min_exclusive=True,
            max=1e6,
        ),
        eps=Field(
            float,
            1e-5,
            "floor added to the variance (RepDistiller VIDLoss eps, distiller_zoo/VID.py:17)",
            min=0.0,
            min_exclusive=True,
            max=1.0,
        ),
    )

    def setup(self, probe: Probe) -> None:
        self.regressors = nn.ModuleList(
            [
                VIDRegressor(s.shape[1], t.shape[1], t.shape[1], self.p["init_pred_var"], self.p["eps"])
                for s, t in paired(probe.s.stages(), probe.t.stages())
            ]
        )

    def loss(self, student, targets, teacher, ctx):
        pairs = paired(student.stages(), teacher.stages())
        feat = self.regressors[0](*pairs[0])
        for reg, (s, t) in zip(self.regressors[1:], pairs[1:]):
            feat = feat + reg(s, t)
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}


# -- losses on the embedding -----------------------------------------------------------------------------------


def correlation_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """CC as RepDistiller restructured it from the authors' code (``distiller_zoo/CC.py:14-17``): with
    ``d = |e_s - e_t|`` per sample, the mean over consecutive samples i of ``<d_i, d_{i+1}>``. A batch of one
    sample has no pair: 0 (RepDistiller's mean of nothing is NaN; its batches never have one sample)."""
    d = (e_s - e_t).abs()
    if len(d) < 2:
        return d.sum() * 0.0
    return (d[:-1] * d[1:]).sum(1).mean()


def _distances(e: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances from ``|a|^2 + |b|^2 - 2<a, b>`` floored at 1e-12 before the square root,
    the diagonal 0 (without gradient): RepDistiller ``RKDLoss.pdist`` (``RKD.py:47-58``)."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=1e-12).sqrt()
    return d * (1.0 - torch.eye(len(e), dtype=d.dtype, device=d.device))


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = _distances(e)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)  # RepDistiller's d > 0: the off-diagonal
    return d / d[off].mean()


def _angles(e: torch.Tensor) -> torch.Tensor:
    """For every triple (i, j, k) the cosine of the angle at i between e_j and e_k (``RKD.py:32-39``)."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # unit[i, j] = (e_j - e_i) / |...|
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()


def rkd_loss(e_s: torch.Tensor, e_t: torch.Tensor, w_d: float, w_a: float) -> torch.Tensor:
    """``w_d * smoothL1(distances) + w_a * smoothL1(angles)``, each set of distances divided by its mean
    (``RKD.py:15-45``). A batch of one sample has no distance: its distance term is 0."""
    s, t = e_s.flatten(1), e_t.flatten(1)
    with torch.no_grad():
        t_angle = _angles(t)
        t_dist = _normalised_distances(t) if len(t) > 1 else None
    loss_a = F.smooth_l1_loss(_angles(s), t_angle)
    loss_d = F.smooth_l1_loss(_normalised_distances(s), t_dist) if t_dist is not None else s.sum() * 0.0
    return w_d * loss_d + w_a * loss_a


def pkt_loss(e_s: torch.Tensor, e_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT (``distiller_zoo/PKT.py:16-42``): cosine similarities mapped to [0, 1], each row made a probability,
    then the mean over all entries of ``p_t * log((p_t + eps) / (p_s + eps))``."""

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        ss = x.pow(2).sum(1, keepdim=True)
        nonzero = ss > 0  # sqrt(sum x^2) as RepDistiller, but a zero row's gradient is 0 (RepDistiller's: NaN)
        x = x / (torch.where(nonzero, ss, torch.ones_like(ss)).sqrt() * nonzero + eps)
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        sim = (x @ x.t() + 1.0) / 2.0
        return sim / sim.sum(1, keepdim=True)

    p_s, p_t = probabilities(e_s), probabilities(e_t)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@METHODS.register("cc")
class CC(FeatureMethod):
    """Correlation congruence (Peng et al., ICCV 2019), as RepDistiller's ``Correlation``
    (``distiller_zoo/CC.py:14-17``) on linear embeddings of both networks' ``embedding`` (``feat[-1]``;
    ``train_student.py:211-218``: ``LinearEmbed(dim, --feat_dim 128)`` for student and teacher, both trained with
    the student; ``helper/loops.py:162-165``), beta 0.02 (``scripts/run_cifar_distill.sh:13``).

    parity: HobbitLong/RepDistiller@b84f547 distiller_zoo/CC.py:14 + models/util.py:185 (LinearEmbed, same
    weights), loss and gradient (student embedding, both embeddings' weights) max relative difference 0.0e+00 /
    0.0e+00 (float32 and float64)."""

    description = "correlation congruence: ce*CE + beta*mean_i <d_i, d_i+1>, d=|z_s-z_t| (linear embeddings), beta 0.02"
    needs = Needs(student=("logits", "embedding"), teacher=("embedding",))
    params = feature_section(
        "CC",
        0.02,
        f"{SCRIPT}:13",
        feat_dim=Field(
            int,
            128,
            "width of the linear embeddings of the student's and the teacher's embedding (RepDistiller "
            "--feat_dim, train_student.py:81)",
            min=1,
            max=1 << 16,
        ),
    )

    def setup(self, probe: Probe) -> None:
        self.embed_s = nn.Linear(probe.s["embedding"].flatten(1).shape[1], self.p["feat_dim"])
        self.embed_t = nn.Linear(probe.t["embedding"].flatten(1).shape[1], self.p["feat_dim"])

    def loss(self, student, targets, teacher, ctx):
        feat = correlation_loss(
            self.embed_s(student["embedding"].flatten(1)), self.embed_t(teacher["embedding"].flatten(1))
        )
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}


@METHODS.register("rkd")
class RKD(FeatureMethod):
    """Relational KD (Park et al., CVPR 2019), as RepDistiller's ``RKDLoss`` (``distiller_zoo/RKD.py``) on the
    ``embedding`` (``feat[-1]``, ``helper/loops.py:149-152``): distance weight 25 and angle weight 50
    (``RKD.py:10``), beta 1 (``scripts/run_cifar_distill.sh:17``).

    parity: HobbitLong/RepDistiller@b84f547 distiller_zoo/RKD.py:15, loss and gradient max relative difference
    0.0e+00 / 1.0e-07 (float32), 0.0e+00 / 2.4e-16 (float64)."""

    description = "relational KD: ce*CE + beta*(25*smoothL1(distances) + 50*smoothL1(angles)) of embeddings, beta 1"
    needs = Needs(student=("logits", "embedding"), teacher=("embedding",))
    params = feature_section(
        "RKD",
        1.0,
        f"{SCRIPT}:17",
        w_d=Field(
            float,
            25.0,
            "weight of the distance term (RepDistiller RKDLoss w_d, distiller_zoo/RKD.py:10)",
            min=0.0,
            max=1e6,
        ),
        w_a=Field(
            float,
            50.0,
            "weight of the angle term (RepDistiller RKDLoss w_a, distiller_zoo/RKD.py:10)",
            min=0.0,
            max=1e6,
        ),
    )

    def loss(self, student, targets, teacher, ctx):
        feat = rkd_loss(student["embedding"], teacher["embedding"], self.p["w_d"], self.p["w_a"])
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}


@METHODS.register("pkt")
class PKT(FeatureMethod):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as RepDistiller's ``PKT``
    (``distiller_zoo/PKT.py``) on the ``embedding`` (``feat[-1]``, ``helper/loops.py:153-156``), beta 30000
    (``scripts/run_cifar_distill.sh:19``).

    parity: HobbitLong/RepDistiller@b84f547 distiller_zoo/PKT.py:16, loss and gradient max relative difference
    0.0e+00 / 0.0e+00 (float32 and float64)."""

    description = "probabilistic KT: ce*CE + beta*KL of cosine-similarity distributions of embeddings, beta 30000"
    needs = Needs(student=("logits", "embedding"), teacher=("embedding",))
    params = feature_section("PKT", 30000.0, f"{SCRIPT}:19")

    def loss(self, student, targets, teacher, ctx):
        feat = pkt_loss(student["embedding"].flatten(1), teacher["embedding"].flatten(1))
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}


# -- KDSVD ------------------------------------------------------------------------------------------------------


def _right_singular_vectors(f: torch.Tensor, n: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` right singular vectors (N, C, n) and singular values (N, n) of each sample's (H*W, C) map,
    each L2-normalised, NaN and inf set to 0 (RepDistiller ``KDSVD.svd``, ``KDSVD.py:45-61``; its reshape
    ``view(-1, C, H*H)`` is ours for square maps). A map wider than ``channels`` has its channels average-pooled in
    groups to that count first (our deviation: RepDistiller's pairs have equal widths)."""
    x = f.flatten(2).transpose(1, 2)  # (N, H*W, C)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.shape[2] > channels:
        x = F.adaptive_avg_pool1d(x, channels)
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh.transpose(-2, -1)

    def finite(t: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isfinite(t), t, torch.zeros_like(t))

    return F.normalize(finite(v)[:, :, :n], dim=1), F.normalize(finite(sv)[:, :n], dim=1)


def kdsvd_loss(s_maps: list[torch.Tensor], t_maps: list[torch.Tensor], k: int) -> torch.Tensor:
    """KDSVD's loss (RepDistiller ``KDSVD.forward``, ``KDSVD.py:17-43``, summed as ``helper/loops.py:157-161``):
    per stage, the teacher's top-k right singular vectors scaled by its (normalised) singular values, and the
    student's top-(k+3) matched to them by the largest absolute cosine (with its sign; ``align_rsv``,
    ``KDSVD.py:68-75``) and scaled by the same values; between consecutive stages the Gaussian kernel
    ``exp(-(v_i - v'_j)**2 / 8)`` of every pair of the two stages' channel entries, and the squared difference of
    the student's and the teacher's kernels, summed (non-finite terms dropped) over the batch size."""
    prev = None
    total = s_maps[0].new_zeros((), dtype=torch.promote_types(s_maps[0].dtype, torch.float32))
    for f_s, f_t in zip(s_maps, t_maps):
        c = min(f_s.shape[1], f_t.shape[1])
        v_t, s_t = _right_singular_vectors(f_t, k, c)
        v_s, _ = _right_singular_vectors(f_s, k + 3, c)
        cosine = v_s.transpose(-2, -1) @ v_t  # (N, k+3, k)
        best = cosine.abs().amax(dim=1, keepdim=True)
        match = torch.where(best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
        scale = s_t.unsqueeze(1)
        v_s, v_t = (v_s @ match) * scale, v_t * scale
        if prev is not None:
            ps, pt = prev
            k_s = torch.exp(-(v_s.unsqueeze(2) - ps.unsqueeze(1)).pow(2) / 8)
            k_t = torch.exp(-(v_t.unsqueeze(2) - pt.unsqueeze(1)).pow(2) / 8)
            sq = (k_s - k_t.detach()).pow(2)
            total = total + torch.where(torch.isfinite(sq), sq, torch.zeros_like(sq)).sum() / s_maps[0].shape[0]
        prev = (v_s, v_t)
    return total


@METHODS.register("kdsvd")
class KDSVD(FeatureMethod):
    """Self-supervised knowledge distillation using SVD (Lee et al., ECCV 2018), as RepDistiller's ``KDSVD``
    (``distiller_zoo/KDSVD.py``) on the paired stages (``feat[1:-1]``, ``helper/loops.py:157-161``), k 1
    (``KDSVD.py:13``; mdistiller's ``CFG.KDSVD.K``, ``mdistiller/engine/cfg.py:94``). RepDistiller's script has no
    KDSVD line and ``-b`` has no default, so beta 1 and the CE weight 1 are mdistiller's
    (``cfg.py:96-97``@a08d46f). Where a pair's stage widths differ (the digits pair), the wider map's channels
    are average-pooled in groups to the narrower width before the SVD (the singular vectors live in channel space
    and are compared across the networks); RepDistiller requires equal widths. mdistiller's ``svd``
    (``mdistiller/distillers/KDSVD.py:42``@a08d46f) reshapes a map to ``(N, C*H, W)``, not to the (H*W, C) of
    RepDistiller and the authors' TensorFlow code: not followed. As in RepDistiller, the SVD's gradient is
    undefined where a student map has repeated singular values (e.g. two all-zero channels).

    parity: HobbitLong/RepDistiller@b84f547 distiller_zoo/KDSVD.py:17-75 (file last changed at 1e2f816),
    transcribed op for op in tests/methods/test_feat_repd.py::test_kdsvd_equals_repdistiller_loss_and_gradient
    (float64; three stages of 8/12/16 channels at 8/4/2, N 6, k 1 and 2, three seeds): loss and gradient
    (student maps) max relative difference 0.0e+00 / 0.0e+00 (the same LAPACK SVD; ours calls
    ``torch.linalg.svd``, RepDistiller the deprecated ``torch.svd``)."""

    description = "KDSVD (Lee et al. 2018): RBF relations of top singular vectors between stages, beta 1"
    needs = Needs(student=("logits", "stages"), teacher=("stages",))
    params = feature_section(
        "KDSVD",
        1.0,
        "mdistiller mdistiller/engine/cfg.py:97; RepDistiller has no default",
        k=Field(
            int,
            1,
            "the teacher's singular vectors used per stage (the student's: k + 3; RepDistiller KDSVD(k=1), "
            "distiller_zoo/KDSVD.py:13)",
            min=1,
            max=64,
        ),
    )

    def loss(self, student, targets, teacher, ctx):
        pairs = paired(student.stages(), teacher.stages())
        feat = kdsvd_loss([s for s, _ in pairs], [t for _, t in pairs], self.p["k"])
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}
