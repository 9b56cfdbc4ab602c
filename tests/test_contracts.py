"""Contracts every registered plugin keeps, parametrised over the registries (as timm tests every model of
``list_models()``): a method, task, metric or executor added later is checked without editing this file. The
example plugin package (examples/third_party_task: a task with its own recipe, and a metric) is loaded from
outside the package and checked by these same contracts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from lskd_bench import store
from lskd_bench.config import resolve_layers
from lskd_bench.methods import METHODS, FeatureMethod, LossContext, Probe, build_method, method_class, total_loss
from lskd_bench.metrics import METRICS, MetricSpec
from lskd_bench.outputs import Outputs, Tap, describe
from lskd_bench.registry import EXECUTORS
from lskd_bench.runners.executors import Executor
from lskd_bench.runners.grid import resolve_config, run_grid
from lskd_bench.schema import Section
from lskd_bench.tasks import get_task, task_names

from .fixtures import ROOT, example_site, tiny_overrides

K = 7


LOGIT_METHODS = [n for n in METHODS.names() if not issubclass(METHODS.get(n), FeatureMethod)]
FEATURE_METHODS = [n for n in METHODS.names() if issubclass(METHODS.get(n), FeatureMethod)]


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_method_loss_is_a_finite_differentiable_sum_of_its_terms(name):
    cls = METHODS.get(name)
    m = build_method(name, {name: {}})
    g = torch.Generator().manual_seed(0)
    s = torch.randn(12, K, generator=g, requires_grad=True)
    t = torch.randn(12, K, generator=g) if cls.teacher_signal == "logits" else None
    y = torch.randint(0, K, (12,), generator=g)
    out = m.loss(s, y, t, LossContext(T=2.0 if cls.uses_temperature else None, epoch=3, epochs=10))
    loss = total_loss(out)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    if isinstance(out, dict):  # named terms: the loss is exactly their sum
        assert out and all(isinstance(k, str) and v.ndim == 0 for k, v in out.items())
        assert loss.item() == pytest.approx(sum(v.item() for v in out.values()), rel=1e-6, abs=1e-7)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert cls.teacher_signal in (None, "logits", "targets") and cls.task_kinds
    assert isinstance(cls.params, Section) and cls.description
    if isinstance(m, nn.Module):  # its parameters are optimised with the student
        assert list(m.parameters())


def _pair(kind: str):
    from lskd_bench.cifar_models import build_cifar_model
    from lskd_bench.tasks.digits import ARCHS, cnn

    torch.manual_seed(0)
    if kind == "digits":  # unequal stage counts (3 vs 2) and widths
        return cnn(ARCHS["cnn_wide"], 10), cnn(ARCHS["cnn_tiny"], 10), torch.randn(6, 1, 8, 8), 10
    return build_cifar_model("resnet32x4", 100), build_cifar_model("resnet8x4", 100), torch.randn(6, 3, 32, 32), 100


def _outputs(model, layout, names, x, grad: bool) -> Outputs:
    with torch.set_grad_enabled(grad), Tap(model, layout, names) as tap:
        logits = model(x)
    return Outputs({**tap.out, "logits": logits})


@pytest.mark.parametrize("kind", ["digits", pytest.param("cifar", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", [*FEATURE_METHODS, *(f"{n}+kd" for n in FEATURE_METHODS)])
def test_feature_method_sets_up_from_a_probe_and_trains_the_student_and_its_parts(name, kind):
    """Every feature method (and its X+kd composition): built from a probe forward of a teacher and a student,
    its loss is a finite sum of its terms, and its gradient reaches the student and every part it trains."""
    cls = method_class(name)
    teacher, student, x, k = _pair(kind)
    teacher.eval()
    m = build_method(name, {name.partition("+")[0]: {}, "compose": {}})
    assert m.needs.needs_teacher and cls.description and "classification" in cls.task_kinds
    t_layout, s_layout = describe(teacher, x), describe(student, x)
    t_names = list(Tap(teacher, t_layout, m.needs.teacher).names)
    probe = Probe(
        student,
        teacher,
        _outputs(student, s_layout, m.needs.student, x[:2], False),
        _outputs(teacher, t_layout, t_names, x[:2], False),
        s_layout,
        t_layout,
        num_samples=50,
        num_classes=k,
    )
    m.setup(probe)
    y = torch.randint(0, k, (len(x),))
    x, y = m.train_view((x, y))  # the batch as the method trains on it (SSKD: each image and its rotations)
    t = _outputs(teacher, t_layout, t_names, x, False)
    student.train()
    s = _outputs(student, s_layout, m.needs.student, x, True)
    ctx = LossContext(
        T=4.0 if cls.uses_temperature else None,
        epoch=0,
        epochs=10,
        indices=torch.arange(len(x)) if m.needs.indices else None,
    )
    out = m.compute(s, y, t, ctx)
    loss = total_loss(out)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    if isinstance(out, dict):
        assert loss.item() == pytest.approx(sum(v.item() for v in out.values()), rel=1e-5, abs=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is never trained
    trained = [p for p in m.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained), [n for n, p in m.named_parameters() if p.grad is None]


@pytest.mark.parametrize("name", task_names())
def test_task_declares_its_metrics_and_its_recipe_resolves(name):
    task = get_task(name)
    assert task.metrics and all(isinstance(m, MetricSpec) for m in task.metrics)
    assert len(set(task.metric_names)) == len(task.metrics)
    assert task.primary_metric in task.metric_names and any(m.shown for m in task.metrics)
    res = resolve_layers(task, [(task.recipe_source(), task.default_config())])  # the schema accepts the recipe
    assert res.cfg["teacher"]["arch"] and res.cfg["student"]["arch"]
    for role in ("teacher", "student"):  # every key a role reads is there: code reads cfg[...]
        assert set(res.cfg[role]) == set(task.train_schema.fields)


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_is_named_as_registered_and_a_function_of_the_evaluated_split(name):
    """Every registered metric: its spec carries its registry name (a valid metric name), and its value over
    known logits is one finite number whatever the batches they come in."""
    cls = METRICS.get(name)
    assert cls.spec.name == name and store.metric_name(name) is None and isinstance(cls.spec, MetricSpec)
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(40, K, generator=g) * 3, torch.randint(0, K, (40,), generator=g)
    whole, parts = cls(), cls()
    whole.update(logits, y)
    for i in range(0, 40, 16):  # uneven batches
        parts.update(logits[i : i + 16], y[i : i + 16])
    value = whole.compute()
    assert isinstance(value, float) and math.isfinite(value)
    assert parts.compute() == pytest.approx(value, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", EXECUTORS.names())
def test_executor_is_an_executor(name):
    """Every executor starts units through the handle API: it (or the one ``for_config`` picks, for ``auto``)
    implements ``start``; the scheduling loop (``Executor.run``) is the base class's, never its own."""
    cls = EXECUTORS.get(name)
    assert issubclass(cls, Executor) and cls.run is Executor.run
    cfg = {"nproc_per_node": 1, "gpus": None, "per_gpu": 1, "device": "cpu", "jobs": None, "threads": None}
    chosen = type(cls.for_config(cfg)) if cls.for_config.__func__ is not Executor.for_config.__func__ else cls
    assert chosen.start is not Executor.start, f"{name}: no start(plan, unit, gpus)"
    assert cls.config_section is None or isinstance(cls.config_section, Section)


