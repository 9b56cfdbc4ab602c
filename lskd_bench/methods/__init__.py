"""Training objectives, one registry entry each.

A method is a ``Method`` subclass registered by name. The runner builds one instance per cell,
``method = cls(params, alpha=..., T=...)`` with ``params`` its own config section (``cfg[name]``,
typed by ``cls.params``), and calls ``method.loss(student_logits, targets, teacher_logits, ctx)`` on
the positions that count: one row per image, or one row per non-pad target token for translation.

What a method needs from its teacher is ``teacher_signal``:

- ``None``: no teacher (label-smoothed cross-entropy: teachers and the no-KD baseline);
- ``"logits"``: the teacher's logits on the same batch (word-level KD and every logit method);
- ``"targets"``: teacher-generated targets (sequence-level KD: the student trains on the teacher's beam
  outputs, which the task produces once per teacher; see ``Task.teacher_targets``).

A method with learnable parameters (a learnable temperature, say) is also an ``nn.Module``: the runner
adds its parameters to the student's optimizer and saves its state in every checkpoint.
Third-party methods register through the ``lskd_bench.methods`` entry-point group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..errors import UsageError
from ..registry import Registry
from ..schema import Field, Section
from .losses import kd_kl, kd_loss, ls_cross_entropy, smoothed_targets


@dataclass
class LossContext:
    """What a loss may read besides the logits: this cell's alpha/T and where training stands."""

    alpha: float = 0.0
    T: Optional[float] = None
    epoch: int = 0  # 0-based epoch of this step
    epochs: int = 1  # epochs of the run
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class of training objectives; subclasses set the class attributes and ``loss``."""

    description: str = ""
    teacher_signal: Optional[str] = "logits"  # None | "logits" | "targets"
    uses_temperature: bool = True  # False: one student per alpha, the T axis does not apply
    task_kinds: tuple[str, ...] = ("classification", "translation")
    params: Section = Section({})

    def __init__(self, params: Optional[dict[str, Any]] = None, *, alpha: float = 0.0, T: Optional[float] = None):
        self.p = self.params.check(params or {}, type(self).__name__)
        self.alpha, self.T = alpha, T

    @classmethod
    def identity_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """The part of the method's checked parameters ``p`` that a student cell's hash covers."""
        return cls.params.identity(p)

    @property
    def needs_teacher(self) -> bool:
        return self.teacher_signal is not None

    def loss(self, student_logits: torch.Tensor, targets: torch.Tensor, teacher_logits: Optional[torch.Tensor],
             ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError

    def report(self) -> dict[str, float]:
        """Values worth logging per epoch (a learned temperature...), saved in the history."""
        return {}


METHODS: Registry[type[Method]] = Registry("method", "lskd_bench.methods")
TEACHER_METHOD = "ls"  # what teachers and the no-KD baseline train with


@METHODS.register("ls")
class LabelSmoothing(Method):
    """Cross-entropy on label-smoothed targets ``(1 - alpha) * onehot + alpha / K``; alpha = 0 is plain CE.

    Equal to the official code's ``(1 - alpha) * NLL + alpha * mean_k(-log p_k)``."""

    description = "cross-entropy with label smoothing alpha (teachers and the no-KD baseline)"
    teacher_signal = None
    uses_temperature = False

    def loss(self, student_logits, targets, teacher_logits, ctx):
        return ls_cross_entropy(student_logits, targets, ctx.alpha)


@METHODS.register("kd")
class HintonKD(Method):
    """Hinton et al. (2015), "Distilling the knowledge in a neural network", eq. (2) with the T^2 factor:
    ``(1 - lambda) * CE(y, s) + lambda * T^2 * KL(softmax(t/T) || softmax(s/T))``. For translation this is
    word-level KD: one row per non-pad target position."""

    description = "Hinton KD: (1-lambda)*CE + lambda*T^2*KL(softmax(t/T) || softmax(s/T))"
    params = Section(
        {
            "lambda": Field(float, 0.5, "weight of the KD term (1: pure KD, no cross-entropy)", min=0.0, max=1.0),
            "t_squared": Field(bool, True, "scale the KD term by T^2 (Hinton et al.)"),
        },
        "Hinton KD",
    )

    def loss(self, student_logits, targets, teacher_logits, ctx):
        return kd_loss(student_logits, teacher_logits, targets, T=float(ctx.T), lam=self.p["lambda"],
                       t_squared=self.p["t_squared"])


@METHODS.register("seqkd")
class SequenceKD(Method):
    """Sequence-level KD (Kim & Rush, 2016, "Sequence-Level Knowledge Distillation", section 3.2): the student
    is trained with cross-entropy on the teacher's beam-search translations of the training sources instead of
    the references. The task produces those targets once per teacher (``Task.teacher_targets``); the loss
    itself is (label-smoothed) cross-entropy on them. No temperature: one student per alpha."""

    description = "sequence-level KD (Kim & Rush 2016): cross-entropy on the teacher's beam outputs"
    teacher_signal = "targets"
    uses_temperature = False
    task_kinds = ("translation",)
    params = Section({"label_smoothing": Field(float, 0.0, "label smoothing of the student's targets", min=0.0, max=1.0,
                                               max_exclusive=True)}, "sequence-level KD")

    def loss(self, student_logits, targets, teacher_logits, ctx):
        return ls_cross_entropy(student_logits, targets, self.p["label_smoothing"])


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def build_method(name: str, cfg: dict[str, Any], *, alpha: float = 0.0, T: Optional[float] = None) -> Method:
    cls = METHODS.get(name)
    return cls(cfg.get(name), alpha=alpha, T=T)


def check_student_methods(names: list[str], task_kind: str) -> None:
    """Each name is a known KD method that applies to ``task_kind`` (UsageError otherwise)."""
    if not names:
        raise UsageError("methods needs at least one KD method")
    kd_names = [n for n, c in METHODS.items() if c.teacher_signal is not None]
    for n in names:
        cls = METHODS.get(n) if n in METHODS else None
        if cls is None or cls.teacher_signal is None:
            raise UsageError(f"unknown KD method {n!r} (known: {', '.join(kd_names)})")
        if task_kind not in cls.task_kinds:
            ok = [k for k in kd_names if task_kind in METHODS.get(k).task_kinds]
            raise UsageError(f"method {n!r} does not apply to {task_kind} tasks (these do: {', '.join(ok)})")


def method_sections() -> dict[str, Section]:
    """The config section of every registered method that has parameters."""
    return {name: cls.params for name, cls in METHODS.items() if cls.params.fields}


from . import zoo  # noqa: E402,F401  (registers dkd, kd_std, dist, ttm, nkd, ctkd)

__all__ = [
    "METHODS",
    "TEACHER_METHOD",
    "LossContext",
    "Method",
    "build_method",
    "check_student_methods",
    "kd_kl",
    "kd_loss",
    "ls_cross_entropy",
    "method_class",
    "method_sections",
    "smoothed_targets",
]
