"""Training objectives, one registry entry each.

A method is a ``Method`` subclass registered by name. The runner builds one instance per cell,
``method = cls(params)`` with ``params`` its own config section (``cfg[name]``, typed by ``cls.params``).

What a method reads is ``needs`` (a ``Needs``): which named outputs of the student and of the teacher
(``lskd_bench.outputs``: ``logits``, ``embedding``, ``stage0..N``, ``preact_stageK``), whether it trains on
teacher-generated targets, whether it needs each sample's index in the training set (CRD's memory bank).
The teacher runs once per batch for a fused group and returns the union of what its members need, nothing else.
A method with a ``teacher_mode`` parameter (``teacher_mode_field``: ReviewKD, OFD) may ask for the teacher's
BatchNorm layers to normalise with the batch's statistics, as its authors' train-mode teacher does; members whose
teachers run in different modes never share a pass (``method_teacher_mode``).
A method may train on another view of the batch (``batch_view`` names it, ``train_view(batch)`` makes it: SSKD's
four rotations of each image): the student's and the teacher's training forwards both run on it, and members with
different views never share a pass; evaluation runs on the task's batch.

- A **logit method** (``Method``) implements ``loss(student_logits, targets, teacher_logits, ctx)``, called on the
  positions that count: one row per image, or one row per non-pad target token for translation. Its needs are
  ``teacher_signal``: ``None`` (no teacher: label-smoothed cross-entropy for teachers and the no-KD baseline),
  ``"logits"`` (word-level KD and every logit method), ``"targets"`` (sequence-level KD: the student trains on the
  teacher's beam outputs, which the task produces once per teacher; see ``Task.teacher_targets``).
- A **feature method** (``FeatureMethod``, an ``nn.Module``) declares ``needs`` and implements
  ``loss(student, targets, teacher, ctx)`` on ``Outputs`` (name -> tensor) and ``setup(probe)``, which builds its
  trainable parts (connectors, embeddings, a memory bank) sized from a probe forward of both models.

``loss`` returns a scalar tensor, or named terms (``{"ce": ..., "kd": ...}``) whose sum is the loss: each
term's epoch mean is logged (``loss_<name>`` in result.json's history, the progress bar, TensorBoard).
A method that is an ``nn.Module`` has its parameters trained with the student's optimizer and its state
(parameters and buffers) saved in every checkpoint; none of it is part of the student's exported weights. A method
whose inference is not the student's own forward (SimKD) says so with ``deployed(model)``: the model its cells
are evaluated as, its weights written beside the student's (``deployed.pt``).
``a+kd`` (e.g. ``crd+kd``) composes a feature method with Hinton KD (``Composite``).
Third-party methods register through the ``lskd_bench.methods`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..components import Component, Stage
from ..errors import UsageError
from ..outputs import Outputs
from ..registry import Registry
from ..schema import Field, Flag, Section
from .losses import kd_kl, kd_loss, kd_terms, ls_cross_entropy, smoothed_targets

Loss = torch.Tensor | dict[str, torch.Tensor]  # what Method.loss returns


def total_loss(loss: Loss) -> torch.Tensor:
    """A method's loss: the tensor itself, or the sum of its named terms (in their order)."""
    if not isinstance(loss, dict):
        return loss
    terms = iter(loss.values())
    total = next(terms)
    for t in terms:
        total = total + t
    return total


@dataclass(frozen=True)
class Needs:
    """What a method reads: named outputs of the student and of the teacher (``()``: no teacher), teacher-made
    targets (sequence-level KD), and the samples' indices in the training set (``ctx.indices``)."""

    student: tuple[str, ...] = ("logits",)
    teacher: tuple[str, ...] = ("logits",)
    teacher_targets: bool = False
    indices: bool = False

    @classmethod
    def from_signal(cls, signal: str | None) -> Needs:
        """The needs of a logit method's ``teacher_signal``."""
        if signal is None:
            return cls(teacher=())
        if signal == "targets":
            return cls(teacher=(), teacher_targets=True)
        return cls()

    @property
    def needs_teacher(self) -> bool:
        return bool(self.teacher) or self.teacher_targets

    @property
    def features(self) -> bool:
        """Reads more than logits (the runner captures named outputs)."""
        return set(self.student) != {"logits"} or bool(set(self.teacher) - {"logits"})

    def describe(self) -> str:
        parts = [f"student {'+'.join(self.student)}"]
        if self.teacher:
            parts.append(f"teacher {'+'.join(self.teacher)}")
        if self.teacher_targets:
            parts.append("teacher beam outputs")
        if self.indices:
            parts.append("sample indices")
        return ", ".join(parts)


