"""Every published pair runs every method: each registered KD method of the image tasks is set up (the
runner's ``Method.components`` from a probe of both models, its initialisation stage, ``build_optimizer``) and
stepped (forward, loss, backward, optimizer step; the initialisation stage's step too where it has one) on every
``cifar100`` pair (``configs/cifar100_pairs.yaml``) at 32 x 32, and on the ImageNet / CUB pairs (each image task's
recipe and ``--pair``s) at 64 x 64, batch 2 (the optimizer and the backward pass as the method's components make
them: DOT's; on the method's view of the batch: SSKD's rotations). The methods and pairs are read from the
registries, not listed here. A combination that cannot run is one that ``run`` (and ``--dry-run``) refuses with a
one-line reason: ``REFUSED`` lists those, and is empty for the CIFAR-100 pairs."""

from __future__ import annotations

import contextlib
import copy
import math
from functools import lru_cache

import pytest
import torch

from lskd_bench.components import Parts
from lskd_bench.config import resolve_layers
from lskd_bench.errors import UsageError
from lskd_bench.methods import METHODS, LossContext, Site, build_method, total_loss
from lskd_bench.models import resolve_arch
from lskd_bench.outputs import Outputs, Tap, describe, probe_outputs
from lskd_bench.runners.optim import build_optimizer
from lskd_bench.runners.probe import TeacherView, check_feature_methods, method_probe
from lskd_bench.tasks import TaskData, get_task

from ..fixtures import require

IMAGE_METHODS = [n for n, c in METHODS.items() if c.needs.needs_teacher and "classification" in c.task_kinds]
IMAGE_TASKS = ["imagenet", "cub200", "imagenet_compact", "cub200_compact"]
# (task, pair or "" for the recipe's, method) that run refuses, with its reason; none for the published pairs. The
# compact tasks' timm students (EfficientNet-B0, MobileNet-V2 1.0) end each stage in a BN inside timm's blocks:
# no activation module to find a pre-activation at, and no published number for them.
NO_PREACT = (
    r"method (ab|ofd): resnet50 -> \S+: ClassifierNet has no output 'preact_stage1' .*; its stage does not end in an "
    "activation module"
)
REFUSED: dict[tuple[str, str, str], str] = {
    (task, "", method): NO_PREACT for task in ("imagenet_compact", "cub200_compact") for method in ("ab", "ofd")
}
NUM_CLASSES, NUM_SAMPLES, BATCH = 10, 8, 2


def _cfg(task_name: str, pair: str | None, methods: list[str]) -> dict:
    """The run's config as ``resolve`` layers it (recipe, pair, command line), without the data-root checks."""
    t = get_task(task_name)
    layers = [(t.recipe_source(), t.default_config()), *([t.pair_layer(pair)] if pair else [])]
    cmd = {"task": task_name, "data": {"root": f"/data/{task_name}"}, "methods": methods}
    return resolve_layers(t, [*layers, ("command line", cmd)]).cfg


def _image_pairs() -> list[tuple[str, str | None]]:
    """(task, pair) of each distinct teacher -> student of the image tasks: every recipe's and every ``--pair``."""
    out, seen = [], set()
    for task in IMAGE_TASKS:
        for pair in [None, *get_task(task).pairs()]:
            cfg = _cfg(task, pair, ["kd"])
            archs = (cfg["teacher"]["arch"], cfg["student"]["arch"])
            if archs not in seen:
                seen.add(archs)
                out.append((task, pair))
    return out


CASES = [("cifar100", p, m) for p in get_task("cifar100").pairs() for m in IMAGE_METHODS] + [
    (t, p, m) for t, p in _image_pairs() for m in IMAGE_METHODS
]


@lru_cache(maxsize=1)
def _pair(task_name: str, pair: str | None):
    """The pair's teacher (eval) with its outputs on the probe batch for every method's needs (the fused group's
    teacher view), the freshly built student, and a batch."""
    cfg = _cfg(task_name, pair, IMAGE_METHODS)
    for role in ("teacher", "student"):
        if task_name != "cifar100" and resolve_arch(cfg[role]["arch"])[0] == "timm":
            require("timm", "the timm archs of the compact tasks")
    task = get_task(task_name)
    size = 32 if task_name == "cifar100" else 64
    stand_in = TaskData(train=[], val=[], num_classes=NUM_CLASSES, class_names=[str(i) for i in range(NUM_CLASSES)])
    torch.manual_seed(0)
    teacher = task.build_model(cfg["teacher"]["arch"], stand_in, cfg, cfg["teacher"]).eval()
    student = task.build_model(cfg["student"]["arch"], stand_in, cfg, cfg["student"])
    with torch.no_grad():  # BN statistics of a batch (an untrained deep teacher's (0, 1) ones blow up in eval mode)
        for m in teacher.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        teacher.train()(torch.randn(8, 3, size, size))
        teacher.eval()
    x = torch.randn(BATCH, 3, size, size)
    t_layout = describe(teacher, x)
    needs = [build_method(m, cfg).needs for m in IMAGE_METHODS]
    names = list(dict.fromkeys(k for n in needs for k in n.teacher if k != "logits"))
    names = [n for n in names if _has(teacher, t_layout, n)]
    view = TeacherView(teacher, t_layout, x, probe_outputs(teacher, t_layout, names, x))
    with torch.no_grad(), Tap(teacher, t_layout, names) as tap:  # the teacher's outputs on the training batch
        t_logits = teacher(x)
    t_out = Outputs({**tap.out, "logits": t_logits})
    return cfg, task, student, view, t_out, x, torch.arange(BATCH) % NUM_CLASSES


