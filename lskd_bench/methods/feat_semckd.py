"""SemCKD, cross-layer distillation with semantic calibration (Chen et al., AAAI 2021), as its authors' code
(DefangChen/SemCKD@ebe5db1: ``models/util.py`` ``SelfA``, ``AAEmbed``, ``MLPEmbed``; ``distiller_zoo/SemCKD.py``
``SemCKDLoss``; ``train_student.py``, ``helper/loops.py``).

Every student stage is matched to every teacher stage (``feat[1:-1]`` of both: lskd-bench's ``stages``), each pair
through its own convolutional regressor; a per-sample attention over the teacher stages, from the batch
similarity matrices of the two networks' stages, weighs the pairs' mean squared errors. Parity is measured in
tests/methods/test_feat_semckd.py against the reference transcribed op for op (float64, the same weights).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..schema import Field
from . import METHODS, FeatureMethod, Needs, Probe, feature_section


def _full(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class MLPEmbed(nn.Module):
    """Linear, ReLU, linear, L2 normalisation (SemCKD ``models/util.py:171-196``, ``MLPEmbed`` and ``Normalize``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear2(F.relu(self.linear1(x.reshape(x.shape[0], -1))))
        return x.div(x.pow(2).sum(1, keepdim=True).pow(1.0 / 2))


def aa_embed(c_in: int, c_out: int) -> nn.Sequential:
    """A student stage's regressor to a teacher stage's width (SemCKD ``AAEmbed``, ``models/util.py:121-144``):
    1x1 conv to ``2 c_out``, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv to ``c_out``, convolutions without bias."""
    mid = 2 * c_out
    return nn.Sequential(
        nn.Conv2d(c_in, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, c_out, 1, bias=False),
    )


@METHODS.register("semckd")
class SemCKD(FeatureMethod):
    """Cross-layer distillation with semantic calibration (Chen et al., AAAI 2021), as the authors' ``SelfA``
    (models/util.py:55-119@ebe5db1) and ``SemCKDLoss`` (distiller_zoo/SemCKD.py:8-23) on every stage of both
    networks (``feat_s[1:-1]``, ``feat_t[1:-1]``: train_student.py:266-273, helper/loops.py:134-136). Per stage,
    the batch similarity matrix ``F F^T`` of the flattened maps; its rows through a key MLP (teacher stages) or a
    query MLP (student stages) of ``batch_size`` inputs and ``batch_size // factor`` L2-normalised outputs; the
    attention ``softmax_j(q_i . k_j)`` per sample; student stage i through regressor (i, j) at the smaller of the
    two resolutions (the larger map adaptive-average-pooled); the loss ``sum_{b,i,j} attention * MSE_b(i, j) / (N *
    student stages)``, ``ce * CE + beta * loss``. Defaults: CE 1 and beta 400 (README.md:37, ``-r 1 -a 1 -b
    400``: the ``-a 1`` KD term is ``semckd+kd`` here), factor 4 (models/util.py:57), batch_size 64
    (train_student.py:47).

    The key and query MLPs read similarity rows as long as the training batch (``SelfA(..., opt.batch_size,
    ...)``, train_student.py:271), and the authors' loop skips a smaller batch (helper/loops.py:105-106). Here a
    smaller batch (an epoch's last, a short smoke run) has its rows zero-padded to ``batch_size`` (equal to the
    reference at the full batch), and a larger one is an error: set ``semckd.batch_size`` to the student's batch
    size (under several processes, the global batch); ``run`` refuses a student batch size above it up front.
    The attention is not detached (as there: the MLPs train through it). A non-square map is pooled to the other's
    height and width (the reference's squares).

    parity: DefangChen/SemCKD@ebe5db1 models/util.py:55-196 and distiller_zoo/SemCKD.py:14-23, transcribed op
    for op in tests/methods/test_feat_semckd.py::test_semckd_equals_authors_loss_gradient_and_state (float64,
    3 student stages 8/12/16 channels at 8/4/2, 2 teacher stages 10/20 at 4/2, N 8 = batch_size and N 6 against
    the reference on zero-padded rows, the same weights, three seeds): loss and gradient (student maps, every
    MLP and regressor) max relative difference 0.0e+00 / 0.0e+00; the BatchNorm running statistics
    equal."""

    description = "SemCKD (Chen et al. 2021): every student stage to every teacher stage, attention-weighted MSE"
    needs = Needs(student=("logits", "stages"), teacher=("stages",))
    params = feature_section(
        "SemCKD",
        400.0,
        "SemCKD README.md:37",
        batch_size=Field(
            int,
            64,
            "the key/query MLPs' input width, the training batch (SemCKD train_student.py:47, 271); a smaller "
            "batch's similarity rows are zero-padded to it, a larger one is an error",
            min=2,
            max=1 << 16,
        ),
        factor=Field(int, 4, "the MLPs' output width is batch_size // factor (SemCKD models/util.py:57)", min=1,
                     max=1 << 16),
    )  # fmt: skip

    def setup(self, probe: Probe) -> None:
        s_ch = [f.shape[1] for f in probe.s.stages()]
        t_ch = [f.shape[1] for f in probe.t.stages()]
        b, d = self.p["batch_size"], self.p["batch_size"] // self.p["factor"]
        if d < 1:
            raise ValueError(f"semckd: batch_size // factor is 0 ({b} // {self.p['factor']})")
        self.key = nn.ModuleList(MLPEmbed(b, d) for _ in t_ch)
        self.query = nn.ModuleList(MLPEmbed(b, d) for _ in s_ch)
        self.regressor = nn.ModuleList(nn.ModuleList(aa_embed(cs, ct) for ct in t_ch) for cs in s_ch)

    def check_run(self, cfg: dict[str, Any]) -> None:
        batch = cfg.get("student", {}).get("batch_size")
        if isinstance(batch, int) and batch > self.p["batch_size"]:
            raise UsageError(
                f"semckd.batch_size ({self.p['batch_size']}) is smaller than the student's batch size ({batch}): "
                f"its key/query MLPs read one similarity row per batch; set --set semckd.batch_size={batch}"
            )

    def _similarity(self, f: torch.Tensor) -> torch.Tensor:
        x = f.reshape(f.shape[0], -1)
        sim = torch.matmul(x, x.t())
        pad = self.p["batch_size"] - sim.shape[1]
        return F.pad(sim, (0, pad)) if pad else sim

    def attention(self, f_s: list[torch.Tensor], f_t: list[torch.Tensor]) -> torch.Tensor:
        """(N, student stages, teacher stages): each sample's softmax over the teacher stages."""
        n = f_s[0].shape[0]
        if n > self.p["batch_size"]:
            raise ValueError(
                f"semckd: a batch of {n} samples is larger than semckd.batch_size ({self.p['batch_size']}): set "
                "it to the student's batch size"
            )
        key = torch.stack([k(self._similarity(f)) for k, f in zip(self.key, f_t)], 2)
        query = torch.stack([q(self._similarity(f)) for q, f in zip(self.query, f_s)], 1)
        return F.softmax(torch.bmm(query, key), dim=-1)

    def loss(self, student, targets, teacher, ctx):
        f_s = [_full(f) for f in student.stages()]
        f_t = [_full(f) for f in teacher.stages()]
        n = f_s[0].shape[0]
        weight = self.attention(f_s, f_t)
        ind = []
        for i, fs in enumerate(f_s):
            for j, ft in enumerate(f_t):
                if fs.shape[2] > ft.shape[2]:
                    value, target = self.regressor[i][j](F.adaptive_avg_pool2d(fs, ft.shape[2:])), ft
                else:
                    value, target = self.regressor[i][j](fs), F.adaptive_avg_pool2d(ft, fs.shape[2:])
                ind.append(F.mse_loss(value, target, reduction="none").reshape(n, -1).mean(-1))
        ind_loss = torch.stack(ind, 1).reshape(n, len(f_s), len(f_t))
        feat = (weight * ind_loss).sum() / (1.0 * n * len(f_s))
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}