@dataclass
class Probe:
    """What ``FeatureMethod.setup`` sizes its parts from: both models, their outputs on a probe batch (eval mode,
    no gradient), their layouts (``lskd_bench.outputs.Layout``: where each stage is) and the data's size."""

    student: nn.Module
    teacher: nn.Module
    s: Outputs
    t: Outputs
    s_layout: Any
    t_layout: Any
    num_samples: int
    num_classes: int
    labels: torch.Tensor | None = None  # the training samples' classes, by index (None: not known up front)


@dataclass
class LossContext:
    """What a loss may read besides the logits: where training stands, and this cell's grid values: ``alpha``
    is the label smoothing the cell itself trains with (a teacher's alpha; 0 for students, whose teacher's alpha
    lives in the teacher's logits), ``T`` the cell's temperature (None for methods without a T axis)."""

    alpha: float = 0.0
    T: float | None = None
    epoch: int = 0  # 0-based epoch of this step
    epochs: int = 1  # epochs of the run
    indices: torch.Tensor | None = None  # the batch's sample indices in the training set (needs.indices)
    batch: Any = None  # the step's batch as the task gives it (a method that runs the models on other views)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Site:
    """Where a method builds the parts it brings to a cell (``Method.components``): the student, its recipe
    (``hp``), the device, and ``probe()``: both models' outputs on a probe batch (``Probe``; built on the first
    call, which also sets up the capture of the student's named outputs ``needs.student``)."""

    student: nn.Module
    hp: dict[str, Any]
    device: torch.device
    probe: Callable[[], Probe]


class MethodState(Component):
    """A method's own parameters and buffers (connectors, a memory bank, a learned temperature): trained with the
    student's optimizer, kept in every checkpoint under ``method``, never part of the student's exported weights."""

    key = "method"

    def __init__(self, module: nn.Module, deployed: Callable[[nn.Module], nn.Module] | None = None):
        self.module = module
        self._deployed = deployed  # the method's ``deployed`` (None: the student is what the cell deploys)
        # what the main schedule trains: the parameters trainable now, after setup (an initialisation stage's
        # connector, frozen by setup and trained by the stage alone, stays out even once the stage unfreezes it)
        self.trainable = [p for p in module.parameters() if p.requires_grad]

    def params(self) -> list[nn.Parameter]:
        return self.trainable

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.module.load_state_dict(state)

    def deployed(self, model: nn.Module) -> nn.Module:
        return model if self._deployed is None else self._deployed(model)


class InitStage(Component):
    """A method's initialisation stage (RepDistiller's AB, FT, FSP: ``helper/pretrain.py`` ``init``): the first
    ``epochs`` epochs of the cell train ``modules`` alone with the method's ``init_loss`` and their own SGD at a
    constant lr, the rest of the student in eval mode (``model_s.eval(); init_modules.train()``)."""

    key = "init"

    def __init__(self, epochs: int, stage: Stage):
        self.lead_epochs, self._stage = epochs, stage

    def stage(self, epoch: int) -> Stage | None:
        return self._stage if epoch < self.lead_epochs else None

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self._stage.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self._stage.opt.load_state_dict(state["optimizer"])


