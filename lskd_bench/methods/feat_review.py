"""Two feature methods that read several stages and learn connectors: ReviewKD (Chen et al., CVPR 2021,
"Distilling Knowledge via Knowledge Review") and OFD (Heo et al., ICCV 2019, "A Comprehensive Overhaul of
Feature Distillation").

Each loss is ``ce * CE(s, y) + beta * L_feat`` with the authors' CIFAR-100 weights. Where the teacher has more
stages than the student (or fewer), the deepest stages both have are paired (``feat_common.aligned_last``, as
mdistiller's OFD does); a map of another spatial size is resized as each reference does (ReviewKD: nearest
interpolation inside the fusion module; OFD: adaptive average pooling of the teacher's map to the student's).

The teacher's mode is each method's ``teacher_mode`` (``train``: its BatchNorm layers normalise with the batch's
statistics, the running ones untouched; ``eval``: with the running ones, as every other method's teacher):

- ReviewKD's authors leave the teacher in train mode on CIFAR-100 (dvlab-research/ReviewKD@cede6ea
  CIFAR-100/train.py:123-141 builds and loads it and never calls ``teacher.eval()``; :222 runs it) and put it
  in eval mode on ImageNet (ImageNet/imagenet_amp.py:357-358 ``model.train(); teacher.eval()``), as mdistiller's
  ReviewKD does (mdistiller@a08d46f distillers/_base.py:12-20). Default ``eval``; the ``cifar100`` recipe sets
  ``train``.
- OFD's authors run it in train mode on CIFAR-100 and ImageNet (clovaai/overhaul-distillation@76344a8
  CIFAR-100/train_with_distillation.py:73-75, ImageNet/train_with_distillation.py:165-167 ``d_net.t_net.train()``),
  and so does mdistiller's OFD (distillers/OFD.py:114-121 overrides ``train`` without ``teacher.eval()``).
  Default ``train``.

The mode changes the teacher's features, not the loss formulas checked below. In train mode the authors' BN
layers also update their running statistics, which nothing reads afterwards (their teachers are not evaluated
again; the CIFAR models have no dropout): lskd-bench leaves them untouched, so a teacher shared by cells, or
reloaded on resume, gives the same outputs every time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import Field
from . import METHODS, FeatureMethod, Needs, Probe, feature_section, teacher_mode_field
from .feat_common import aligned_last, bn_before_preact, stage_keys


def _full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision maps (autocast) in float32 for the loss; float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ------------------------------------------------------------------------------------------------ ReviewKD
class ABF(nn.Module):
    """Attention-based fusion (dvlab-research/ReviewKD CIFAR-100/model/reviewkd.py:20-56): a 1x1 conv+BN to
    ``mid`` channels; except at the deepest level, a 1x1 conv + sigmoid on [x, residual] gives two spatial
    attention maps that mix x with the residual (the deeper level's fused map, nearest-upsampled to x's size);
    the result is nearest-resized to the teacher's size and a 3x3 conv+BN maps it to the teacher's channels.
    Returns (output, fused map passed on as the next level's residual)."""

    def __init__(self, cin: int, mid: int, cout: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid, cout, kernel_size=3, stride=1, padding=1, bias=False), nn.BatchNorm2d(cout)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(mid * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]):
        h, w = x.shape[2], x.shape[3]
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(residual, (h, w), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0:1] + y * z[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def hcl(fstudent: list[torch.Tensor], fteacher: list[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss (ReviewKD CIFAR-100/model/reviewkd.py:160-177): per level, the MSE of the maps
    plus the MSEs of their 4x4, 2x2 and 1x1 adaptive average pools smaller than the map, weighted 1/2, 1/4,
    1/8, normalised by the sum of the weights; summed over levels."""
    total = _full(fstudent[0]).new_zeros(())
    for fs, ft in zip(fstudent, fteacher):
        fs, ft = _full(fs), _full(ft)
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt, tot = 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            cnt /= 2.0
            loss = (
                loss
                + F.mse_loss(
                    F.adaptive_avg_pool2d(fs, (size, size)), F.adaptive_avg_pool2d(ft, (size, size)), reduction="mean"
                )
                * cnt
            )
            tot += cnt
        total = total + loss / tot
    return total


@METHODS.register("reviewkd")
class ReviewKD(FeatureMethod):
    """ReviewKD (Chen et al., CVPR 2021) as its authors' CIFAR-100 code (dvlab-research/ReviewKD@cede6ea
    CIFAR-100/model/reviewkd.py, train.py:221-225): the student's stages ``stage1..N`` (post-activation,
    ``is_feat=True``) and its pooled embedding (as a 1x1 map) go through one ABF each, from the deepest up,
    each fusing the deeper level's output (the review path); every output is compared with the teacher's
    pre-activation stage (``preact=True``: for a WRN teacher the next BN's output, as the authors'
    model/wide_resnet_cifar.py:120-123; ``teacher_preact: false`` takes the stage outputs) or its embedding by the
    HCL loss. Channels and sizes
    come from the probe (the authors list them per architecture, reviewkd.py:90-150); the middle width is
    ``min(max_mid_channels, student embedding width)`` (reviewkd.py:69). The feature term's weight ramps up
    linearly, ``beta * min(1, epoch / warmup_epochs)`` (0-based epoch; train.py:225).

    parity: dvlab-research/ReviewKD@cede6ea CIFAR-100/model/reviewkd.py:20-86,160-177 (its ReviewKD.forward and
    hcl, with train.py:225's weight and warm-up) and mdistiller@a08d46f distillers/ReviewKD.py:66-103
    (forward_train), same ABF weights, same random features (resnet32x4->resnet8x4 shapes; the digits pair's
    aligned shapes), loss and gradient (student maps and every ABF parameter) max relative difference
    0.0e+00 in float64 and in float32."""

    description = (
        "ReviewKD: ce*CE + beta*min(1,epoch/warmup)*HCL(ABF review chain of student stages, teacher "
        "pre-activation stages), beta 5, warm-up 20 epochs"
    )
    needs = Needs(student=("logits", "stages", "embedding"), teacher=("preact_stages", "embedding"))
    params = feature_section(
        "ReviewKD",
        5.0,
        "ReviewKD@cede6ea CIFAR-100/script/reviewKD.sh:7 --kd-loss-weight 5.0 for resnet32x4->resnet8x4, "
        "mdistiller configs/cifar100/reviewkd.yaml:10; cifar100 --pair applies the script's per-pair weights: "
        "5.0 :1-9 (WRN, ShuffleV1 pairs), 8.0 resnet32x4->ShuffleV2 :11, 0.6 resnet56->resnet20 :13, 1.0 "
        "resnet110->resnet32 :15",
        warmup_epochs=Field(
            float,
            20.0,
            "epochs over which the feature weight ramps up linearly from 0 (ReviewKD "
            "CIFAR-100/train.py:50 --kd-warm-up 20; mdistiller engine/cfg.py:153); 0: none",
            min=0.0,
            max=1e6,
        ),
        max_mid_channels=Field(
            int,
            512,
            "the ABFs' middle width is min(this, the student's embedding width) "
            "(ReviewKD CIFAR-100/model/reviewkd.py:69; mdistiller engine/cfg.py:158)",
            min=1,
            max=1 << 16,
        ),
        teacher_preact=Field(
            bool,
            True,
            "compare with the teacher's pre-activation stages (ReviewKD "
            "CIFAR-100/train.py:222 preact=True; a WRN teacher's are the next block's bn1 output, "
            "model/wide_resnet_cifar.py:120-123); false: its stage outputs",
        ),
        teacher_mode=teacher_mode_field(
            "eval",
            "ReviewKD ImageNet/imagenet_amp.py:358 teacher.eval() (and mdistiller distillers/_base.py:19); the "
            "cifar100 recipe sets train, as CIFAR-100/train.py never calls teacher.eval()",
        ),
    )

    def __init__(self, params=None):
        super().__init__(params)
        t_stages = "preact_stages" if self.p["teacher_preact"] else "stages"
        self.needs = Needs(student=("logits", "stages", "embedding"), teacher=(t_stages, "embedding"))

    def _features(self, student, teacher):
        s_stages = [student[k] for k in stage_keys(student)]
        t_stages = [teacher[k] for k in stage_keys(teacher, pre=self.p["teacher_preact"])]
        s_stages, t_stages = aligned_last(s_stages, t_stages)
        emb_s, emb_t = student["embedding"], teacher["embedding"]
        return ([*s_stages, emb_s.reshape(*emb_s.shape[:2], 1, 1)], [*t_stages, emb_t.reshape(*emb_t.shape[:2], 1, 1)])

    def setup(self, probe: Probe) -> None:
        s, t = self._features(probe.s, probe.t)
        mid = min(self.p["max_mid_channels"], s[-1].shape[1])
        # built shallowest first, as reviewkd.py:70-71 (the same draws from the random stream)
        self.abfs = nn.ModuleList(
            [ABF(fs.shape[1], mid, ft.shape[1], i < len(s) - 1) for i, (fs, ft) in enumerate(zip(s, t))]
        )
        self.out_sizes = [tuple(ft.shape[2:]) for ft in t]

    def review(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF chain from the deepest level up (reviewkd.py:75-86); outputs shallowest first."""
        n = len(feats)
        out, res = self.abfs[n - 1](feats[n - 1], None, self.out_sizes[n - 1])
        results = [out]
        for i in range(n - 2, -1, -1):
            out, res = self.abfs[i](feats[i], res, self.out_sizes[i])
            results.insert(0, out)
        return results

    def loss(self, student, targets, teacher, ctx):
        s, t = self._features(student, teacher)
        warm = self.p["warmup_epochs"]
        ramp = min(1.0, ctx.epoch / warm) if warm > 0 else 1.0
        feat = hcl(self.review(s), [x.detach() for x in t])
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * ramp * feat}


# ----------------------------------------------------------------------------------------------------- OFD
def bn_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """OFD's margin per channel from the BN before the ReLU (clovaai/overhaul-distillation CIFAR-100/
    distiller.py:29-41): the expectation of the negative part of N(beta, |gamma|), ``beta - |gamma| *
    phi(beta/|gamma|) / Phi(-beta/|gamma|)`` where ``Phi(-beta/|gamma|) > 0.001``, else ``-3|gamma|``; shape
    (1, C, 1, 1). (Phi by ``erfc``, not scipy.) A channel with gamma = 0 (a constant beta) gets min(beta, 0)."""
    c = bn.num_features
    std = bn.weight.detach().abs().double().cpu().tolist() if bn.weight is not None else [1.0] * c
    mean = bn.bias.detach().double().cpu().tolist() if bn.bias is not None else [0.0] * c
    margin = []
    for s, m in zip(std, mean):
        if s == 0:
            margin.append(min(m, 0.0))
            continue
        cdf = 0.5 * math.erfc(m / s / math.sqrt(2.0))  # norm.cdf(-m / s)
        if cdf > 0.001:
            margin.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + m)
        else:
            margin.append(-3 * s)
    device = bn.weight.device if bn.weight is not None else None
    return torch.tensor(margin, dtype=torch.float32, device=device).view(1, c, 1, 1)


