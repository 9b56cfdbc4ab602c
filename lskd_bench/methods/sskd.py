"""SSKD (Xu et al., ECCV 2020, "Knowledge Distillation Meets Self-Supervision"), registered as ``sskd`` (issue 38),
as its authors' code xuguodong03/SSKD@661b972 (``student.py``, ``wrapper.py``, ``cifar.py``).

- The batch: each image followed by its rotations by 90, 180 and 270 degrees (``rotated_views``: cifar.py:140-161),
  4B rows; both models' training forwards run on them in one pass (the reference's BatchNorm statistics are the 4B
  rows': student.py:233-245), through the generic ``Method.train_view`` hook (the member's forward and the group's
  teacher pass both call it; ``grid.fuse_units`` keeps SSKD's cells in their own fused groups). Each row keeps
  its image's label (the labels repeated 4 times); the loss reads the normal rows' (``targets[::4]``).
- Both networks carry a projection head (wrapper.py:13-17: Linear-ReLU-Linear on the pooled last feature, lskd-
  bench's ``embedding`` output): the student's is trained with the student (its optimizer, student.py:213); the
  teacher's is trained first, alone, by the method's lead stage (student.py:96-203: ``t_epochs`` epochs of the
  teacher's self-supervision loss on the detached feature, SGD lr 0.05 x 0.1 at epochs 30 and 45, the teacher in
  eval mode), then frozen.
- The student's objective on the 4B rows (``sskd_student_terms``: student.py:225-295) and the teacher head's
  (``sskd_teacher_loss``: student.py:124-152), checked op for op by tests/methods/test_sskd.py.
- Evaluation is on the normal view only (student.py:326-336): the task's, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..outputs import Outputs
from ..schema import Field, Section
from . import METHODS, FeatureMethod, LossContext, Needs, Probe
from .feat_common import set_trainable

SSKD_SRC = "xuguodong03/SSKD@661b972"
# student.py:36-48 defaults: weights, temperatures, the kept fraction of wrongly ranked rows
SSKD_DEFAULTS = {
    "ce_weight": 0.1,
    "kd_weight": 0.9,
    "tf_weight": 2.7,
    "ss_weight": 10.0,
    "kd_T": 4.0,
    "tf_T": 4.0,
    "ss_T": 0.5,
    "ratio_tf": 1.0,
    "ratio_ss": 0.75,
}


def rotated_views(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (4B, C, H, W): each image followed by its rotations by 90, 180 and 270 degrees
    (``np.rot90(img, k)`` of an HWC image, cifar.py:147-161: counter-clockwise in the image plane)."""
    return torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1).flatten(0, 1)


def _similarity(rep: torch.Tensor) -> torch.Tensor:
    """(3B, B) cosine similarities of each rotated row's representation to each normal row's (student.py:137-146,
    264-274)."""
    nor, aug = _split(rep)
    return F.cosine_similarity(aug.unsqueeze(2), nor.t().unsqueeze(0), dim=1)