class Method:
    """Base class of training objectives; subclasses set the class attributes and ``loss``."""

    description: str = ""
    teacher_signal: str | None = "logits"  # None | "logits" | "targets" (a logit method's needs)
    needs: Needs = Needs()  # derived from teacher_signal unless a class declares it
    uses_temperature: bool = True  # False: one student per alpha, the T axis does not apply
    task_kinds: tuple[str, ...] = ("classification", "translation")
    params: Section = Section({})
    batch_view: str | None = None  # the name of another view of the batch the method trains on (``train_view``)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "needs" not in cls.__dict__ and "teacher_signal" in cls.__dict__:
            cls.needs = Needs.from_signal(cls.teacher_signal)

    def __init__(self, params: dict[str, Any] | None = None):
        self.p = self.params.check(params or {}, registered_name(type(self)))  # alpha and T: ctx.alpha / ctx.T

    @classmethod
    def identity_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """The part of the method's checked parameters ``p`` that a student cell's hash covers. ``teacher_mode:
        eval`` stays out of it: every teacher ran in eval mode before the option existed, so those cells keep
        their names; ``train`` changes the teacher's outputs and the hash."""
        out = cls.params.identity(p)
        if out.get("teacher_mode") == "eval":
            del out["teacher_mode"]
        return out

    @property
    def teacher_mode(self) -> str:
        """How the teacher runs for this method: "eval" (running BatchNorm statistics, every method's default) or
        "train" (the batch's statistics, as an authors' train-mode teacher: ``teacher_mode_field``)."""
        return self.p.get("teacher_mode", "eval")

    @property
    def needs_teacher(self) -> bool:
        return self.needs.needs_teacher

    def setup(self, probe: Probe) -> None:
        """Build trainable parts from a probe forward (feature methods); nothing for logit methods."""

    def components(self, site: Site) -> list[Component]:
        """The parts this method brings to a cell (``lskd_bench.components``): its trainable state, an
        initialisation stage, an optimizer that treats the loss terms apart... Called once per cell, after the
        student is built, in the cell's random stream (initial values drawn here are the cell's). A plain loss
        brings none."""
        return []

    def check_run(self, cfg: dict[str, Any]) -> None:
        """UsageError (one line) where the run's resolved config ``cfg`` cannot work with this method (checked by
        ``run`` and ``--dry-run`` before anything is written, for feature methods); nothing by default."""

    def compute(self, student: Outputs, targets: torch.Tensor, teacher: Outputs | None, ctx: LossContext) -> Loss:
        """The loss from named outputs: a logit method's ``loss`` on the logits."""
        return self.loss(student["logits"], targets, None if teacher is None else teacher.get("logits"), ctx)

    def loss(
        self,
        student_logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        ctx: LossContext,
    ) -> Loss:
        """The loss of one batch: a scalar tensor, or named terms whose sum is the loss."""
        raise NotImplementedError

    def report(self) -> dict[str, float]:
        """Values worth logging per epoch (a learned temperature...), saved in the history."""
        return {}

    def deployed(self, model: nn.Module) -> nn.Module:
        """The model a cell of this method is evaluated and exported as, given its student ``model``: the student
        itself, unless the method's inference adds parts of its own (SimKD: projector and reused teacher
        classifier; ``components.Component.deployed``)."""
        return model

    def train_view(self, batch: Any) -> Any:
        """The batch the student's and the teacher's training forwards run on: the task's batch itself, unless the
        method names another view (``batch_view``; SSKD: each image followed by its three rotations). Members whose
        views differ never share a teacher pass (``grid.fuse_units``); evaluation and the probe use the task's
        batch."""
        return batch


TEACHER_MODES = ("eval", "train")


def teacher_mode_field(default: str, source: str) -> Field:
    """A method's ``teacher_mode`` parameter: "eval" (the teacher's BatchNorm layers normalise with their running
    statistics, every other method's teacher) or "train" (with the batch's, as an authors' code that leaves the
    teacher in train mode under ``no_grad``: the running statistics are left as they are, they are not read in
    train mode). The teacher's outputs are a function of the batch alone either way (lskd-bench's models have
    no dropout), so fused and resumed training stay bit-identical."""
    return Field(
        str,
        default,
        f"teacher BatchNorm statistics: eval (running) or train (the batch's); {source}",
        choices=TEACHER_MODES,
    )


def method_teacher_mode(name: str, cfg: dict[str, Any]) -> str | None:
    """How method ``name``'s teacher runs under the resolved ``cfg`` ("eval" / "train"); None for a method that
    reads no teacher outputs. Members of one fused pass share one teacher forward: they must agree on this."""
    cls = method_class(name)
    if not cls.needs.teacher:
        return None
    return method_params(name, cfg).get("teacher_mode", "eval")


