"""The epoch's loss sums (kept on the device, synced on demand) and the non-finite loss check."""

import pytest
import torch

from lskd_bench.runners.epoch_loss import CellFailed, LossSums, NonFiniteWatch, hits


def test_sums_add_weighted_by_samples_and_resume_from_their_state():
    sums = LossSums()
    sums.add(torch.tensor(0.5), {"ce": torch.tensor(0.25), "kd": torch.tensor(0.25)}, 4)
    sums.add(torch.tensor(1.0), {"ce": torch.tensor(1.0)}, 2)
    assert sums.loss_sum == 0.0  # not synced yet: the host value is the last synced one
    sums.sync()
    assert sums.state_dict() == {"loss_sum": 4.0, "loss_count": 6, "term_sums": {"ce": 3.0, "kd": 1.0}}
    again = LossSums()
    again.load_state_dict(sums.state_dict())
    again.add(torch.tensor(2.0), {"kd": torch.tensor(1.0)}, 1)  # a resumed epoch goes on from the stored sums
    again.sync()
    assert again.state_dict() == {"loss_sum": 6.0, "loss_count": 7, "term_sums": {"ce": 3.0, "kd": 2.0}}
    again.reset()
    assert again.state_dict() == {"loss_sum": 0.0, "loss_count": 0, "term_sums": {}}


def test_a_non_finite_loss_fails_at_once_on_the_cpu():
    watch = NonFiniteWatch()
    watch.see(torch.tensor(1.0), epoch=0, update=0)
    watch.check(0)
    with pytest.raises(CellFailed, match=r"non-finite loss \(nan\) at epoch 3, update 8"):
        watch.see(torch.tensor(float("nan")), epoch=2, update=7)


def test_training_top1_counts_the_rows_whose_target_has_the_highest_logit_and_resumes():
    sums = LossSums()
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [1.0, 4.0]])
    assert hits(logits, torch.tensor([0, 1, 1, 0])).item() == 2  # rows 0 and 1 right
    sums.add(torch.tensor(0.5), None, 4, hits(logits, torch.tensor([0, 1, 1, 0])))
    assert sums.correct == 0.0  # on the device until synced
    sums.sync()
    assert sums.top1() == 50.0
    again = LossSums()
    again.load_state_dict(sums.state_dict())
    again.add(torch.tensor(0.5), None, 2, hits(logits[:2], torch.tensor([0, 1])))
    again.sync()
    assert again.top1() == pytest.approx(100.0 * 4 / 6)
    again.reset()
    assert again.top1() is None and LossSums().top1() is None


@pytest.mark.slow
def test_training_top1_and_eval_loss_are_in_the_history_and_survive_a_resume_mid_epoch(tmp_path):
    """A cell interrupted within its second epoch and resumed writes the history of one uninterrupted run, the
    training top-1 and the evaluation loss included."""
    from lskd_bench import store
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import train_cell
    from lskd_bench.tasks import get_task

    from ..fixtures import tiny_overrides

    cfg = resolve_config("digits", {}, tiny_overrides(epochs=2, teacher={"epochs": 2, "checkpoint_every": 2}))
    task = get_task("digits")
    data = task.load_data(cfg)
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    ref = train_cell(task, teacher, cfg, data, tmp_path / "ref", progress=False)

    def stop_in_epoch_two(epoch, i):
        if epoch == 1 and i == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cell(task, teacher, cfg, data, tmp_path / "cut", progress=False, on_step=stop_in_epoch_two)
    state = torch.load(tmp_path / "cut" / store.STATE, weights_only=False)
    assert state["position"]["epoch"] == 1 and state["position"]["step"] > 0
    assert state["parts"]["losses"]["train_counted"] > 0  # within the epoch
    resumed = train_cell(task, teacher, cfg, data, tmp_path / "cut", progress=False)
    assert [h["train_top1"] for h in resumed["history"]] == [h["train_top1"] for h in ref["history"]]
    assert [h["eval_loss"] for h in resumed["history"]] == [h["eval_loss"] for h in ref["history"]]
    assert all(0.0 < h["train_top1"] <= 100.0 and h["eval_loss"] > 0.0 for h in ref["history"])
