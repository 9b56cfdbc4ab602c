"""The selected epoch: one Selector for image tasks (primary metric on val) and translation (the task's score on
the valid split), its checkpoint state and what result.json records."""

import pytest

from lskd_bench.runners.selection import Selector
from lskd_bench.tasks import get_task


def test_image_tasks_select_on_the_primary_metric_of_val_keeping_the_first_of_equals():
    sel = Selector.of(get_task("digits").selection({}, {}))
    assert (sel.metric, sel.mode, sel.split) == ("top1", "max", "val")
    picks = [sel.update(e, {"top1": v, "top5": 99.0}, None) for e, v in ((1, 90.0), (2, 95.0), (3, 95.0), (4, 93.0))]
    assert picks == [True, True, False, False]
    assert sel.selected == {"epoch": 2, "metrics": {"top1": 95.0, "top5": 99.0}, "score": 95.0}
    assert sel.last_score is None  # the task gives no score of its own: no history "selection" entry


@pytest.mark.parametrize(
    "select_on, scores, epoch", [("valid_bleu", [20.0, 25.0, 22.0], 2), ("valid_loss", [3.0, 2.5, 2.7], 2)]
)
def test_translation_selects_on_the_task_score_not_the_test_metrics(select_on, scores, epoch):
    sel = Selector.of(get_task("iwslt_ende").selection({}, {"select_on": select_on}))
    assert (sel.metric, sel.split) == (select_on, "valid")
    for e, s in enumerate(scores, 1):
        sel.update(e, {"bleu": 30.0 - e}, s)  # the test BLEU falls: it must not decide
        assert sel.last_score == s
    assert sel.selected["epoch"] == epoch and sel.selected["score"] == scores[epoch - 1]
    rec = sel.record()
    assert (
        rec["split"] == "valid"
        and rec["metric"] == select_on
        and (rec["epoch"], rec["score"]) == (epoch, scores[epoch - 1])
    )


def test_state_round_trip_and_a_selection_stored_without_its_score():
    sel = Selector("top1", "max", "val")
    assert sel.record()["epoch"] is None and sel.state_dict() == {"best": None}
    sel.load_state_dict({"best": {"epoch": 3, "metrics": {"top1": 80.0}}})  # a checkpoint from before scores
    assert not sel.update(4, {"top1": 79.0}, None)  # compared with the stored metric
    assert sel.update(5, {"top1": 81.0}, None)
    again = Selector("top1", "max", "val")
    again.load_state_dict(sel.state_dict())
    assert again.selected == sel.selected == {"epoch": 5, "metrics": {"top1": 81.0}, "score": 81.0}