def _has(model, layout, name) -> bool:
    try:
        Tap(model, layout, [name])
    except UsageError:
        return False
    return True


def _on_view(method, view, x, y, t_out):
    """The batch and the teacher's outputs on the view the method trains on (``Method.train_view``: SSKD's four
    rotations of each image), as the member's forward and the group's teacher pass make them."""
    if method.batch_view is None:
        return x, y, t_out
    x, y = method.train_view((x, y))
    names = [k for k in t_out if k != "logits"]
    with torch.no_grad(), Tap(view.model, view.layout, names) as tap:
        t_logits = view.model(x)
    return x, y, Outputs({**tap.out, "logits": t_logits})


def _step(loss_fn, student, tap, x, y, t_out, ctx, opt, train_mode, parts=None) -> float:
    """One optimizer step as ``Member.train_step`` / ``Member._loss`` make it (the main schedule's backward through
    the method's ``parts``: DOT's two passes)."""
    train_mode(student)
    with tap or contextlib.nullcontext():
        logits = student(x)
    s_out = Outputs(logits=logits.float())
    if tap is not None:
        s_out.update({k: v.float() for k, v in tap.out.items()})
    terms = loss_fn(s_out, y, t_out, ctx)
    loss = total_loss(terms)
    opt.zero_grad(set_to_none=True)
    parts.backward(terms, loss) if parts is not None else loss.backward()
    opt.step()
    return float(loss.detach())


@pytest.mark.slow
@pytest.mark.parametrize("task_name, pair, name", CASES, ids=[f"{t}-{p or 'recipe'}-{m}" for t, p, m in CASES])
def test_every_method_steps_on_every_pair(task_name, pair, name):
    cfg, task, student0, view, t_out, x, y = _pair(task_name, pair)
    one = {**cfg, "methods": [name]}
    refused = REFUSED.get((task_name, pair or "", name))
    if refused is not None:
        with pytest.raises(UsageError, match=refused) as exc:
            check_feature_methods(task, one)
        assert "\n" not in str(exc.value)
        return
    student = copy.deepcopy(student0)
    torch.manual_seed(1)
    method = build_method(name, one)
    taps = []

    def probe():
        labels = torch.arange(NUM_SAMPLES) % NUM_CLASSES if method.needs.indices else None
        tap, probe = method_probe(method, student, view, NUM_SAMPLES, NUM_CLASSES, labels)
        taps.append(tap)
        return probe

    parts = Parts(method.components(Site(student, cfg["student"], torch.device("cpu"), probe)))
    tap = taps[0] if taps else None
    opt = parts.optimizer(build_optimizer([*student.parameters(), *parts.params()], cfg["student"]))
    cls = METHODS.get(name)
    ctx = LossContext(
        alpha=0.0,
        T=4.0 if cls.uses_temperature else None,
        epoch=1,
        epochs=2,
        indices=torch.arange(BATCH) if method.needs.indices else None,
    )
    x, y, t_out = _on_view(method, view, x, y, t_out)
    before = [p.detach().clone() for p in student.parameters()]
    stage = parts.stage(0)
    if stage is not None:  # the initialisation stage's step (AB, FT, FSP), as Member._loss runs it
        loss = _step(stage.loss, student, tap, x, y, t_out, ctx, stage.opt, stage.train_mode)
        assert math.isfinite(loss), f"{name} init stage: loss {loss}"
    loss = _step(method.compute, student, tap, x, y, t_out, ctx, opt, lambda m: m.train(), parts)
    assert math.isfinite(loss), f"{name}: loss {loss}"
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters())), "the student did not change"


def test_no_published_reference_for_a_refused_combination():
    """Every published number that ``compare`` may print (``kd_references``: mdistiller's, [S]'s and RepDistiller's
    rows) is of a method and pair this matrix steps, none of them refused (a refused cell never has results, and
    ``compare`` sets references beside cells that ran only)."""
    from lskd_bench.leaderboard.reference import kd_references

    stepped = {(t, p, m) for t, p, m in CASES}
    for ref in kd_references():
        base = ref.method.removesuffix("+kd")
        assert (ref.task, ref.pair, base) in stepped, ref
        assert (ref.task, ref.pair, base) not in REFUSED, ref
