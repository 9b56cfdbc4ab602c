"""Loss functions: label-smoothed cross-entropy, Hinton knowledge distillation and the method zoo's losses.

All functions take logits of shape (N, K) and integer targets of shape (N,); sequence tasks flatten
their (batch, length) positions and drop padding before calling them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (bf16 autocast) are upcast to float32; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def smoothed_targets(targets: torch.Tensor, num_classes: int, alpha: float) -> torch.Tensor:
    """Label-smoothed target distribution ``(1 - alpha) * onehot(y) + alpha / K``."""
    onehot = F.one_hot(targets, num_classes).to(torch.float32)
    return (1.0 - alpha) * onehot + alpha / num_classes


def ls_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy between ``smoothed_targets(targets, K, alpha)`` and ``softmax(logits)``: PyTorch's
    ``cross_entropy(label_smoothing=alpha)``, ``(1 - alpha) * nll + alpha * mean_k(-log p_k)``, the same value
    without building the (N, K) target distribution."""
    return F.cross_entropy(_upcast(logits), targets, label_smoothing=float(alpha))


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float | torch.Tensor) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T))`` averaged over the N rows (no T^2 factor); ``T`` a float, or a tensor
    that broadcasts (CTKD's learned temperature, which the gradient reaches through it)."""
    log_ps = F.log_softmax(_upcast(student_logits) / T, dim=-1)
    log_pt = F.log_softmax(_upcast(teacher_logits) / T, dim=-1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    lam: float = 0.5,
    t_squared: bool = True,
) -> torch.Tensor:
    """Hinton et al. (2015): ``(1 - lam) * CE(y, s) + lam * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    The ``T^2`` factor (on by default) keeps the soft-target gradients' magnitude independent of T.
    """
    terms = kd_terms(student_logits, teacher_logits, targets, T, lam, t_squared)
    return terms["ce"] + terms["kd"]


def kd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    lam: float = 0.5,
    t_squared: bool = True,
) -> dict[str, torch.Tensor]:
    """``kd_loss``'s two weighted terms: ``{"ce": (1 - lam) * CE, "kd": lam * T^2 * KL}``."""
    ce = F.cross_entropy(_upcast(student_logits), targets) if lam < 1.0 else student_logits.new_zeros(())
    scale = T * T if t_squared else 1.0
    return {"ce": (1.0 - lam) * ce, "kd": lam * scale * kd_kl(student_logits, teacher_logits, T)}


