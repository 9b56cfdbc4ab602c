"""Probing models for feature methods: a teacher's view shared by a fused group, the student's tap and the
method's setup from a probe forward, and the check ``run`` makes before anything is written (every output a
method needs exists in both models, and its parts can be sized)."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..methods import Method, Probe, build_method, method_class
from ..outputs import Layout, Look, Outputs, Tap, look
from ..tasks import Task, TaskData, iterate_batches


@dataclass
class TeacherView:
    """The fused group's teacher as feature methods see it: the model, where its named outputs are and its
    outputs on the probe batch ``x`` (built once per group, only when a member reads more than logits)."""

    model: nn.Module
    layout: Layout
    x: torch.Tensor
    probe: Outputs


@contextlib.contextmanager
def teacher_mode(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Run ``model`` (a teacher, under ``no_grad``) in ``mode`` for the block: "train" puts its BatchNorm layers
    in train mode without running statistics, so they normalise with the batch's (what an authors' train-mode
    teacher computes) and their buffers stay as they are (a teacher shared by cells or reloaded on resume gives the
    same outputs every time); "eval" or None leaves the model as it is (eval mode). Only BatchNorm changes:
    lskd-bench's models have no dropout, and the outputs stay a function of the batch alone. Restored after."""
    if mode != "train":
        yield
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in bns]
    for m in bns:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(bns, saved):
            m.training, m.track_running_stats = training, track


def teacher_view(teacher: nn.Module, data: TaskData, device: torch.device, needs: list) -> TeacherView:
    """The teacher's layout and its outputs (every member's teacher needs) on a probe batch of the first two
    training samples, unaugmented."""
    ds = data.split("train_eval")
    x, _ = next(iter(iterate_batches(ds, 2, indices=torch.arange(min(2, len(ds))), on_bad_sample="error")))
    x = x.to(device)
    names = list(dict.fromkeys(k for n in needs for k in n.teacher))
    seen = look(teacher, x, keep=True, preacts=wants_preacts(names))  # one forward: the layout and the outputs
    return TeacherView(teacher, seen.layout, x, seen.outputs(teacher, names))


def wants_preacts(names: Sequence[str]) -> bool:
    """Whether ``names`` (a method's needs, shorthands unexpanded) read a pre-activation."""
    return any(n.startswith("preact_") for n in names)


def method_probe(
    method: Method,
    model: nn.Module,
    view: TeacherView,
    num_samples: int,
    num_classes: int,
    labels: torch.Tensor | None = None,
    seen: Look | None = None,
) -> tuple[Tap, Probe]:
    """The student's tap for ``method.needs.student`` and the probe forward of both models a method sizes its parts
    from (``labels``: the training samples' classes, for methods that read sample indices; ``seen``: the student's
    probe forward on ``view.x`` already made, with its outputs kept)."""
    needs = method.needs.student
    seen = seen or look(model, view.x, keep=True, preacts=wants_preacts(needs))
    layout = seen.layout
    tap = Tap(model, layout, needs)
    s = seen.outputs(model, tap.names)
    t_names = [*Tap(view.model, view.layout, method.needs.teacher).names, "logits"]
    t = Outputs({k: view.probe[k] for k in t_names})
    return tap, Probe(model, view.model, s, t, layout, view.layout, num_samples, num_classes, labels)


def setup_method(
    method: Method,
    model: nn.Module,
    view: TeacherView,
    num_samples: int,
    num_classes: int,
    labels: torch.Tensor | None = None,
    seen: Look | None = None,
) -> Tap:
    """The student's tap, after ``method.setup`` from a probe forward of both models (``method_probe``)."""
    tap, probe = method_probe(method, model, view, num_samples, num_classes, labels, seen)
    method.setup(probe)
    return tap


