"""SSKD's losses (Xu et al., ECCV 2020, "Knowledge Distillation Meets Self-Supervision"), not yet a registered
method (issue 38).

What is here, checked against xuguodong03/SSKD@661b972 op for op (tests/methods/test_sskd.py): the student's
objective on a batch of B images and their three rotations (``sskd_student_terms``: student.py:225-295) and the
teacher's self-supervision objective that trains its projection head first (``sskd_teacher_loss``:
student.py:124-152), and the 4B-row batch they read (``rotated_views``: cifar.py:140-161 stacks each image's
rotations by 0, 90, 180 and 270 degrees, image by image).

What a registered ``sskd`` still needs (why it is not registered):
- the forward of both models on the 4B rotated rows in one pass (the reference's BatchNorm statistics are those of
  the 4B rows): the task's ``forward`` on ``rotated_views(x)`` in place of ``x``, with the teacher's pass on the
  same rows: today the member forwards the task's batch and the teacher runs once per fused group on it;
- both networks wrapped with a projection head (wrapper.py: Linear-ReLU-Linear on the pooled last feature, the
  student's trained with it, the teacher's trained alone first): the teacher's head as a method part trained by
  an initialisation ``Stage`` of 60 epochs with its own multistep schedule (lr 0.05, x 0.1 at 30 and 45:
  student.py:27,31,35, 96-100), which the ``Stage`` protocol's constant lr does not express;
- the student's inference on the normal view only (its accuracy, student.py:326-336): unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
