"""runners/evaluation.py: the Evaluator's metrics on a tiny digits model against a direct computation, the selected
epoch's bookkeeping (its weights kept, the task's ``{which}`` files) and the evaluation's random stream."""

from __future__ import annotations

import torch
from torch import nn

from lskd_bench import store
from lskd_bench.runners.evaluation import Evaluator
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.rng import RngState
from lskd_bench.runners.selection import Selector
from lskd_bench.tasks import get_task
from lskd_bench.tasks.base import Evaluation

from ..fixtures import tiny_overrides

CPU = torch.device("cpu")


def test_metrics_of_a_tiny_digits_model_match_a_direct_computation(tmp_path):
    cfg = resolve_config("digits", {}, tiny_overrides())
    task = get_task("digits")
    data = task.load_data(cfg)
    torch.manual_seed(0)
    model = task.build_model("cnn_tiny", data, cfg, cfg["student"])
    selector = Selector.of(task.selection(cfg, cfg["student"]))
    metrics = Evaluator(task, data, cfg, cfg["student"], tmp_path, CPU, selector)(model, 1, RngState(CPU))

    x = torch.stack([s[0] for s in data.test])
    y = torch.stack([torch.as_tensor(s[1]) for s in data.test]).view(-1)
    with torch.no_grad():
        top5 = model.eval()(x).topk(5, dim=1).indices
    assert metrics["top1"] == 100.0 * (top5[:, 0] == y).sum().item() / len(y)
    assert metrics["top5"] == 100.0 * (top5 == y[:, None]).any(1).sum().item() / len(y)
    assert selector.selected == {"epoch": 1, "metrics": metrics, "score": metrics["top1"]}  # the first is selected


class Scripted:
    """A task whose evaluations give the next of ``scores`` (and draw one random number, in the member's stream)."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.draws = []

    def assess(self, model, data, cfg, device, hp):
        self.draws.append(torch.rand(1).item())
        score = self.scores.pop(0)
        return Evaluation({"acc": score}, outputs={"hyp.{which}.txt": [f"score {score}"], "log.txt": ["plain"]})


def test_selected_epoch_keeps_its_weights_and_selected_outputs(tmp_path):
    task, model = Scripted([1.0, 3.0, 2.0]), nn.Linear(2, 1)
    selector = Selector("acc", "max", "val")
    ev = Evaluator(task, None, {}, {}, tmp_path, CPU, selector)
    rng = RngState(CPU)
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(epoch)
        assert ev(model, epoch, rng) == {"acc": [1.0, 3.0, 2.0][epoch - 1]}
        kept = torch.load(tmp_path / store.SELECTED, weights_only=True)["weight"]
        assert kept.eq(2 if epoch == 3 else epoch).all()  # epoch 3 is worse than 2: the weights of 2 stay
        assert (tmp_path / "hyp.last.txt").read_text() == f"score {[1.0, 3.0, 2.0][epoch - 1]}\n"
        assert (tmp_path / "hyp.selected.txt").read_text() == f"score {3.0 if epoch > 1 else 1.0}\n"
        assert (tmp_path / "log.txt").read_text() == "plain\n"  # no {which}: one file
    assert selector.selected["epoch"] == 2 and selector.last_score is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hyp.last.txt",
        "hyp.selected.txt",
        "log.txt",
        store.SELECTED,
    ]


def test_evaluation_draws_in_the_member_stream_and_seconds_are_checkpointed(tmp_path):
    torch.manual_seed(1)
    rng = RngState(CPU)  # the member's stream starts where the process's stood at seed 1
    expected = torch.rand(2).tolist()
    torch.manual_seed(7)
    task, models = Scripted([1.0, 2.0]), (nn.Linear(1, 1), nn.Linear(1, 1))
    ev = Evaluator(task, None, {}, {}, tmp_path, CPU, Selector("acc", "max", "val"))
    outside = torch.get_rng_state()
    ev(models[0], 1, rng)
    ev(models[1], 2, rng)
    assert task.draws == expected
    assert torch.equal(torch.get_rng_state(), outside)  # the process's own stream is left as it was
    st = ev.state_dict()
    assert st.keys() == {"eval_seconds"} and st["eval_seconds"] > 0
    again = Evaluator(task, None, {}, {}, tmp_path, CPU, Selector("acc", "max", "val"))
    again.load_state_dict(st)
    assert again.seconds == st["eval_seconds"]
    again.load_state_dict({})  # a checkpoint from before it was kept
    assert again.seconds == 0.0
