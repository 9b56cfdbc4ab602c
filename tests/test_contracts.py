"""Contracts every registered plugin keeps, parametrised over the registries (as timm tests every model of
``list_models()``): a method, task or executor added later is checked without editing this file."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lskd_bench.config import resolve_layers
from lskd_bench.methods import METHODS, LossContext, build_method, total_loss
from lskd_bench.metrics import MetricSpec
from lskd_bench.registry import EXECUTORS
from lskd_bench.runners.executors import Executor
from lskd_bench.runners.grid import resolve_config, run_grid
from lskd_bench.schema import Section
from lskd_bench.tasks import get_task, task_names

from .conftest import tiny_overrides

K = 7


@pytest.mark.parametrize("name", METHODS.names())
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


@pytest.mark.parametrize("name", EXECUTORS.names())
def test_executor_is_an_executor(name):
    cls = EXECUTORS.get(name)
    assert issubclass(cls, Executor) and cls.run is not Executor.run
    assert cls.config_section is None or isinstance(cls.config_section, Section)


def test_loss_terms_are_logged_per_epoch(tmp_path):
    """A method with named terms (kd: ce and kd) logs each term's epoch mean; their sum is the epoch's loss."""
    cfg = resolve_config("digits", {}, tiny_overrides(epochs=2, grid={"alphas": [0.1], "temperatures": [4.0]},
                                                      baseline=False, kd={"lambda": 0.5}))
    run_grid(cfg, tmp_path, progress=False)
    (res,) = [json.loads(p.read_text()) for p in tmp_path.rglob("result.json") if "student_" in p.parent.name]
    for h in res["history"]:
        assert h["loss_ce"] > 0 and h["loss_kd"] > 0
        assert h["loss_ce"] + h["loss_kd"] == pytest.approx(h["loss"], rel=1e-6)
    assert [m["name"] for m in res["metric_specs"]] == ["top1", "top5"] and res["metric_specs"][0]["higher_is_better"]