def feature_section(title: str, beta: float, source: str, **more: Field) -> Section:
    """A feature method's parameters: RepDistiller's loss weights (``gamma*CE + beta*feature``; its ``-r`` and
    ``-b``; the KD weight ``-a`` is ``compose.kd_weight`` of ``X+kd``) and the method's own."""
    return Section(
        {
            "ce": Field(float, 1.0, "weight of the cross-entropy term (RepDistiller's -r, gamma)", min=0.0, max=1e6),
            "beta": Field(float, beta, f"weight of the feature term (RepDistiller's -b; {source})", min=0.0, max=1e9),
            **more,
        },
        title,
    )


class ModuleMethod(nn.Module, Method):
    """A method with parameters or buffers of its own (a learned temperature, connectors): they move to the cell's
    device and are trained and checkpointed as the ``method`` component (``MethodState``)."""

    def __init__(self, params: dict[str, Any] | None = None):
        nn.Module.__init__(self)
        Method.__init__(self, params)

    def components(self, site: Site) -> list[Component]:
        self.to(site.device)
        return [MethodState(self, self.deployed)]


class FeatureMethod(ModuleMethod):
    """A method that reads named outputs (``needs``) and may own trainable parts, built in ``setup`` from a
    probe forward. ``loss(student, targets, teacher, ctx)`` receives ``Outputs`` of both models; the usual
    objective is ``ce * CE + beta * feature term`` (``self.cross_entropy`` gives the first)."""

    teacher_signal = "logits"
    needs = Needs(student=("logits",), teacher=())
    uses_temperature = False
    task_kinds = ("classification",)

    def compute(self, student: Outputs, targets: torch.Tensor, teacher: Outputs | None, ctx: LossContext) -> Loss:
        return self.loss(student, targets, teacher, ctx)

    def components(self, site: Site) -> list[Component]:
        """Its parts sized from a probe forward of both models (``setup``), then its state and, when it has one,
        its initialisation stage."""
        self.setup(site.probe())
        parts = super().components(site)
        epochs = int(self.init_stage())
        if epochs:
            modules = self.init_modules(site.student)
            lr = float(self.init_lr(site.hp))
            params = [p for m in modules for p in m.parameters() if p.requires_grad]
            hp = site.hp
            opt = torch.optim.SGD(params, lr=lr, momentum=hp["momentum"], weight_decay=hp["weight_decay"])
            stage = Stage("init", modules, opt, lr, self.init_loss, params, self.init_schedule(site.hp))
            parts.append(InitStage(epochs, stage))
        return parts

    def loss(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, ctx: LossContext) -> Loss:  # type: ignore[override]
        raise NotImplementedError

    # -- an initialisation stage (RepDistiller's AB, FT, FSP: helper/pretrain.py ``init``) -------------------
    def init_stage(self) -> int:
        """Epochs of the initialisation stage that runs first, as part of the cell (0: none)."""
        return 0

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        """What the initialisation stage trains (the rest of the student is in eval mode meanwhile)."""
        raise NotImplementedError

    def init_lr(self, hp: dict[str, Any]) -> float:
        """The initialisation stage's constant SGD learning rate (``hp``: the student's recipe)."""
        return float(hp["lr"])

    def init_schedule(self, hp: dict[str, Any]) -> Callable[[int], float] | None:
        """The stage's learning rate per epoch (0-based, from the cell's start), or None: ``init_lr`` throughout."""
        return None

    def init_loss(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, ctx: LossContext) -> Loss:
        raise NotImplementedError

    def cross_entropy(self, student: Outputs, targets: torch.Tensor) -> torch.Tensor:
        return self.p["ce"] * F.cross_entropy(student["logits"].float(), targets)

    def forward(self, *args: Any) -> torch.Tensor:  # nn.Module protocol; the runner calls compute()
        return self.compute(*args)


COMPOSE = Section(
    {
        "kd_weight": Field(
            float,
            1.0,
            "weight of the Hinton KD term T^2*KL of a composition X+kd (RepDistiller's -a; "
            "its README runs CRD+KD with -a 1)",
            min=0.0,
            max=1e6,
        ),
    },
    "composition X+kd",
)