def _split(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(rows.shape[0], device=rows.device) % 4
    return rows[idx == 0], rows[idx != 0]


def _kept(scores: torch.Tensor, target: torch.Tensor, ratio: float) -> torch.Tensor:
    """The rows to distil, in order (student.py:250-259, 276-283): every row whose target the teacher ranks first,
    and the first ``int(ratio * wrong)`` of the others by the target's rank (the reference's argsort)."""
    order = torch.argsort(scores, dim=1, descending=True)
    rank = torch.argmax(torch.eq(order, target.unsqueeze(1)).long(), dim=1)
    index = torch.argsort(rank)
    wrong = torch.nonzero(rank, as_tuple=True)[0].numel()
    keep = (scores.shape[0] - wrong) + int(wrong * ratio)
    return torch.sort(index[:keep])[0]


def sskd_student_terms(
    s_logits: torch.Tensor,
    s_rep: torch.Tensor,
    t_logits: torch.Tensor,
    t_rep: torch.Tensor,
    targets: torch.Tensor,
    p: dict[str, float] = SSKD_DEFAULTS,
) -> dict[str, torch.Tensor]:
    """The student's terms on the 4B rows (``rotated_views``): logits and projection-head outputs of both models,
    the B labels. ``ce``: CE of the normal rows; ``kd``: T^2 KL of the normal rows at ``kd_T``; ``tf``: T^2 KL of
    the rotated rows at ``tf_T``, over the rows the teacher ranks the label of highly (``ratio_tf``); ``ss``:
    T^2 KL at ``ss_T`` between the two models' similarity rows of each rotated image to the B normal images,
    over the rows the teacher matches best (``ratio_ss``). Each weighted as student.py:295."""
    batch = targets.shape[0]
    s_nor, s_aug = _split(s_logits)
    t_nor, t_aug = (x.detach() for x in _split(t_logits))
    aug_knowledge = F.softmax(t_aug / p["tf_T"], dim=1)
    tf_index = _kept(aug_knowledge, targets.unsqueeze(1).expand(-1, 3).reshape(-1), p["ratio_tf"])
    s_simi, t_simi = _similarity(s_rep), _similarity(t_rep).detach()
    ss_index = _kept(t_simi, torch.arange(batch, device=targets.device).unsqueeze(1).expand(-1, 3).reshape(-1),
                     p["ratio_ss"])  # fmt: skip

    def kl(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
        log_s, pt = F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1)
        return F.kl_div(log_s, pt, reduction="batchmean") * T * T

    return {
        "ce": p["ce_weight"] * F.cross_entropy(s_nor, targets),
        "kd": p["kd_weight"] * kl(s_nor, t_nor, p["kd_T"]),
        "tf": p["tf_weight"] * kl(s_aug[tf_index], t_aug[tf_index], p["tf_T"]),
        "ss": p["ss_weight"] * kl(s_simi[ss_index], t_simi[ss_index], p["ss_T"]),
    }


def sskd_teacher_loss(t_rep: torch.Tensor) -> torch.Tensor:
    """The teacher's self-supervision loss on the 4B rows (student.py:137-150): the cross-entropy of each rotated
    row's cosine similarities to the B normal rows, its own image the class; ``t_rep`` the projection head's
    output on the (detached) pooled feature."""
    batch = t_rep.shape[0] // 4
    target = torch.arange(batch, device=t_rep.device).unsqueeze(1).expand(-1, 3).reshape(-1)
    return F.cross_entropy(_similarity(t_rep), target)


def projection_head(dim: int) -> nn.Sequential:
    """wrapper.py:12-17: ``Linear(d, d) - ReLU - Linear(d, d)`` on the pooled last feature (``d`` its width)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


def _student_py(line: str) -> str:
    return f"{SSKD_SRC} student.py:{line}"


@METHODS.register("sskd")
class SSKD(FeatureMethod):
    """SSKD (Xu et al., ECCV 2020) as xuguodong03/SSKD@661b972 student.py: the student trains on each image and its
    three rotations (``batch_view`` "rotations", 4B rows, one BatchNorm pass as the reference's) with
    ``ce_weight`` CE of the normal rows + ``kd_weight`` T^2 KL of the normal rows at the grid's T + ``tf_weight``
    tf_T^2 KL of the rotated rows the teacher ranks the label of highly (``ratio_tf``) + ``ss_weight`` ss_T^2 KL
    between the two models' similarity rows (rotated image vs the B normal images, through each model's
    projection head) over the rows the teacher matches best (``ratio_ss``) (student.py:225-295). The teacher's
    projection head is trained first, ``t_epochs`` epochs alone (the method's lead stage: student.py:96-203,
    SGD ``t_lr`` x ``t_gamma`` at ``t_milestones``, the student's momentum and weight decay, 0.9 and 5e-4 there),
    then frozen; the student's head trains with the student. Defaults: student.py:27-49.

    Temperature: the reference's ``--kd-T`` 4 (student.py:44) is the grid's T (``uses_temperature``: its
    published numbers are the T = 4 cell), as dot and mlkd take their KD temperature; ``tf_T`` and ``ss_T`` are
    the method's own.

    Deviations, stated: the reference's teacher head is trained once per teacher; here each SSKD cell trains its
    own in its lead stage (the same for every cell of one teacher and seed: a cell is self-contained), and the
    student's forward still runs (eval mode, unused) during that stage. The reference flips before rotating
    (cifar.py:143-145) and crops each rotation apart (its transform runs on each of the four): here the task's
    augmented image is rotated, so the four rows share one crop. Not composable with ``+kd`` usefully (SSKD
    already holds its KD term).

    parity: xuguodong03/SSKD@661b972 student.py:137-150 and 235-295 transcribed op for op in
    tests/methods/test_sskd.py (the registered method's loss and gradients against the reference ops)."""

    description = (
        "SSKD (Xu et al. 2020): CE + KD + rotated-view KD + similarity KD on 4 rotations; a teacher-head stage "
        "(t_epochs) first"
    )
    needs = Needs(student=("logits", "embedding"), teacher=("logits", "embedding"))
    uses_temperature = True
    batch_view = "rotations"
    params = Section({
        "ce_weight": Field(float, 0.1, f"weight of the normal rows' cross-entropy ({_student_py('39')})", min=0.0),
        "kd_weight": Field(float, 0.9, "weight of the normal rows' T^2 KL at the grid's T (student.py:40; "
                           "its --kd-T 4, :44, is the T = 4 cell)", min=0.0),
        "tf_weight": Field(float, 2.7, "weight of the rotated rows' KL (student.py:41)", min=0.0),
        "ss_weight": Field(float, 10.0, "weight of the self-supervision similarity KL (student.py:42)", min=0.0),
        "tf_T": Field(float, 4.0, "temperature of the rotated rows' KL (student.py:45)", min=0.0, min_exclusive=True),
        "ss_T": Field(float, 0.5, "temperature of the similarity KL (student.py:46)", min=0.0, min_exclusive=True),
        "ratio_tf": Field(float, 1.0, "kept fraction of the rotated rows whose label the teacher does not rank first "
                          "(student.py:48)", min=0.0, max=1.0),
        "ratio_ss": Field(float, 0.75, "kept fraction of the rotated rows the teacher does not match to their own "
                          "image first (student.py:49)", min=0.0, max=1.0),
        "t_epochs": Field(int, 60, "epochs of the teacher-head stage, before the student's (student.py:27)",
                          min=0, max=100000),
        "t_lr": Field(float, 0.05, "the teacher-head stage's initial SGD lr (student.py:31)", min=0.0),
        "t_milestones": Field([int], [30, 45], "the teacher-head stage's epochs (1-based ends) after which its lr "
                              "is multiplied by t_gamma (student.py:36, MultiStepLR :100)"),
        "t_gamma": Field(float, 0.1, "the teacher-head stage's lr decay (student.py:34)", min=0.0),
    }, "SSKD")  # fmt: skip

    def train_view(self, batch: Any) -> Any:
        x, y = batch
        if x.ndim != 4 or x.shape[2] != x.shape[3]:
            raise UsageError(f"method sskd rotates square images (N, C, H, H); got a batch of shape {tuple(x.shape)}")
        return rotated_views(x), y.repeat_interleave(4)

    def setup(self, probe: Probe) -> None:
        self.s_head = projection_head(probe.s["embedding"].shape[1])
        self.t_head = projection_head(probe.t["embedding"].shape[1])
        set_trainable([self.t_head], False)  # trained by the lead stage only (init_modules), then frozen

    def init_stage(self) -> int:
        return int(self.p["t_epochs"])

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        set_trainable([self.t_head], True)
        return [self.t_head]

    def init_lr(self, hp: dict[str, Any]) -> float:
        return float(self.p["t_lr"])

    def init_schedule(self, hp: dict[str, Any]) -> Callable[[int], float]:
        lr, gamma, milestones = float(self.p["t_lr"]), float(self.p["t_gamma"]), list(self.p["t_milestones"])
        return lambda epoch: lr * gamma ** sum(1 for m in milestones if epoch >= m)  # MultiStepLR, stepped per epoch

    def init_loss(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, ctx: LossContext):
        return {"teacher_ss": sskd_teacher_loss(self.t_head(teacher["embedding"].detach()))}

    def loss(self, student, targets, teacher, ctx):
        s_rep = self.s_head(student["embedding"])
        with torch.no_grad():
            t_rep = self.t_head(teacher["embedding"])
        p = {**self.p, "kd_T": float(ctx.T)}
        return sskd_student_terms(student["logits"], s_rep, teacher["logits"], t_rep, targets[::4], p)
