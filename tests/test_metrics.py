import json

import pytest
import torch

from lskd_bench.errors import UsageError
from lskd_bench.metrics import METRICS, TOPK, Metric, MetricSpec, topk_accuracy, topk_correct
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config, run_grid
from lskd_bench.tasks import get_task

from .fixtures import tiny_overrides


def test_topk_known_case():
    logits = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.02, 0.0, 0.0],  # target 0: top1 hit
            [0.1, 0.5, 0.2, 0.1, 0.05, 0.05],  # target 2: 2nd -> top5 hit only
            [0.5, 0.2, 0.1, 0.09, 0.07, 0.04],  # target 5: last -> miss both
            [0.0, 0.0, 0.1, 0.2, 0.3, 0.4],  # target 5: top1 hit
        ]
    )
    y = torch.tensor([0, 2, 5, 5])
    assert topk_correct(logits, y) == {1: 2, 5: 3}
    assert topk_accuracy(logits, y) == {"top1": 50.0, "top5": 75.0}


def test_topk_with_fewer_classes_than_k():
    logits = torch.tensor([[0.2, 0.8, 0.0], [1.0, 0.0, 0.5]])
    y = torch.tensor([2, 2])
    assert topk_accuracy(logits, y) == {"top1": 0.0, "top5": 100.0}


# ------------------------------------------------------------------------------------------ the metric registry
class Evaluated(Metric):
    """How many samples an evaluation fed the metrics: every sample of the evaluated split, once."""

    spec = MetricSpec("evaluated", "samples evaluated", format=".0f", shown=False)

    def __init__(self):
        self.n = 0

    def update(self, logits, targets):
        assert logits.dtype == torch.float32 and logits.shape == (len(targets), 10)
        self.n += len(targets)

    def compute(self):
        return float(self.n)


@pytest.fixture
def evaluated(monkeypatch):
    """``Evaluated`` registered as a plugin's metric would be, for this test only."""
    METRICS.names()  # the registry loaded, then the plugin added
    monkeypatch.setitem(METRICS._items, "evaluated", Evaluated)


def test_built_in_metrics_are_registered_and_compute_top_k_over_batches():
    logits = torch.tensor([[0.9, 0.05, 0.03, 0.02, 0.0, 0.0], [0.1, 0.5, 0.2, 0.1, 0.05, 0.05]])
    more = torch.tensor([[0.5, 0.2, 0.1, 0.09, 0.07, 0.04], [0.0, 0.0, 0.1, 0.2, 0.3, 0.4]])
    top1, top5 = METRICS.get("top1")(), METRICS.get("top5")()
    for m in (top1, top5):  # the known case above, fed as two batches
        m.update(logits, torch.tensor([0, 2]))
        m.update(more, torch.tensor([5, 5]))
    assert (top1.compute(), top5.compute()) == (50.0, 75.0)
    assert METRICS.get("top1").spec == TOPK[0] and {"top1", "top5"} <= set(METRICS.names())


@pytest.mark.slow
def test_a_registered_metric_added_to_a_run_is_reported_and_leaves_every_hash(tmp_path, evaluated):
    """``metrics: [evaluated]`` on digits: result.json reports it (value: the test split's size) after the task's
    own metrics; the cells' hashes and folders are those of the same run without it."""
    over = tiny_overrides(grid={"alphas": [0.1], "temperatures": [4.0]}, baseline=False)
    plain = resolve_config("digits", {}, over)
    cfg = resolve_config("digits", {}, {**over, "metrics": ["evaluated"]})
    assert plain["metrics"] == [] and [c.hash for c in plan_cells(cfg)] == [c.hash for c in plan_cells(plain)]
    run_grid(cfg, tmp_path, progress=False)
    n_test = len(get_task("digits").load_data(cfg).test)
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.rglob("result.json"))]
    assert len(results) == 2 and {r["cell"]["hash"] for r in results} == {c.hash for c in plan_cells(plain)}
    for r in results:
        assert r["metrics"]["evaluated"] == n_test and r["best"]["metrics"]["evaluated"] == n_test
        assert r["metric_names"] == ["top1", "top5", "evaluated"]
        assert r["metric_specs"][2] == Evaluated.spec.as_dict() and 0 < r["metrics"]["top1"] <= 100


def test_registered_metrics_a_run_cannot_report_are_refused(evaluated):
    with pytest.raises(UsageError, match=r"unknown metric 'nope' \(known: evaluated, top1, top5"):
        resolve_config("digits", {}, {"metrics": ["nope"]})
    with pytest.raises(UsageError, match="metric 'top1' is already reported by task digits: drop it"):
        resolve_config("digits", {}, {"metrics": ["top1"]})
    with pytest.raises(UsageError, match=r"task iwslt_ende computes its own metrics \(bleu, chrf, bleu_tok\)"):
        get_task("iwslt_ende").registered_metrics({"metrics": ["evaluated"]})
    assert get_task("digits").reported_metrics({"metrics": ["evaluated", "evaluated"]}) == (*TOPK, Evaluated.spec)
