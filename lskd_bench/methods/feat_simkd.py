"""SimKD, knowledge distillation with the reused teacher classifier (Chen et al., CVPR 2022), as its authors' code
(DefangChen/SimKD@2b389c3: ``models/util.py`` ``SimKD``, ``train_student.py``, ``helper/loops.py``).

A projector maps the student's last feature map to the teacher's channels; the loss is the mean squared error to
the teacher's last map; at inference the student's prediction is the teacher's own (frozen) classifier applied to
the pooled projected map. The cell is therefore evaluated as the student, the projector and the teacher's
classifier together (``SimKD.deployed``). Parity is measured in tests/methods/test_feat_simkd.py against the
reference transcribed op for op (float64, the same weights).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..outputs import Layout, Tap, expand, head_module
from ..schema import Field
from . import METHODS, FeatureMethod, Needs, Probe, feature_section

REF = "DefangChen/SimKD@2b389c3"


def _full(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def projector(s_n: int, t_n: int, factor: int) -> nn.Sequential:
    """SimKD's ``transfer`` (models/util.py:201-213): 1x1 conv to ``t_n // factor``, BN, ReLU, 3x3 conv, BN, ReLU,
    1x1 conv to ``t_n``, BN, ReLU; convolutions without bias."""
    mid = t_n // factor
    return nn.Sequential(
        nn.Conv2d(s_n, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, t_n, 1, bias=False),
        nn.BatchNorm2d(t_n),
        nn.ReLU(inplace=True),
    )


def align(f_s: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The student map at the teacher's resolution ``size`` where it is larger (``SimKD.forward``'s spatial
    alignment, models/util.py:218-224: adaptive average pooling of the larger map)."""
    return F.adaptive_avg_pool2d(f_s, size) if f_s.shape[2] > size[0] else f_s


def reused_logits(head: nn.Module, mapped: torch.Tensor) -> torch.Tensor:
    """The teacher classifier on the globally pooled projected map (models/util.py:232-234)."""
    return head(F.adaptive_avg_pool2d(mapped, (1, 1)).view(mapped.shape[0], -1))


class SimKDDeployed(nn.Module):
    """What a SimKD cell is evaluated and exported as: ``head(pool(projector(align(student's last map))))``, the
    authors' ``validate_distill`` (helper/loops.py:278-283) with the teacher's map size fixed at setup (the
    teacher's forward there serves only its size). ``student``, ``projector`` and ``head`` (the frozen teacher
    classifier copied at setup) are its submodules, so its ``state_dict`` is the whole deployed model
    (``deployed.pt``) and ``head`` is the head ``analysis`` reads. ``train(mode)`` sets the student's mode alone:
    the projector runs in eval mode inside an evaluation and is left in the mode training keeps it in."""

    def __init__(self, student: nn.Module, layout: Layout, projector: nn.Module, head: nn.Module, size: tuple):
        super().__init__()
        self.student, self.projector, self.head = student, projector, head
        self._layout, self._stage, self._size = layout, expand(layout, ["last_stage"])[0], size

    def train(self, mode: bool = True) -> SimKDDeployed:
        self.training = mode
        self.student.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with Tap(self.student, self._layout, [self._stage]) as tap:
            self.student(x)
        was = self.projector.training
        self.projector.train(self.training)
        try:
            mapped = self.projector(align(_full(tap.out[self._stage]), self._size))
        finally:
            self.projector.train(was)
        return reused_logits(self.head, mapped)