# inputs up to this many values (CIFAR's and digits' 3x32x32, up to 3x64x64) are probed on the CPU: the first
# operation on the meta device imports torch._dynamo (~1.2 s of a run's start-up, measured 2026-12-07), far more than
# building and running such inputs' models on the CPU (resnet32x4, 7.4 M parameters: 0.09 s to build, 0.04 s for
# two 32 px images); larger inputs (ImageNet's, CUB's) on the meta device (no memory, no compute)
CPU_PROBE_VALUES = 3 * 64 * 64


def probe_device(shape: Sequence[int]) -> str:
    """Where a shapes-only probe forward on inputs of ``shape`` (one sample) runs: "cpu" or "meta"."""
    return "cpu" if math.prod(shape) <= CPU_PROBE_VALUES else "meta"


_FORWARD_ERRORS = (RuntimeError, AssertionError, ValueError, TypeError, IndexError)  # what a too small input raises


@dataclass
class ProbeModels:
    """The teacher and the student the checks before a run build once for both (``check_input_size``, then
    ``check_feature_methods``): CPU models built under seed 0 (teacher first), the probe batch ``x`` (two random
    samples drawn after them) and each model's probe forward made by the input-size check (its layout, and the
    outputs the run's feature methods read)."""

    teacher: nn.Module
    student: nn.Module
    x: torch.Tensor
    teacher_seen: Look | None  # None: describing the model failed (check_feature_methods says why)
    student_seen: Look | None

    @staticmethod
    def build(task: Task, cfg: dict[str, Any], shape: Sequence[int]) -> tuple[nn.Module, nn.Module, torch.Tensor]:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # library constructors' FutureWarnings (inception_v3's init...)
            torch.manual_seed(0)
            teacher = task.build_model(cfg["teacher"]["arch"], STAND_IN, cfg, cfg["teacher"]).eval()
            student = task.build_model(cfg["student"]["arch"], STAND_IN, cfg, cfg["student"])
            return teacher, student, torch.randn(2, *shape)


def _problem(exc: Exception, device: str) -> tuple[str, bool]:
    """(why a probe forward on ``device`` failed, whether that is the input's fault)."""
    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not isinstance(exc, _FORWARD_ERRORS):
        return f"{type(exc).__name__}: {why}", False
    return why, device != "meta" or "meta" not in why.lower()  # on meta: not what meta tensors cannot do


def _run_problem(model: nn.Module, x: torch.Tensor, device: str) -> tuple[str | None, bool]:
    """(why ``model`` cannot run ``x`` on ``device``, whether that is the input's fault); (None, False): it runs.
    Eval mode, no gradient; the model's mode and the random state are left as they were."""
    was_training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()(x)
    except Exception as exc:
        return _problem(exc, device)
    finally:
        model.train(was_training)
    return None, False


def _forward_problem(task: Task, arch: str, cfg: dict[str, Any], hp: dict[str, Any], shape, device: str):
    """(why the probe forward on ``device`` fails, whether that is the input's fault); (None, False): it works."""
    with warnings.catch_warnings():  # library constructors' FutureWarnings (inception_v3's init...)
        warnings.simplefilter("ignore")
        with torch.device(device):
            model = task.build_model(arch, STAND_IN, cfg, hp).eval()
        return _run_problem(model, torch.zeros(2, *shape, device=device), device)


