"""Feature methods of RepDistiller's CIFAR-100 benchmark (HobbitLong/RepDistiller@b84f547,
``distiller_zoo/*.py``, ``train_student.py``): FitNet, ...

Each loss is ``ce * CE(s, y) + beta * L_feat`` with RepDistiller's default weights (its ``-r 1 -a 0 -b BETA``,
``scripts/run_cifar_distill.sh``); the student's CE is computed as in ``train_student.py``.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import UsageError
from . import METHODS, FeatureMethod, Needs, Probe, feature_section
from ..schema import Field


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
            raise UsageError(f"FitNet cannot regress a student map of shape {tuple(s_shape)} onto a teacher map of "
                             f"shape {tuple(t_shape)} (the student map is smaller and not half the size)")
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


@METHODS.register("fitnet")
class FitNet(FeatureMethod):
    """FitNets (Romero et al., ICLR 2015), as RepDistiller's ``HintLoss``: MSE between ``ConvReg(student
    stage_h)`` and the teacher's ``stage_h`` (``hint_layer`` 2), weight beta 100 (``run_cifar_distill.sh``).
    RepDistiller trains the regressor jointly with the student (its two-stage variant is not the benchmark's)."""

    description = "FitNet hints: ce*CE + beta*MSE(ConvReg(s_stage), t_stage), beta 100, stage 2"
    needs = Needs(student=("logits", "stage2"), teacher=("stage2",))  # the default hint_layer's
    params = feature_section("FitNet", 100.0, "run_cifar_distill.sh", hint_layer=Field(
        int, 2, "the stage whose output is the hint (RepDistiller --hint_layer: feat[2], the second stage)",
        min=0, max=64))

    def __init__(self, params=None):
        super().__init__(params)
        self.stage = f"stage{self.p['hint_layer']}"
        self.needs = Needs(student=("logits", self.stage), teacher=(self.stage,))

    def setup(self, probe: Probe) -> None:
        self.regressor = ConvReg(tuple(probe.s[self.stage].shape[1:]), tuple(probe.t[self.stage].shape[1:]))

    def loss(self, student, targets, teacher, ctx):
        hint = F.mse_loss(self.regressor(student[self.stage]), teacher[self.stage])
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * hint}
