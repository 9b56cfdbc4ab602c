"""A cell's checkpoint files: the last one, else the one before it, a damaged one moved aside with a note."""

import torch

from lskd_bench import store
from lskd_bench.runners.checkpoint import StateFiles


def test_save_keeps_the_previous_and_load_reads_the_last(tmp_path):
    notes: list[str] = []
    files = StateFiles(tmp_path, "cell", notes)
    assert files.load() is None and notes == []  # a new cell
    files.save({"epoch": 1, "step": 0})
    files.save({"epoch": 2, "step": 0})
    assert files.load() == {"epoch": 2, "step": 0} and notes == []
    assert torch.load(tmp_path / store.STATE_PREV, weights_only=True)["epoch"] == 1
    files.remove()
    assert not (tmp_path / store.STATE).exists() and not (tmp_path / store.STATE_PREV).exists()
    files.remove()  # nothing left to remove: no error


def test_a_damaged_checkpoint_is_moved_aside_and_the_previous_one_resumed(tmp_path):
    notes: list[str] = []
    files = StateFiles(tmp_path, "cell", notes)
    files.save({"epoch": 1, "step": 5})
    files.save({"epoch": 2, "step": 0})
    (tmp_path / store.STATE).write_bytes(b"not a checkpoint")
    assert files.load() == {"epoch": 1, "step": 5}
    assert len(notes) == 1 and notes[0].startswith("repaired: cell: state.pt is corrupt")
    assert "resumed from the previous checkpoint state.prev.pt (epoch 2, step 5)" in notes[0]
    assert [p.name for p in tmp_path.glob("state.pt.corrupt-*")]


def test_with_both_damaged_the_cell_restarts_from_scratch(tmp_path):
    notes: list[str] = []
    for name in (store.STATE, store.STATE_PREV):
        (tmp_path / name).write_bytes(b"garbage")
    assert StateFiles(tmp_path, "cell", notes).load() is None
    assert len(notes) == 1 and notes[0].endswith("the cell restarts from scratch")
    assert "state.pt is corrupt" in notes[0] and "state.prev.pt is corrupt" in notes[0]