class Composite(FeatureMethod):
    """``X+kd``: a feature method X plus ``compose.kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))`` on the
    logits (RepDistiller ``train_student.py``: ``loss = gamma * loss_cls + alpha * loss_div + beta * loss_kd`` with
    ``DistillKL``'s T^2). One student per alpha x T."""

    uses_temperature = True
    base: type[FeatureMethod] = FeatureMethod

    def __init__(self, params: dict[str, Any] | None = None):
        params = dict(params or {})
        compose = params.pop("compose", {})
        nn.Module.__init__(self)
        self.p = self.params.check(params, registered_name(self.base))
        self.compose = COMPOSE.check(compose, "compose")
        self.inner = self.base(self.p)
        n = self.inner.needs
        self.needs = Needs(
            student=tuple(dict.fromkeys((*n.student, "logits"))),
            teacher=tuple(dict.fromkeys((*n.teacher, "logits"))),
            indices=n.indices,
        )

    @classmethod
    def identity_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        p = dict(p)
        compose = p.pop("compose", {})
        return {**cls.base.identity_params(p), "compose": COMPOSE.identity(COMPOSE.check(compose, "compose"))}

    def setup(self, probe: Probe) -> None:
        self.inner.setup(probe)

    def check_run(self, cfg: dict[str, Any]) -> None:
        self.inner.check_run(cfg)

    def init_stage(self) -> int:
        return self.inner.init_stage()

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return self.inner.init_modules(student)

    def init_lr(self, hp: dict[str, Any]) -> float:
        return self.inner.init_lr(hp)

    def init_schedule(self, hp: dict[str, Any]) -> Callable[[int], float] | None:
        return self.inner.init_schedule(hp)

    def init_loss(self, student, targets, teacher, ctx):
        return self.inner.init_loss(student, targets, teacher, ctx)

    def train_view(self, batch: Any) -> Any:
        return self.inner.train_view(batch)

    def loss(self, student, targets, teacher, ctx):
        terms = self.inner.compute(student, targets, teacher, ctx)
        terms = dict(terms) if isinstance(terms, dict) else {"feat": terms}
        T = float(ctx.T)
        terms["kd"] = self.compose["kd_weight"] * T * T * kd_kl(student["logits"], teacher["logits"], T)
        return terms

    def report(self) -> dict[str, float]:
        return self.inner.report()

    def deployed(self, model: nn.Module) -> nn.Module:
        return self.inner.deployed(model)


def _composite(name: str) -> type[Method]:
    """The class of ``X+kd`` (X a feature method)."""
    first, _, second = name.partition("+")
    base = METHODS.get(first) if first in METHODS else None
    if second != "kd" or base is None or not issubclass(base, FeatureMethod) or issubclass(base, Composite):
        feats = [n for n, c in METHODS.items() if issubclass(c, FeatureMethod)]
        raise UsageError(
            f"unknown method {name!r}: a composition is FEATURE+kd with a feature method "
            f"({', '.join(feats) or 'none registered'})"
        )
    needs = base.needs
    cls = type(
        f"{base.__name__}PlusKD",
        (Composite,),
        {
            "base": base,
            "params": base.params,
            "batch_view": base.batch_view,
            "needs": Needs(
                student=tuple(dict.fromkeys((*needs.student, "logits"))),
                teacher=tuple(dict.fromkeys((*needs.teacher, "logits"))),
                indices=needs.indices,
            ),
            "description": f"{first} + Hinton KD: {base.description} + compose.kd_weight*T^2*KL",
        },
    )
    return cls