@pytest.mark.slow
def test_loss_terms_are_logged_per_epoch(tmp_path):
    """A method with named terms (kd: ce and kd) logs each term's epoch mean; their sum is the epoch's loss."""
    cfg = resolve_config(
        "digits",
        {},
        tiny_overrides(epochs=2, grid={"alphas": [0.1], "temperatures": [4.0]}, baseline=False, kd={"lambda": 0.5}),
    )
    run_grid(cfg, tmp_path, progress=False)
    (res,) = [json.loads(p.read_text()) for p in tmp_path.rglob("result.json") if "student_" in p.parent.name]
    for h in res["history"]:
        assert h["loss_ce"] > 0 and h["loss_kd"] > 0
        assert h["loss_ce"] + h["loss_kd"] == pytest.approx(h["loss"], rel=1e-6)
    assert [m["name"] for m in res["metric_specs"]] == ["top1", "top5"] and res["metric_specs"][0]["higher_is_better"]


EXAMPLE_ENTRY_POINTS = {
    "lskd_bench.tasks": "blobs = lskd_example_task:BlobsTask",
    "lskd_bench.metrics": "ece = lskd_example_task.calibration:ECE",
}


@pytest.mark.slow
def test_example_plugin_task_with_its_own_recipe_and_metric(tmp_path):
    """examples/third_party_task, made importable with a .dist-info entry-point file as pip install writes it: the
    contracts above pass for its task and metric; its recipe is read from its own package; a tiny grid reports the
    metric in result.json, ``compare --metric ece`` and the leaderboard."""
    env = example_site(tmp_path, "third_party_task", "lskd_example_task", EXAMPLE_ENTRY_POINTS)
    base = [sys.executable, "-m", "lskd_bench"]

    def cli(*args):
        p = subprocess.run([*base, *args], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        return p.stdout

    here = str(ROOT / "tests" / "test_contracts.py")
    p = subprocess.run(
        [sys.executable, "-m", "pytest", here, "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-k", "blobs or ece"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 0 and "2 passed" in p.stdout, p.stdout[-2000:]
    out = cli("config", "--task", "blobs")
    assert "recipe package lskd_example_task/blobs.yaml" in out and "mlp_tiny" in out
    runs = tmp_path / "runs"
    cli("run", "--task", "blobs", "--out", str(runs), "--alphas", "0.1", "--epochs", "2", "--no-progress")
    results = [json.loads(f.read_text()) for f in sorted(runs.rglob("result.json"))]
    assert len(results) == 3  # teacher, no-KD student, kd student (the recipe's one seed and T)
    for r in results:
        assert r["metric_names"] == ["top1", "top5", "ece"] and 0 <= r["metrics"]["ece"] <= 100
        assert r["metric_specs"][2]["higher_is_better"] is False and r["cell"]["task"] == "blobs"
        assert r["history"][-1]["epoch"] == 2 and r["run_config"]["teacher"]["arch"] == "mlp_wide"
    kd = next(r for r in results if r["cell"]["method"] == "kd")
    out = cli("compare", "--runs", str(runs), "--metric", "ece")
    assert "### blobs: methods vs kd (ece)" in out and f"{kd['best']['metrics']['ece']:.2f}" in out
    cli("leaderboard", "--runs", str(runs))
    header = (runs / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("top1") : header.index("top1") + 3] == ["top1", "top5", "ece"]
