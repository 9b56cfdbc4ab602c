"""CAT-KD, class attention transfer (Guo et al., CVPR 2023), as its authors' mdistiller-based code
(GzyAftermath/CAT-KD@4467073: ``mdistiller/distillers/CAT_KD.py``, the ``*_test`` models of
``mdistiller/models/cifar/*.py`` and the conversion in ``tools/train.py``).

The authors replace each network's final linear layer by a 1x1 convolution without bias applied before the global
pooling, so that the network's last feature map becomes a class activation map (CAM) per class; the teacher's
converted from its trained linear weights (tools/train.py:120-142). lskd-bench keeps every model as it is and
computes the same maps in the loss: the ``pooled_map`` output (the map global-pooled into the embedding) times
the head's weight, of the student (trained through it) and of the teacher (detached). Parity is measured in
tests/methods/test_feat_catkd.py against the reference transcribed op for op (float64, the same weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..outputs import head_module
from ..schema import Field
from . import METHODS, FeatureMethod, Needs, Probe, feature_section

CFG = "mdistiller/engine/cfg.py"


def _full(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def class_maps(fmap: torch.Tensor, weight: torch.Tensor, resolution: int) -> torch.Tensor:
    """The class activation maps ``W f(h, w)`` of a map (N, C, H, W) and a classifier weight (K, C), average-pooled
    to ``resolution`` x ``resolution``: (N, K, r, r). Pooled before the product (both are linear, so this is the
    pooled CAM of the authors' 1x1 convolution, ``CAT_loss``'s first step, at a fraction of the cost)."""
    pooled = F.adaptive_avg_pool2d(fmap, (resolution, resolution))
    return torch.einsum("nchw,kc->nkhw", pooled, weight)


def cat_loss(cam_s: torch.Tensor, cam_t: torch.Tensor, normalize: bool) -> torch.Tensor:
    """CAT-KD's loss (``CAT_loss``, CAT_KD.py:72-81) of pooled CAMs: the mean squared difference, each map first
    L2-normalised over its positions where ``normalize`` (``_Normalize``)."""
    if normalize:
        cam_s, cam_t = F.normalize(cam_s, dim=(2, 3)), F.normalize(cam_t, dim=(2, 3))
    return F.mse_loss(cam_s, cam_t)


def _linear_head(model: nn.Module, role: str, channels: int) -> nn.Linear:
    head = head_module(model)
    if not isinstance(head, nn.Linear) or head.in_features != channels:
        raise UsageError(
            f"method catkd: the {role}'s head ({type(model).__name__}.head) must be a linear layer on its "
            f"{channels}-channel pooled map (class activation maps need its weight)"
        )
    return head


@METHODS.register("catkd")
class CATKD(FeatureMethod):
    """Class attention transfer (Guo et al., CVPR 2023), as the authors' ``CAT_KD`` distiller
    (mdistiller/distillers/CAT_KD.py:25-81@4467073) on the converted models (``*_test``, e.g.
    models/cifar/resnet.py:314-340; tools/train.py:120-147): both networks' class activation maps, the map the
    model global-pools (``pooled_map``) through the head's weight (``class_maps``), average-pooled to
    ``resolution`` x ``resolution``, optionally L2-normalised per map, their mean squared difference
    (``cat_loss``); the loss ``ce * CE + beta * cat``. Defaults are the code's (mdistiller/engine/cfg.py:27, 36-38):
    CE 1, beta 400, resolution 2, normalize true; each CIFAR-100 pair's published config
    (configs/cifar100/CAT_KD/*.yaml) sets its own beta, resolution and normalize (lskd-bench's cifar100_pairs.yaml).

    Deviations, stated: the authors' student is the converted model, a bias-free 1x1 convolution whose pooled maps
    are its logits; here the student keeps its linear head (with its bias: the logits are ``GAP(CAM) + b``) and
    the CAM is the head's weight applied to the pooled map, so the CAT term trains the same weight and map as
    there. The teacher's CAM is its head's weight without the bias, as the authors' conversion (which drops the
    bias). The options the paper's ablations use (binarised CAMs, a subset of classes) are not offered.

    parity: GzyAftermath/CAT-KD@4467073 mdistiller/distillers/CAT_KD.py:29-30, 54-56, 72-81 and the
    ``conv_test`` of models/cifar/resnet.py:245, 328 (the head's weight as a bias-free 1x1 convolution,
    tools/train.py:139), transcribed op for op in tests/methods/test_feat_catkd.py::
    test_catkd_equals_authors_loss_and_gradient (float64, maps (8, 12, 8, 8) -> (8, 20, 4, 4), K 10, resolution 2
    and 4, normalize on and off, three seeds): loss and gradient (student map, student head weight) max relative
    difference 3.5e-16 / 6.0e-16 (we pool before the product, the reference after: rounding)."""

    description = "CAT-KD (Guo et al. 2023): MSE of pooled class activation maps (map x head weight), beta 400"
    needs = Needs(student=("logits", "pooled_map"), teacher=("pooled_map",))
    params = feature_section(
        "CAT-KD",
        400.0,
        f"CAT-KD {CFG}:37 (CAT_loss_weight; per CIFAR-100 pair: configs/cifar100/CAT_KD/*.yaml)",
        resolution=Field(int, 2, f"the CAMs' size after average pooling (CAM_RESOLUTION; {CFG}:38)", min=1, max=64),
        normalize=Field(bool, True, f"L2-normalise each pooled CAM over its positions (IF_NORMALIZE; {CFG}:27)"),
    ).extend(
        {
            "ce": Field(
                float,
                1.0,
                f"weight of the cross-entropy term (CE_WEIGHT, {CFG}:36; 0: onlyCAT, the paper's CAT)",
                min=0.0,
                max=1e6,
            )
        }
    )

    def setup(self, probe: Probe) -> None:
        # the heads are the models' own modules, read at each step (not parameters of the method: the student's
        # is trained with the student, the teacher's is fixed)
        self._heads = (
            _linear_head(probe.student, "student", probe.s["pooled_map"].shape[1]),
            _linear_head(probe.teacher, "teacher", probe.t["pooled_map"].shape[1]),
        )
        if self._heads[0].out_features != self._heads[1].out_features:
            raise UsageError("method catkd: the student and the teacher must have the same classes")

    def loss(self, student, targets, teacher, ctx):
        s_head, t_head = self._heads
        r, normalize = self.p["resolution"], self.p["normalize"]
        cam_s = class_maps(_full(student["pooled_map"]), _full(s_head.weight), r)
        cam_t = class_maps(_full(teacher["pooled_map"]), _full(t_head.weight.detach()), r)
        feat = cat_loss(cam_s, cam_t, normalize)
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}