# ------------------------------------------------------------------------------------------ the method zoo
def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each row (Sun et al., CVPR 2024, eq. 9): ``(z - mean(z)) / (std(z) + eps)`` with the unbiased
    standard deviation, as ``normalize`` in the authors' code (sunshangquan/logit-standardization-KD,
    mdistiller/distillers/KD.py)."""
    z = _upcast(logits)
    return (z - z.mean(dim=-1, keepdim=True)) / (eps + z.std(dim=-1, keepdim=True))


def dkd_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, T: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of Decoupled KD (Zhao et al., CVPR 2022, eq. 7), each already scaled by T^2 and averaged
    over rows, as ``dkd_loss`` in mdistiller (megvii-research/mdistiller, mdistiller/distillers/DKD.py):

    - TCKD = KL(b_t || b_s) over the binary (target, all non-targets) probabilities;
    - NCKD = KL(p~_t || p~_s) over the distribution among the non-target classes (the target logit is masked
      with -1000 before the softmax, as the authors do).
    """
    s, t = _upcast(student_logits) / T, _upcast(teacher_logits) / T
    gt = F.one_hot(targets, s.shape[-1]).to(torch.bool)
    ps, pt = F.softmax(s, dim=-1), F.softmax(t, dim=-1)
    bs = torch.stack([(ps * gt).sum(-1), (ps * ~gt).sum(-1)], dim=-1)
    bt = torch.stack([(pt * gt).sum(-1), (pt * ~gt).sum(-1)], dim=-1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") / targets.shape[0]
    log_ns = F.log_softmax(s - 1000.0 * gt, dim=-1)
    nt = F.softmax(t - 1000.0 * gt, dim=-1)
    nckd = F.kl_div(log_ns, nt, reduction="sum") / targets.shape[0]
    return tckd * T * T, nckd * T * T


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (DIST's cosine of centred rows)."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra) relation losses of DIST (Huang et al., NeurIPS 2022, eqs. 6-8), each scaled by tau^2, as
    hunto/image_classification_sota lib/models/losses/dist_kd.py: inter = 1 - mean Pearson correlation of each
    sample's class probabilities; intra = the same over each class's probabilities across the batch."""
    ys, yt = F.softmax(_upcast(student_logits) / tau, dim=1), F.softmax(_upcast(teacher_logits) / tau, dim=1)
    inter = 1.0 - pearson_rows(ys, yt).mean()
    intra = 1.0 - pearson_rows(ys.t(), yt.t()).mean()
    return tau * tau * inter, tau * tau * intra


def ttm_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, gamma: float) -> torch.Tensor:
    """Transformed Teacher Matching (Zheng & Yang, ICLR 2024, eq. 11): ``KL(p_t^gamma / Z || softmax(s))``, the
    teacher's probabilities power-transformed (a temperature 1/gamma on the teacher only), the student's at
    temperature 1, no T^2 factor; as zkxufo/TTM distiller_zoo/ttm.py."""
    log_ps = F.log_softmax(_upcast(student_logits), dim=-1)
    log_pt = F.log_softmax(gamma * _upcast(teacher_logits), dim=-1)  # == log(p_t^gamma / sum p_t^gamma)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")


def wttm_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, gamma: float) -> torch.Tensor:
    """Weighted Transformed Teacher Matching (Zheng & Yang, ICLR 2024): ``mean_i(Z_i * KL(p_t,i^gamma / Z_i ||
    softmax(s_i)))`` with ``Z_i = sum_k p_t,ik^gamma``: TTM's per-sample KL weighted by the power sum of the
    teacher's probabilities (larger for a smoother teacher), no T^2 factor; as zkxufo/TTM distiller_zoo/wttm.py.
    ``Z_i = exp(logsumexp(gamma * log_softmax(t_i)))`` and the transformed teacher is ``softmax(gamma * t_i)``."""
    log_ps = F.log_softmax(_upcast(student_logits), dim=-1)
    log_pow = gamma * F.log_softmax(_upcast(teacher_logits), dim=-1)  # log p_t^gamma
    log_norm = torch.logsumexp(log_pow, dim=-1, keepdim=True)
    log_pt = log_pow - log_norm  # log(p_t^gamma / Z)
    kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)
    return (log_norm.squeeze(-1).exp() * kl).mean()


def skd_direction(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tikhonov: float) -> torch.Tensor:
    """Streamlined KD's direction term (Jeong et al., CVPR 2026), as torchdistill ``SKDDirectionLoss``
    (torchdistill/losses/mid_level.py:1937-1949): ``D = G_s - G_t`` for the batch Gram matrices of the
    L2-normalised logits, ``Sigma' = cov(D) + tikhonov * I`` (the N columns of D as the variables, unbiased), and
    the batch mean of the Mahalanobis norms ``sqrt(D_i^T Sigma'^-1 D_i)`` of D's rows; Sigma' depends on the
    student and is differentiated through (its inverse from a Cholesky factor, as there). A batch of one sample
    has no covariance (the reference's is NaN): its term is 0."""
    if student_logits.shape[0] < 2:
        return _upcast(student_logits).sum() * 0.0
    zs = F.normalize(_upcast(student_logits), p=2, dim=1)
    zt = F.normalize(_upcast(teacher_logits), p=2, dim=1)
    diff = zs @ zs.t() - zt @ zt.t()
    eye = torch.eye(diff.shape[1], dtype=diff.dtype, device=diff.device)
    inv = torch.cholesky_inverse(torch.linalg.cholesky(torch.cov(diff.t()) + tikhonov * eye))
    return torch.einsum("bi,ij,bj->b", diff, inv, diff).sqrt().mean()


def nkd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, T: float, gamma: float
) -> torch.Tensor:
    """Normalized KD (Yang et al., ICCV 2023, eq. 8), as yzd-v/cls_KD mmcls/models/dis_losses/nkd.py:
    ``-mean(t_y * log s_y) - gamma * T^2 * mean(sum_{k!=y} softmax(t_nt/T)_k * log softmax(s_nt/T)_k)``, where
    t_y is the teacher's target probability (no gradient) and *_nt are the logits without the target class."""
    s, t = _upcast(student_logits), _upcast(teacher_logits)
    n, k = s.shape
    y = targets.view(-1, 1)
    s_y = F.log_softmax(s, dim=1).gather(1, y)
    t_y = F.softmax(t, dim=1).gather(1, y).detach()
    loss_t = -(t_y * s_y).mean()
    keep = torch.ones_like(s, dtype=torch.bool).scatter_(1, y, False)
    s_nt, t_nt = s[keep].view(n, k - 1), t[keep].view(n, k - 1)
    loss_non = (F.softmax(t_nt / T, dim=1) * F.log_softmax(s_nt / T, dim=1)).sum(1).mean()
    return loss_t - gamma * T * T * loss_non


MLKD_SRC = "Jin-Ying/Multi-Level-Logit-Distillation@5ee473f mdistiller/distillers/KD_ours.py"
MLKD_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)  # beside the grid's T (KD_ours.py:115-140: T, 3, 5, 2, 6)


def _below_median(x: torch.Tensor) -> torch.Tensor:
    """The fraction of the entries of ``x`` at or below their median (numpy's ``percentile(x, 50)``, linear
    interpolation, as MLKD's masks ``x.le(percentile(x, 50))``)."""
    x = x.detach()
    return (x <= torch.quantile(x, 0.5)).to(x.dtype).mean()


def mlkd_relations(s: torch.Tensor, t: torch.Tensor, T: float, classes: bool) -> torch.Tensor:
    """MLKD's class-level (``classes``: ``cc_loss``, KD_ours.py:24-34, the K x K Gram ``P^T P`` of the softened
    probabilities, squared differences summed over K) or batch-level (``bc_loss`` :37-47, the N x N ``P P^T``,
    summed over N) alignment at temperature ``T``; no T^2."""
    ps, pt = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
    if classes:
        gs, gt = ps.t() @ ps, pt.t() @ pt
        return ((gt - gs) ** 2).sum() / s.shape[1]
    gs, gt = ps @ ps.t(), pt @ pt.t()
    return ((gt - gs) ** 2).sum() / s.shape[0]


def mlkd_terms(
    s_weak: torch.Tensor,
    t_weak: torch.Tensor,
    s_strong: torch.Tensor,
    t_strong: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    ce_weight: float,
    kd_weight: float,
) -> dict[str, torch.Tensor]:
    """Multi-Level Logit Distillation (Jin et al., CVPR 2023) as its authors' ``KD_ours.forward_train``
    (KD_ours.py:89-255@5ee473f) on a weak and a strong view: ``ce`` (CE of both views), ``kd`` (instance level:
    T^2 KL at T, 3, 5, 2, 6 on the weak view scaled by the fraction of samples whose teacher confidence is at or
    below the batch median, plus the strong view's at T, 3, 5 and, as the reference codes it (:154-161), the weak
    view's again at 2 and 6, unscaled), ``cc`` (class level on the weak view, scaled by the fraction of classes
    whose summed teacher probability is at or below the median) and ``bc`` (batch level on the weak view, scaled
    by the samples' fraction). The reference computes each level's loss reduced to a scalar and multiplies by the
    boolean mask before ``.mean()`` (``reduce=False`` is commented out): the mask scales the loss by the fraction
    it keeps, which is what is computed here."""
    s_weak, t_weak, s_strong, t_strong = (_upcast(x) for x in (s_weak, t_weak, s_strong, t_strong))
    p_t = F.softmax(t_weak.detach(), dim=1)
    frac = _below_median(p_t.max(dim=1).values)  # KD_ours.py:98-104
    frac_classes = _below_median(p_t.sum(dim=0))  # :106-111
    temps = (T, *MLKD_TEMPERATURES)

    def kd(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
        return tau * tau * kd_kl(s, t, tau)

    kd_weak = sum(kd(s_weak, t_weak, tau) for tau in temps)
    kd_strong = sum(kd(s_strong, t_strong, tau) for tau in temps[:3]) + sum(
        kd(s_weak, t_weak, tau) for tau in temps[3:]
    )
    cc = sum(mlkd_relations(s_weak, t_weak, tau, classes=True) for tau in temps)
    bc = sum(mlkd_relations(s_weak, t_weak, tau, classes=False) for tau in temps)
    return {
        "ce": ce_weight * (F.cross_entropy(s_weak, targets) + F.cross_entropy(s_strong, targets)),
        "kd": kd_weight * (frac * kd_weak + kd_strong),
        "cc": kd_weight * frac_classes * cc,
        "bc": kd_weight * frac * bc,
    }


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale`` (CTKD's curriculum value, from 0 down
    to -1: the temperature ascends the KD loss the student descends), as zhengli97/CTKD models/temp_global.py."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def cosine_curriculum(epoch: int, loops: int, start: float, end: float) -> float:
    """CTKD's CosineDecay (train_student.py): ``start`` at epoch 0 to ``end`` at epoch ``loops`` (1-based
    epochs there; ``epoch`` here is 1-based too), constant afterwards."""
    i = min(max(epoch, 0), loops)
    return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (start - end) + end