def ofd_distance(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 (distiller.py:9-13): the teacher clipped below at the margin, the squared difference
    summed where the student is above it or the teacher is positive."""
    target = torch.max(target, margin)
    loss = F.mse_loss(source, target, reduction="none")
    return (loss * ((source > target) | (target > 0)).to(loss.dtype)).sum()


def connector(s_channels: int, t_channels: int) -> nn.Sequential:
    """1x1 conv (no bias) + BN from the student's to the teacher's width (distiller.py:15-27), conv weights
    N(0, sqrt(2 / t_channels)), BN (1, 0)."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, stride=1, padding=0, bias=False)
    conv.weight.data.normal_(0, math.sqrt(2.0 / t_channels))
    bn = nn.BatchNorm2d(t_channels)
    bn.weight.data.fill_(1)
    bn.bias.data.zero_()
    return nn.Sequential(conv, bn)


@METHODS.register("ofd")
class OFD(FeatureMethod):
    """OFD (Heo et al., ICCV 2019) as its authors' CIFAR-100 code (clovaai/overhaul-distillation@76344a8
    CIFAR-100/distiller.py, train_with_distillation.py:88-91): per stage, the student's pre-ReLU map through a
    connector (1x1 conv + BN) against the teacher's pre-ReLU map clipped at the margin (from the teacher's BN
    before that ReLU, ``bn_margin``), by the partial L2 ``ofd_distance``; stage i of k weighted 1/2^(k-1-i)
    (the deepest 1), summed, divided by the batch size, times beta = 1/1000 (``loss_distill.sum() / batch_size
    / 1000``). The BN before each teacher stage's pre-activation is found from the teacher's graph
    (``feat_common.bn_before_preact``), not listed per architecture (the authors' ``get_bn_before_relu``).
    Stage counts that differ: the deepest stages both have, the teacher's map adaptive-average-pooled to the
    student's size, as mdistiller@a08d46f distillers/OFD.py:142-165 (with each paired stage's own margin).
    Needs the student's pre-activations (``preact_stages``: every lskd-bench CIFAR model, as RepDistiller's
    ``preact=True``, digits CNNs, torchvision ResNets); a teacher's must each be a BN's output or a sum with one
    (not ShuffleNet-V2's concatenation, which the authors do not support as a teacher either).

    parity: clovaai/overhaul-distillation@76344a8 CIFAR-100/distiller.py:9-72 with train_with_distillation.py:91
    (its Distiller with the same connector weights, margins from the same teacher BNs (random affine values,
    both margin branches; margins equal), same random features; resnet32x4->resnet8x4), loss max relative
    difference 0.0e+00 (float64) / 9.1e-08 (float32), gradient (student maps, connector parameters) 0.0e+00;
    mdistiller@a08d46f distillers/OFD.py:142-161 ofd_loss (also the digits pair: 3 vs 2 stages, pooled),
    loss <= 2.5e-16 (float64), gradient 0.0e+00."""

    description = (
        "OFD: ce*CE + beta*sum_i 2^-(k-1-i) partial-L2(connector(s_preact_i), max(t_preact_i, "
        "margin_i))/batch, beta 1e-3"
    )
    needs = Needs(student=("logits", "preact_stages"), teacher=("preact_stages",))
    params = feature_section(
        "OFD",
        1e-3,
        "overhaul-distillation CIFAR-100/train_with_distillation.py:91 "
        "loss_distill.sum() / batch_size / 1000; mdistiller engine/cfg.py:103",
        teacher_mode=teacher_mode_field(
            "train",
            "overhaul-distillation CIFAR-100/train_with_distillation.py:75 and ImageNet/:167 d_net.t_net.train(); "
            "mdistiller distillers/OFD.py:114-121",
        ),
    )

    def setup(self, probe: Probe) -> None:
        s_keys, t_keys = aligned_last(stage_keys(probe.s, pre=True), stage_keys(probe.t, pre=True))
        self.connectors = nn.ModuleList(
            [connector(probe.s[a].shape[1], probe.t[b].shape[1]) for a, b in zip(s_keys, t_keys)]
        )
        bns = bn_before_preact(probe.teacher, probe.t_layout, [k.removeprefix("preact_") for k in t_keys])
        for i, bn in enumerate(bns):
            self.register_buffer(f"margin{i + 1}", bn_margin(bn))

    def loss(self, student, targets, teacher, ctx):
        s, t = aligned_last(student.stages(pre=True), teacher.stages(pre=True))
        k = len(s)
        total = _full(s[0]).new_zeros(())
        for i, (fs, ft) in enumerate(zip(s, t)):
            fs = _full(self.connectors[i](fs))
            ft = _full(ft.detach())
            if ft.shape[2:] != fs.shape[2:]:
                ft = F.adaptive_avg_pool2d(ft, fs.shape[2:])
            total = total + ofd_distance(fs, ft, getattr(self, f"margin{i + 1}")) / 2 ** (k - i - 1)
        feat = total / s[0].shape[0]
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}
