"""runners/evaluation.py: the Evaluator's metrics on a tiny digits model against a direct computation, the same metrics
at any evaluation batch (digits, CIFAR) and the batch chosen per device, the selected epoch's bookkeeping (its weights
kept, the task's ``{which}`` files) and the evaluation's random stream."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lskd_bench import store
from lskd_bench.runners.evaluation import Evaluator
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.rng import RngState
from lskd_bench.runners.selection import Selector
from lskd_bench.tasks import InMemoryDataset, get_task
from lskd_bench.tasks.base import EVAL_BATCH_CUDA, Evaluation, eval_batch_size, largest_activation

from ..fixtures import make_cifar100, tiny_overrides

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


def _at_batches(task, data, cfg, model, batches):
    """{eval_batch_size: (metrics, loss)} of ``model`` at each of ``batches`` (None: the per-device default)."""
    return {b: task._classify(model, data, {**cfg, "eval_batch_size": b}, CPU) for b in batches}


@pytest.mark.parametrize("task_name", ["digits", "cifar100"])
def test_metrics_do_not_depend_on_the_evaluation_batch(tmp_path, task_name):
    """The mission: a cell's result may not depend on the evaluation batch (it is outside the hash). Top-1 and top-5
    are equal exactly at batches 7, the per-device default and the whole split; the loss within 1e-6 (a sample's
    logits differ only in float rounding between batch sizes: about 1e-7 on the CPU)."""
    if task_name == "digits":
        cfg = resolve_config("digits", {}, tiny_overrides())
        arch = "cnn_tiny"
    else:
        make_cifar100(tmp_path, per_class=(1, 1))
        cfg = resolve_config("cifar100", {}, {"data": {"root": str(tmp_path)}})
        arch = "resnet8x4"
    task = get_task(task_name)
    data = task.load_data(cfg)
    torch.manual_seed(0)
    model = task.build_model(arch, data, cfg, cfg["student"])
    n = len(data.test)
    got = _at_batches(task, data, cfg, model, [7, None, n])  # 7: a ragged last batch
    (metrics, loss) = got[n]
    assert 0 < metrics["top5"] < 100 and metrics["top1"] <= metrics["top5"]  # not a trivially constant model
    for b, (m, lo) in got.items():
        assert m == metrics, b
        assert lo == pytest.approx(loss, rel=1e-6), b


def test_evaluation_batch_is_chosen_per_device(tmp_path):
    """eval_batch_size null: 256 on CUDA; on the CPU the largest power of two from 16 to 256 whose largest activation
    stays within 8 MiB. A set value wins everywhere."""
    make_cifar100(tmp_path, per_class=(1, 1))
    cfg = resolve_config("cifar100", {}, {"data": {"root": str(tmp_path)}})
    data = get_task("cifar100").load_data(cfg)
    assert cfg["eval_batch_size"] is None  # the schema's default
    torch.manual_seed(0)
    model = get_task("cifar100").build_model("resnet8x4", data, cfg, cfg["student"])
    # resnet8x4's widest output: 64 channels of 32 x 32 floats a sample = 256 KiB; 8 MiB / 256 KiB = 32
    assert largest_activation(model, data.test, cfg, CPU) == 64 * 32 * 32 * 4
    assert eval_batch_size(model, data.test, cfg, CPU) == 32
    assert eval_batch_size(model, data.test, cfg, torch.device("cuda")) == EVAL_BATCH_CUDA == 256
    assert eval_batch_size(model, data.test, {**cfg, "eval_batch_size": 7}, CPU) == 7
    assert model.training  # the measurement leaves the model's mode as it was
    digits_cfg = resolve_config("digits", {}, tiny_overrides())
    digits = get_task("digits")
    small = digits.build_model("cnn_tiny", digits.load_data(digits_cfg), digits_cfg, digits_cfg["student"])
    assert eval_batch_size(small, digits.load_data(digits_cfg).test, digits_cfg, CPU) == 256  # 2 KiB a sample
    wide = nn.Conv2d(3, 1024, 1)  # 1024 channels of 32 x 32 floats = 4 MiB a sample: 2 would fit, the floor is 16
    assert eval_batch_size(wide, data.test, cfg, CPU) == 16
    empty = InMemoryDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))
    assert largest_activation(wide, empty, cfg, CPU) == 0 and eval_batch_size(wide, empty, cfg, CPU) == 256


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