@METHODS.register("simkd")
class SimKD(FeatureMethod):
    """Knowledge distillation with the reused teacher classifier (Chen et al., CVPR 2022), as the authors'
    ``SimKD`` module (models/util.py:188-236@2b389c3) and its branches of ``train_distill`` (helper/loops.py:150-153)
    and ``validate_distill`` (helper/loops.py:278-283). The student's last stage and the teacher's
    (``feat[-2]``, ``last_stage``; train_student.py:268-270), the larger map adaptive-average-pooled to the other's
    size; the student map through the projector (``projector``: 1x1 conv -> BN-ReLU -> 3x3 conv -> BN-ReLU ->
    1x1 conv -> BN-ReLU, middle width ``t_n // factor``); the loss ``ce * CE + beta * MSE(projected, teacher
    map)``, where CE is on the student's own head (``loss_cls`` of helper/loops.py:115, computed before the
    logits are replaced). Defaults are the README's run (README.md:43: ``-c 0 -d 0 -b 1``, no CE, no KD; the
    ``-d`` KD term is ``simkd+kd`` here, on the student's own logits as there) and factor 2
    (train_student.py:67; README.md:63-65 reports f = 8, 4, 2).

    Inference reuses the teacher's classifier: the cell is evaluated (metrics, selected epoch) as
    ``SimKDDeployed``, the teacher's ``head`` on the pooled projected map, the projector's BatchNorm on its
    running statistics (the reference's ``module_list`` in eval mode). The teacher's head is copied at setup into
    the method's state (checkpointed with it), frozen: no gradient, not in the optimizer (the reference's
    ``cls_t`` is the teacher's own module, outside ``trainable_list``). The training top-1 of the history
    (``train_top1``) is that of these reused-classifier logits in training mode (the reference's ``accuracy`` of
    ``logit_s = pred_feat_s``), not of the student's own head. Weights: ``model.pt`` / ``model_selected.pt`` stay
    the student's own state (loadable as its architecture by ``analyze`` and ``export``, which read the student's
    own head); ``deployed.pt`` / ``deployed_selected.pt`` hold the whole deployed model (keys ``student.*``,
    ``projector.*``, ``head.*``).

    Deviations, stated: with ``ce`` 0 the student's own head, which nothing deployed reads, gets a zero gradient
    (so weight decay) rather than none (the reference's ``-c 0`` leaves it untouched); the evaluated logits and
    every other parameter's update are the same. The teacher's map size for the deployed model is fixed at setup
    from the probe batch (one input size, as CIFAR's and the reference's). A non-square map is pooled to the
    other's height and width (the reference's squares).

    parity: DefangChen/SimKD@2b389c3 models/util.py:188-236 and helper/loops.py:150-153, transcribed op for op in
    tests/methods/test_feat_simkd.py::test_simkd_equals_authors_loss_and_gradient (float64, student maps 12
    channels at 8x8 and 4x4 against a 16-channel teacher at 4x4, factor 2 and 4, three seeds, the same weights):
    loss, reused-classifier logits and gradients (student map, every projector parameter) max relative
    difference 0.0e+00."""

    description = "SimKD (Chen et al. 2022): projector + MSE to the teacher's last map; the teacher's classifier reused"
    needs = Needs(student=("logits", "last_stage"), teacher=("last_stage",))
    params = feature_section(
        "SimKD",
        1.0,
        f"{REF} README.md:43, -b 1",
        factor=Field(int, 2, f"the projector's middle width is t_n // factor ({REF} train_student.py:67)", min=1,
                     max=1 << 16),
    ).extend(
        {
            "ce": Field(
                float,
                0.0,
                f"weight of the cross-entropy term on the student's own head ({REF} README.md:43, -c 0)",
                min=0.0,
                max=1e6,
            )
        }
    )  # fmt: skip

    def setup(self, probe: Probe) -> None:
        f_s, f_t = probe.s.stages()[-1], probe.t.stages()[-1]
        head = head_module(probe.teacher)
        if f_s.dim() != 4 or f_t.dim() != 4:
            raise UsageError("method simkd needs convolutional feature maps (N, C, H, W) in both models' last stage")
        if not isinstance(head, nn.Linear) or head.in_features != f_t.shape[1]:
            raise UsageError(
                f"method simkd: the teacher's head ({type(probe.teacher).__name__}.head) must be a linear layer on "
                f"its last stage's {f_t.shape[1]} pooled channels (SimKD reuses it as the student's classifier)"
            )
        if self.p["factor"] > f_t.shape[1]:
            raise UsageError(f"simkd.factor ({self.p['factor']}) exceeds the teacher's {f_t.shape[1]} channels")
        self.projector = projector(f_s.shape[1], f_t.shape[1], self.p["factor"])
        self.head = copy.deepcopy(head).requires_grad_(False)
        self._layout = probe.s_layout
        self._size = tuple(min(a, b) for a, b in zip(f_s.shape[2:], f_t.shape[2:]))
        self.register_buffer("hits", torch.zeros((), dtype=torch.long))  # this epoch's training top-1 count
        self.register_buffer("rows", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_of", torch.full((), -1, dtype=torch.long))  # the epoch they count

    def mapped(self, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the projected student map, the teacher map) at the smaller of the two resolutions."""
        if f_s.shape[2] > f_t.shape[2]:
            source, target = F.adaptive_avg_pool2d(f_s, f_t.shape[2:]), f_t
        else:
            source, target = f_s, F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
        return self.projector(source), target

    def loss(self, student, targets, teacher, ctx):
        trans, target = self.mapped(_full(student.stages()[-1]), _full(teacher.stages()[-1]))
        feat = F.mse_loss(trans, target)
        with torch.no_grad():  # the training top-1 of the reused classifier (the reference's logit_s = pred_feat_s)
            same = self.epoch_of == ctx.epoch  # a new epoch starts the counts afresh (no host sync)
            self.hits.mul_(same), self.rows.mul_(same), self.epoch_of.fill_(ctx.epoch)
            pred = reused_logits(self.head, trans.detach())
            self.hits += (pred.argmax(1) == targets).sum()
            self.rows += targets.numel()
        return {"ce": self.cross_entropy(student, targets), "feat": self.p["beta"] * feat}

    def report(self) -> dict[str, float]:
        rows = int(self.rows)
        return {"train_top1": 100.0 * int(self.hits) / rows} if rows else {}

    def deployed(self, model: nn.Module) -> nn.Module:
        return SimKDDeployed(model, self._layout, self.projector, self.head, self._size)
