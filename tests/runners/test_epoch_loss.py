"""The epoch's loss sums (kept on the device, synced on demand) and the non-finite loss check."""

import pytest
import torch

from lskd_bench.runners.epoch_loss import CellFailed, LossSums, NonFiniteWatch


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
    sums.add(torch.tensor(0.5), None, 4, logits, torch.tensor([0, 1, 1, 0]))  # rows 0 and 1 right
    assert sums.correct == 0.0  # on the device until synced
    sums.sync()
    assert sums.top1() == 50.0
    again = LossSums()
    again.load_state_dict(sums.state_dict())
    again.add(torch.tensor(0.5), None, 2, logits[:2], torch.tensor([0, 1]))
    again.sync()
    assert again.top1() == pytest.approx(100.0 * 4 / 6)
    again.reset()
    assert again.top1() is None and LossSums().top1() is None
