"""The logit-distillation methods the field compares against, each from its paper's definition and checked
against the authors' public code (repository and file named in each docstring; the loss itself is in
``losses.py``). Defaults are the authors' ImageNet settings where they publish them.

Which grid axes apply: methods with ``uses_temperature = True`` take the grid's T (one student per
alpha x T); the others have their own temperature (DIST's tau, TTM's gamma, CTKD's learned T) and get one
student per alpha.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import Field, Section
from . import METHODS, LossContext, Method, ModuleMethod
from .losses import (
    MLKD_SRC,
    GradientReversal,
    _upcast,
    cosine_curriculum,
    dist_parts,
    dkd_parts,
    kd_kl,
    mlkd_terms,
    nkd_loss,
    skd_direction,
    standardize,
    ttm_kl,
    wttm_loss,
)

CE = {"ce_weight": Field(float, 1.0, "weight of the cross-entropy on the labels", min=0.0)}


def _ce(student_logits: torch.Tensor, targets: torch.Tensor, w: float) -> torch.Tensor:
    return w * F.cross_entropy(_upcast(student_logits), targets) if w else student_logits.new_zeros(())


@METHODS.register("dkd")
class DKD(Method):
    """Decoupled KD (Zhao et al., CVPR 2022), eq. 7: ``ce_weight * CE + min(epoch / warmup, 1) * (alpha * TCKD +
    beta * NCKD)`` at the grid's T. Matches mdistiller (megvii-research/mdistiller, mdistiller/distillers/DKD.py);
    defaults from its ImageNet ResNet-34 -> ResNet-18 config (configs/imagenet/r34_r18/dkd.yaml: beta 0.5,
    warm-up 1 epoch). On CIFAR-100 mdistiller's defaults are beta 8, T 4, warm-up 20 (engine/cfg.py:162-167), but
    its per-pair configs set beta per pair (2 for res56_res20 / res110_res32, 6 for vgg13_vgg8, vgg13_mv2 and the
    wrn_40_2 pairs: configs/cifar100/dkd/*.yaml:19): task cifar100 applies them with ``--pair``.
    ``standardize`` is logit-standardised DKD as its authors run it (Sun et al., CVPR 2024;
    sunshangquan/logit-standardization-KD tools/train.py:116-118): both logits z-scored first, and alpha and beta
    multiplied by ``std_weight`` (their ``--kd-weight``, default 9: train.py:104); their base temperature (2 by
    default, train.py:103) is the grid's T here, so their setting is the T = 2 cell."""

    description = "Decoupled KD (Zhao et al. 2022): alpha*TCKD + beta*NCKD with warm-up"
    params = Section({
        **CE,
        "alpha": Field(float, 1.0, "weight of the target-class term TCKD", min=0.0),
        "beta": Field(float, 0.5, "weight of the non-target term NCKD", min=0.0),
        "warmup": Field(int, 1, "epochs over which the DKD term ramps up linearly (1-based, as mdistiller)", min=1),
        "standardize": Field(bool, False, "z-score the logits before softening and scale alpha, beta by std_weight "
                             "(logit-standardised DKD; the authors' base temperature 2 is the grid's T = 2)"),
        "std_weight": Field(float, 9.0, "with standardize: alpha and beta are multiplied by this (the authors' "
                            "--kd-weight)", min=0.0),
    }, "Decoupled KD")  # fmt: skip

    @classmethod
    def identity_params(cls, p):
        """``std_weight`` only acts with ``standardize``: without it, it stays out of the cell hash (results of
        plain DKD keep their names)."""
        out = super().identity_params(p)
        if not out.get("standardize"):
            out.pop("std_weight", None)
        return out

    def loss(self, student_logits, targets, teacher_logits, ctx):
        s, t = student_logits, teacher_logits
        scale = 1.0
        if self.p["standardize"]:
            s, t = standardize(s), standardize(t)
            scale = self.p["std_weight"]
        tckd, nckd = dkd_parts(s, t, targets, float(ctx.T))
        ramp = min((ctx.epoch + 1) / self.p["warmup"], 1.0)
        return {
            "ce": _ce(student_logits, targets, self.p["ce_weight"]),
            "kd": ramp * scale * (self.p["alpha"] * tckd + self.p["beta"] * nckd),
        }


@METHODS.register("kd_std")
class KDStandardized(Method):
    """KD with logit standardisation (Sun et al., CVPR 2024), eqs. 9-10: both logits z-scored per sample, then
    ``ce_weight * CE + kd_weight * T^2 * KL(softmax(z(t)/T) || softmax(z(s)/T))`` with the grid's T as the base
    temperature. As sunshangquan/logit-standardization-KD mdistiller/distillers/KD.py; defaults from its README's
    ImageNet command (``--logit-stand --base-temp 2 --kd-weight 9``, CE weight 1 from configs/imagenet/r34_r18/
    kd.yaml). The same pre-process is ``dkd.standardize``."""

    description = "KD on z-scored logits (Sun et al. 2024): ce_weight*CE + kd_weight*T^2*KL(std(t)/T || std(s)/T)"
    params = Section({
        **CE,
        "kd_weight": Field(float, 9.0, "weight of the KD term", min=0.0),
    }, "KD with logit standardisation")  # fmt: skip

    def loss(self, student_logits, targets, teacher_logits, ctx):
        T = float(ctx.T)
        kl = kd_kl(standardize(student_logits), standardize(teacher_logits), T)
        return {"ce": _ce(student_logits, targets, self.p["ce_weight"]), "kd": self.p["kd_weight"] * T * T * kl}


@METHODS.register("dist")
class DIST(Method):
    """DIST (Huang et al., NeurIPS 2022), eq. 9: ``ce_weight * CE + kd_weight * (beta * inter + gamma * intra)``
    with Pearson-correlation relations of the class probabilities at its own ``tau`` (the grid's T does not
    apply). As hunto/image_classification_sota lib/models/losses/dist_kd.py; defaults from its ImageNet config
    (configs/strategies/distill/resnet_dist.yaml: ori_loss_weight 1, kd_loss_weight 2; beta = gamma = tau = 1).
    On ``cifar100`` the recipe sets tau 4, its CIFAR config's (image_classification_sota@d9662f7, as pinned by
    hunto/DIST_KD@2418f18: configs/strategies/distill/dist_cifar.yaml:36 ``kd: dist_t4``, weights :34-35 as here)."""

    description = "DIST (Huang et al. 2022): inter- and intra-class Pearson relations, own tau"
    uses_temperature = False
    params = Section({
        **CE,
        "kd_weight": Field(float, 2.0, "weight of the DIST term", min=0.0),
        "beta": Field(float, 1.0, "weight of the inter-class relation", min=0.0),
        "gamma": Field(float, 1.0, "weight of the intra-class relation", min=0.0),
        "tau": Field(float, 1.0, "DIST's own temperature (cifar100: 4, dist_cifar.yaml:36)", min=0.0,
                     min_exclusive=True),
    }, "DIST")  # fmt: skip

    def loss(self, student_logits, targets, teacher_logits, ctx):
        inter, intra = dist_parts(student_logits, teacher_logits, self.p["tau"])
        kd = self.p["beta"] * inter + self.p["gamma"] * intra
        return {"ce": _ce(student_logits, targets, self.p["ce_weight"]), "kd": self.p["kd_weight"] * kd}


@METHODS.register("ttm")
class TTM(Method):
    """Transformed Teacher Matching (Zheng & Yang, ICLR 2024), eq. 11: ``ce_weight * CE + kd_weight *
    KL(p_t^gamma / Z || softmax(s))``, a temperature 1/gamma on the teacher only (its own, so the grid's T does
    not apply). As zkxufo/TTM distiller_zoo/ttm.py; defaults from that README's example (``--ttm_l 0.1 -r 1
    -b 45``, CIFAR-100; the authors' ImageNet runs used torchdistill configs not in that repository)."""

    description = "TTM (Zheng & Yang 2024): teacher-only temperature 1/gamma, no T^2"
    uses_temperature = False
    params = Section({
        **CE,
        "kd_weight": Field(float, 45.0, "weight of the TTM term", min=0.0),
        "gamma": Field(float, 0.1, "exponent of the teacher's probabilities (temperature 1/gamma)", min=0.0,
                       min_exclusive=True),
    }, "TTM")  # fmt: skip

    def loss(self, student_logits, targets, teacher_logits, ctx):
        kl = ttm_kl(student_logits, teacher_logits, self.p["gamma"])
        return {"ce": _ce(student_logits, targets, self.p["ce_weight"]), "kd": self.p["kd_weight"] * kl}


@METHODS.register("wttm")
class WTTM(Method):
    """Weighted Transformed Teacher Matching (Zheng & Yang, ICLR 2024): ``ce_weight * CE + kd_weight *
    mean_i(Z_i * KL(p_t,i^gamma / Z_i || softmax(s_i)))``, ``Z_i = sum_k p_t,ik^gamma``: TTM (``ttm``) with each
    sample's KL weighted by the power sum of its teacher probabilities (the teacher's temperature 1/gamma is its
    own, so the grid's T does not apply). As zkxufo/TTM distiller_zoo/wttm.py:13-19@fe457b3 (the loss) and
    helper/loops.py:83 (``gamma * CE + alpha * div + beta * kd``). Defaults: the only WTTM setting that repository
    publishes, README.md:40-41@fe457b3 (``--add wttm --ttm_l 0.2 -a 4``, there added to CRD on vgg13 -> vgg8, CE
    weight 1 by default: train_student.py:60); the paper's per-pair gamma and weights are not in the repository.

    parity: zkxufo/TTM@fe457b3 distiller_zoo/wttm.py:13-19, transcribed op for op in
    tests/methods/test_zoo.py::test_wttm_equals_the_authors_loss_and_gradient (float64, N 64, K 100, gamma 0.1 /
    0.2 / 0.5 / 1, three seeds, teacher logits of std 5): loss and gradient (student logits) max relative
    difference 1.4e-16 / 4.9e-16. The reference's ``p_t^gamma`` is ``softmax(t)**gamma``; ours is
    ``exp(gamma * log_softmax(t))`` (the same value, without 0**gamma underflow for very confident teachers)."""

    description = "WTTM (Zheng & Yang 2024): TTM's KL weighted per sample by sum_k p_t^gamma, no T^2"
    uses_temperature = False
    params = Section({
        **CE,
        "kd_weight": Field(float, 4.0, "weight of the WTTM term (zkxufo/TTM README.md:41, -a 4)", min=0.0),
        "gamma": Field(float, 0.2, "exponent of the teacher's probabilities (temperature 1/gamma; zkxufo/TTM "
                       "README.md:40, --ttm_l 0.2)", min=0.0, min_exclusive=True),
    }, "Weighted TTM")  # fmt: skip

    def loss(self, student_logits, targets, teacher_logits, ctx):
        wttm = wttm_loss(student_logits, teacher_logits, self.p["gamma"])
        return {"ce": _ce(student_logits, targets, self.p["ce_weight"]), "kd": self.p["kd_weight"] * wttm}


SKD_CFG = "configs/sample/ilsvrc2012/skd/resnet18_from_resnet34.yaml"


@METHODS.register("skd")
class SKD(Method):
    """Streamlined KD (Jeong et al., CVPR 2026) as torchdistill runs it (yoshitomo-matsubara/torchdistill@3e4373c,
    torchdistill/losses/mid_level.py:1863-1949 and the sample config
    configs/sample/ilsvrc2012/skd/resnet18_from_resnet34.yaml:127-150): ``ce_weight * CE +
    instance_weight * KL(softmax(t/T) || softmax(s/T)) + direction_weight * L_DIR``, the instance term a batch-mean
    KL without T^2 (``SKDInstanceLoss``, :1895-1900), L_DIR the Mahalanobis norm of the difference of the batch
    Gram matrices of L2-normalised logits (``SKDDirectionLoss``, :1937-1949; ``losses.skd_direction``). The
    instance term's temperature is the grid's T (the config's 4.0, line 139, is the T = 4 cell); weights 1 and 1
    (lines 140, 150), Tikhonov 0.1 (line 149); the config has no cross-entropy term, so ``ce_weight`` is 0.
    Classification only: the direction term inverts an N x N covariance (N the batch).

    parity: yoshitomo-matsubara/torchdistill@3e4373c torchdistill/losses/mid_level.py:1895-1900 and 1937-1949,
    transcribed op for op in tests/methods/test_zoo.py::test_skd_equals_torchdistill_loss_and_gradient (float64,
    N 64, K 100, T 1 and 4, three seeds): loss and gradient (student logits) max relative difference 1.9e-16 /
    2.2e-16 at Tikhonov 0.25; 4.1e-09 / 3.4e-09 at the default 0.1, where the reference's ``0.1 * torch.eye(n)``
    is float32 (torch's default dtype), float32(0.1) = 0.1 + 1.5e-9 even for float64 logits, ours the exact value
    of the logits' dtype (equal in float32 training)."""

    description = "SKD (Jeong et al. 2026, torchdistill): KL at T (no T^2) + Mahalanobis norm of Gram differences"
    task_kinds = ("classification",)
    params = Section({
        "ce_weight": Field(float, 0.0, f"weight of the cross-entropy on the labels (the config has none: {SKD_CFG}:"
                           "127-150)", min=0.0),
        "instance_weight": Field(float, 1.0, f"weight of the instance term ({SKD_CFG}:140)", min=0.0),
        "direction_weight": Field(float, 1.0, f"weight of the direction term ({SKD_CFG}:150)", min=0.0),
        "tikhonov": Field(float, 0.1, f"added to the covariance's diagonal ({SKD_CFG}:149)", min=0.0,
                          min_exclusive=True),
    }, "Streamlined KD")  # fmt: skip

    def loss(self, student_logits, targets, teacher_logits, ctx):
        out = {"ce": _ce(student_logits, targets, self.p["ce_weight"])}
        out["kd"] = self.p["instance_weight"] * kd_kl(student_logits, teacher_logits, float(ctx.T))
        out["direction"] = self.p["direction_weight"] * skd_direction(
            student_logits, teacher_logits, self.p["tikhonov"]
        )
        return out


@METHODS.register("mlkd")
class MLKD(Method):
    """Multi-Level Logit Distillation (Jin et al., CVPR 2023) as its authors' code
    (Jin-Ying/Multi-Level-Logit-Distillation@5ee473f mdistiller/distillers/KD_ours.py:89-255; ``losses.mlkd_terms``):
    ``ce_weight`` x CE plus ``kd_weight`` x (instance-level T^2 KL, class-level and batch-level Gram alignments),
    each at the grid's T (the reference's ``KD.TEMPERATURE``, 4 on CIFAR-100: engine/cfg.py:61, the T = 4 cell)
    and at 3, 5, 2 and 6, with the teacher-confidence masks of the reference. Defaults: its ImageNet config
    (configs/imagenet/r34_r18/kd_ours.yaml:24-28: T 1, CE 0.5, KD 0.5); on ``cifar100`` the recipe sets
    engine/cfg.py:63-64's CE 0.1, KD 0.9 (its CIFAR configs, configs/cifar100/ours/*.yaml, set no KD section; they
    train the student at lr 0.025 for resnet32x4 -> resnet8x4, :12, not applied: the pair's lr is every method's).

    Deviation (stated): the reference trains on two views of each image, a weak one (crop and flip) and a strong
    one (RandAugment(2, 10) added: mdistiller/dataset/cifar100.py:334-340); the strong view is a data-pipeline
    matter that lskd-bench's tasks do not produce, so here both views are the step's batch (weak = strong), which
    doubles the CE and makes the strong-view instance term the weak view's.

    parity: Jin-Ying/Multi-Level-Logit-Distillation@5ee473f mdistiller/distillers/KD_ours.py:13-47 and 96-255,
    transcribed op for op in tests/methods/test_zoo.py::test_mlkd_equals_the_authors_loss_and_gradient (float64,
    N 64 and 63, K 100, three seeds, T 4 and 2, distinct weak and strong views and weak = strong): loss and
    gradient (both views' student logits) max relative difference 4.2e-16 / 4.1e-16."""

    description = "MLKD (Jin et al. 2023): instance, class and batch alignment at T, 3, 5, 2, 6 (weak = strong view)"
    task_kinds = ("classification",)
    params = Section({
        "ce_weight": Field(float, 0.5, f"weight of the cross-entropy of each view ({MLKD_SRC}; configs/imagenet/"
                           "r34_r18/kd_ours.yaml:27; cifar100: 0.1, engine/cfg.py:63)", min=0.0),
        "kd_weight": Field(float, 0.5, "weight of every alignment term (configs/imagenet/r34_r18/kd_ours.yaml:28; "
                           "cifar100: 0.9, engine/cfg.py:64)", min=0.0),
    }, "Multi-Level Logit Distillation")  # fmt: skip

    def loss(self, student_logits, targets, teacher_logits, ctx):
        s, t = student_logits, teacher_logits
        return mlkd_terms(s, t, s, t, targets, float(ctx.T), self.p["ce_weight"], self.p["kd_weight"])


@METHODS.register("nkd")
class NKD(Method):
    """Normalized KD (Yang et al., ICCV 2023), eq. 8: ``ce_weight * CE + kd_weight * NKD`` where NKD is the
    teacher-weighted target term plus gamma * T^2 times the cross-entropy of the normalised non-target
    distributions at the grid's T. As yzd-v/cls_KD mmcls/models/dis_losses/nkd.py; defaults from its ImageNet
    config (configs/distillers/imagenet/res34_distill_res18_img.py: temp 1, gamma 1.5; the student's CE stays)."""

    description = "NKD (Yang et al. 2023): normalised target / non-target soft labels"
    params = Section({
        **CE,
        "kd_weight": Field(float, 1.0, "weight of the NKD term", min=0.0),
        "gamma": Field(float, 1.5, "weight of the non-target term", min=0.0),
    }, "Normalized KD")  # fmt: skip

    def loss(self, student_logits, targets, teacher_logits, ctx):
        nkd = nkd_loss(student_logits, teacher_logits, targets, float(ctx.T), self.p["gamma"])
        return {"ce": _ce(student_logits, targets, self.p["ce_weight"]), "kd": self.p["kd_weight"] * nkd}


@METHODS.register("ctkd")
class CTKD(ModuleMethod):
    """Curriculum Temperature KD (Li et al., AAAI 2023), section 3: a learnable global temperature
    ``T = t_start + t_end * sigmoid(theta)`` (theta starts at 1) trained *against* the KD loss through a gradient
    reversal whose strength follows a cosine curriculum from ``grl_start`` to ``grl_end`` over ``grl_epochs``
    epochs; loss ``ce_weight * CE + kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))``. As zhengli97/CTKD
    (models/temp_global.py, helper/loops.py, train_student.py CosineDecay), defaults from its ImageNet script
    (scripts/run_imagenet_distill.sh: t_start 1, t_end 20, decay 0 -> -1 over 5 epochs, -r 1 -a 1); on
    ``cifar100`` the recipe sets its CIFAR script's CE 0.1, KD 0.9 and 10-epoch curriculum (CTKD@7d52522
    scripts/run_cifar_distill.sh:19 ``-r 0.1 -a 0.9``, :22 ``--decay_loops 10``). theta is
    the method's own parameter: the runner optimises it with the student and saves it in every checkpoint.
    The grid's T does not apply (T is learned); ``temperature()`` reports the current value."""

    description = "CTKD (Li et al. 2023): learnable temperature, adversarial cosine curriculum"
    uses_temperature = False
    params = Section({
        **CE,
        "kd_weight": Field(float, 1.0, "weight of the KD term", min=0.0),
        "t_start": Field(float, 1.0, "lowest temperature", min=0.0, min_exclusive=True),
        "t_end": Field(float, 20.0, "temperature span: T = t_start + t_end * sigmoid(theta)", min=0.0),
        "grl_start": Field(float, 0.0, "gradient-reversal factor at the first epoch", max=0.0),
        "grl_end": Field(float, -1.0, "gradient-reversal factor after grl_epochs (negative: reversed)", max=0.0),
        "grl_epochs": Field(int, 5, "epochs of the cosine curriculum (cifar100: 10, run_cifar_distill.sh:22)", min=1),
    }, "Curriculum Temperature KD")  # fmt: skip

    def __init__(self, params: dict[str, Any] | None = None):
        super().__init__(params)
        self.theta = nn.Parameter(torch.ones(1))

    def grl_scale(self, epoch: int) -> float:
        """The gradient factor at (0-based) ``epoch``: the official code counts epochs from 1."""
        return cosine_curriculum(epoch + 1, self.p["grl_epochs"], self.p["grl_start"], self.p["grl_end"])

    def temperature(self, scale: float = 1.0) -> torch.Tensor:
        theta = GradientReversal.apply(self.theta, scale)
        return self.p["t_start"] + self.p["t_end"] * torch.sigmoid(theta)

    def loss(self, student_logits, targets, teacher_logits, ctx: LossContext):
        T = self.temperature(self.grl_scale(ctx.epoch))
        kl = kd_kl(student_logits, teacher_logits, T)  # T a tensor: its gradient reaches theta
        return {
            "ce": _ce(student_logits, targets, self.p["ce_weight"]),
            "kd": self.p["kd_weight"] * (T * T).squeeze() * kl,
        }

    def report(self) -> dict[str, float]:
        with torch.no_grad():
            return {"temperature": float(self.temperature())}

    def forward(self, *args: Any) -> torch.Tensor:  # nn.Module protocol; the runner calls loss()
        return self.loss(*args)