def check_input_size(task: Task, cfg: dict[str, Any]) -> ProbeModels | None:
    """UsageError (one line naming arch and input size) if the teacher's or the student's architecture cannot take
    the task's inputs (a torchvision/timm classifier at an image size it does not support: inception_v3 at 32 px):
    one probe forward on the meta device (shapes only: no memory, no compute; on the CPU where the model does what
    meta tensors cannot). Small inputs' models (``probe_device``) are built on the CPU once for this check and
    ``check_feature_methods`` (returned; the teacher's forward is its layout's). Checked when a run's config is
    resolved (``run``, also ``--dry-run``)."""
    shape = task.probe_shape(cfg)
    if shape is None:
        return None
    if probe_device(shape) == "cpu":
        teacher, student, x = ProbeModels.build(task, cfg, shape)
        seen = {}
        for role, model in (("teacher", teacher), ("student", student)):
            names = _feature_needs(cfg, role)
            try:  # its forward is the check; its layout and outputs serve check_feature_methods
                seen[role] = look(model, x, keep=bool(names), preacts=wants_preacts(names))
            except Exception:
                seen[role] = None  # a plain forward tells whether the input is the problem
                why = _run_problem(model, x, "cpu")[0]
                if why is not None:
                    _refuse(task, cfg, role, shape, why)
        return ProbeModels(teacher, student, x, seen["teacher"], seen["student"])
    for role in ("teacher", "student"):
        arch, hp = cfg[role]["arch"], cfg[role]
        why, sure = _forward_problem(task, arch, cfg, hp, shape, "meta")
        if why is not None and not sure:
            why, _ = _forward_problem(task, arch, cfg, hp, shape, "cpu")
        if why is not None:
            _refuse(task, cfg, role, shape, why)
    return None


def _feature_needs(cfg: dict[str, Any], role: str) -> list[str]:
    """The outputs of the ``role`` model ("teacher" or "student") that the run's feature methods read (shorthands
    unexpanded): what the checks' probe forwards keep."""
    return [k for n in cfg["methods"] if method_class(n).needs.features for k in getattr(method_class(n).needs, role)]


def _refuse(task: Task, cfg: dict[str, Any], role: str, shape: Sequence[int], why: str) -> None:
    arch = cfg[role]["arch"]
    size = "x".join(map(str, shape[1:])) + (" px" if len(shape) == 3 else "")
    knob = f"data.image_size={cfg['data']['image_size']}; " if "image_size" in cfg.get("data", {}) else ""
    raise UsageError(
        f"{role} arch {arch} cannot take {task.name}'s inputs of {size} ({knob}{why[:200]}): choose another arch "
        "or input size"
    )


# the data a model is built for when only its shapes matter (probe forwards, multiply-adds): 10 classes
STAND_IN = TaskData(train=[], val=[], num_classes=10, class_names=[str(i) for i in range(10)])


def check_feature_methods(task: Task, cfg: dict[str, Any], models: ProbeModels | None = None) -> None:
    """UsageError (one line) if a feature method of ``cfg["methods"]`` needs an output the teacher or student
    lacks, or cannot size its parts from them: checked on freshly built models and a random probe batch (those of
    the input-size check, ``models``, when it built them), before any data is read or anything is written."""
    names = [n for n in cfg["methods"] if method_class(n).needs.features]
    if not names:
        return
    shape = task.probe_shape(cfg)
    if shape is None:
        raise UsageError(
            f"methods {', '.join(names)} read intermediate outputs, which task {task.name} does not give "
            "(they apply to the image tasks)"
        )
    if models is None:
        teacher, student, x = ProbeModels.build(task, cfg, shape)
        t_seen = s_seen = None
    else:
        teacher, student, x = models.teacher, models.student, models.x
        t_seen, s_seen = models.teacher_seen, models.student_seen
    t_names, s_names = _feature_needs(cfg, "teacher"), _feature_needs(cfg, "student")
    t_seen = t_seen or look(teacher, x, keep=True, preacts=wants_preacts(t_names))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name in names:
            method = build_method(name, cfg)
            try:
                view = TeacherView(teacher, t_seen.layout, x, t_seen.outputs(teacher, method.needs.teacher))
            except UsageError as exc:
                raise UsageError(f"method {name}: teacher {cfg['teacher']['arch']}: {exc}") from None
            try:
                s_seen = s_seen or look(student, x, keep=True, preacts=wants_preacts(s_names))
                setup_method(method, student, view, 2, 10, seen=s_seen)
                method.check_run(cfg)
            except UsageError as exc:
                archs = f"{cfg['teacher']['arch']} -> {cfg['student']['arch']}"
                raise UsageError(f"method {name}: {archs}: {exc}") from None