# the built-in method modules register themselves when the registry is first looked up: methods/zoo.py (dkd,
# kd_std, dist, ttm, nkd, ctkd), the feature methods (feat_*.py), the methods that bring an optimizer (dot.py) and
# SSKD (sskd.py: trains on rotated views, with a teacher-head stage)
METHODS: Registry[type[Method]] = Registry(
    "method",
    "lskd_bench.methods",
    builtin=(
        "lskd_bench.methods.zoo",
        "lskd_bench.methods.feat_repd",
        "lskd_bench.methods.feat_crd",
        "lskd_bench.methods.feat_review",
        "lskd_bench.methods.feat_torchdistill",
        "lskd_bench.methods.feat_semckd",
        "lskd_bench.methods.feat_catkd",
        "lskd_bench.methods.feat_simkd",
        "lskd_bench.methods.dot",
        "lskd_bench.methods.sskd",
    ),
)
_COMPOSITES: dict[str, type[Method]] = {}
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
            "lambda": Field(
                float,
                1.0,
                "weight of the KD term (1, the default: pure KD, no cross-entropy, the paper's and "
                "the official code's objective)",
                min=0.0,
                max=1.0,
                flags=(
                    Flag(
                        "--kd-lambda",
                        help="kd method: weight of the KD term (default {default}: pure KD, the "
                        "paper's and the official code's objective)",
                    ),
                ),
            ),
            "t_squared": Field(
                bool,
                True,
                "scale the KD term by T^2 (Hinton et al.)",
                flags=(Flag("--no-t-squared", help="do not scale the KD term by T^2", const=False),),
            ),
        },
        "Hinton KD",
    )

    def loss(self, student_logits, targets, teacher_logits, ctx):
        return kd_terms(
            student_logits, teacher_logits, targets, T=float(ctx.T), lam=self.p["lambda"], t_squared=self.p["t_squared"]
        )


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
    params = Section(
        {
            "label_smoothing": Field(
                float, 0.0, "label smoothing of the student's targets", min=0.0, max=1.0, max_exclusive=True
            )
        },
        "sequence-level KD",
    )

    def loss(self, student_logits, targets, teacher_logits, ctx):
        return ls_cross_entropy(student_logits, targets, self.p["label_smoothing"])


def registered_name(cls: type) -> str:
    """The name ``cls`` is registered under (its config section: errors name ``kd.lambda``), else its class name."""
    return next((n for n, c in METHODS.items() if c is cls), cls.__name__)


def method_class(name: str) -> type[Method]:
    if "+" in name:
        if name not in _COMPOSITES:
            _COMPOSITES[name] = _composite(name)
        return _COMPOSITES[name]
    return METHODS.get(name)


def method_params(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The config a method is built with: its own section (a composition ``X+kd``: X's, and ``compose``)."""
    cls = method_class(name)
    if issubclass(cls, Composite):
        return {**cfg[name.partition("+")[0]], "compose": cfg["compose"]}
    return cfg[name] if cls.params.fields else {}


def build_method(name: str, cfg: dict[str, Any]) -> Method:
    """The method ``name`` with its section of the resolved config ``cfg``."""
    return method_class(name)(method_params(name, cfg))


def check_student_methods(names: list[str], task_kind: str) -> None:
    """Each name is a known KD method that applies to ``task_kind`` (UsageError otherwise)."""
    if not names:
        raise UsageError("methods needs at least one KD method")
    kd_names = [n for n, c in METHODS.items() if c.needs.needs_teacher]
    for n in names:
        cls = (method_class(n) if "+" in n else METHODS.get(n)) if ("+" in n or n in METHODS) else None
        if cls is None or not cls.needs.needs_teacher:
            raise UsageError(f"unknown KD method {n!r} (known: {', '.join(kd_names)}, and FEATURE+kd compositions)")
        if task_kind not in cls.task_kinds:
            ok = [k for k in kd_names if task_kind in METHODS.get(k).task_kinds]
            raise UsageError(f"method {n!r} does not apply to {task_kind} tasks (these do: {', '.join(ok)})")


def method_sections() -> dict[str, Section]:
    """The config section of every registered method that has parameters, and ``compose`` (X+kd)."""
    sections = {name: cls.params for name, cls in METHODS.items() if cls.params.fields}
    if any(issubclass(cls, FeatureMethod) for _, cls in METHODS.items()):
        sections["compose"] = COMPOSE
    return sections


__all__ = [
    "METHODS",
    "TEACHER_METHOD",
    "TEACHER_MODES",
    "Composite",
    "FeatureMethod",
    "InitStage",
    "LossContext",
    "Method",
    "MethodState",
    "ModuleMethod",
    "Needs",
    "Probe",
    "Site",
    "build_method",
    "check_student_methods",
    "feature_section",
    "kd_kl",
    "kd_loss",
    "kd_terms",
    "ls_cross_entropy",
    "method_class",
    "method_params",
    "method_sections",
    "method_teacher_mode",
    "smoothed_targets",
    "teacher_mode_field",
    "total_loss",
]
