"""``lskd_bench.runners.scheduler``: dependency order, a failing cell recorded while the grid carries on."""

from __future__ import annotations

import json

import pytest

from lskd_bench import store
from lskd_bench.methods import METHODS, HintonKD, total_loss
from lskd_bench.runners.lock import LOCK

from ..fixtures import results_by_cell


# ------------------------------------------------------------------------------------------ failures
class NaNAtT2(HintonKD):
    """Hinton KD whose loss turns non-finite at T = 2: one failing cell in a healthy grid."""

    def loss(self, student_logits, targets, teacher_logits, ctx):
        loss = total_loss(super().loss(student_logits, targets, teacher_logits, ctx))
        return loss * float("nan") if ctx.T == 2.0 else loss


@pytest.fixture
def nan_method():
    METHODS.add("nan_at_t2", NaNAtT2)
    yield "nan_at_t2"
    METHODS._items.pop("nan_at_t2", None)


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_grid_carries_on(tmp_path, cli, nan_method):
    argv = [
        "run",
        "--out",
        str(tmp_path),
        "--alphas",
        "0.1",
        "--temperatures",
        "1,2",
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--methods",
        f"kd,{nan_method}",
        "--no-progress",
    ]
    rc, out, err = cli(*argv)
    assert rc == 1
    assert "6 cells: trained 5, reused 0 finished, 1 failed" in out
    assert f"failed: student_{nan_method}_cnn_tiny_a0.1_T2_s0: CellFailed: non-finite loss" in err
    assert "run the same command again to retry the failed cells" in err
    done = results_by_cell(tmp_path)
    assert f"student_{nan_method}_cnn_tiny_a0.1_T1_s0" in done and "student_kd_cnn_tiny_a0.1_T2_s0" in done
    (error_file,) = tmp_path.rglob(store.ERROR)
    err_json = json.loads(error_file.read_text())
    assert err_json["error"] == "CellFailed" and err_json["cell"]["T"] == 2.0 and err_json["epoch"] == 0
    assert not (error_file.parent / store.RESULT).exists() and not (error_file.parent / LOCK).exists()
    rc, out, _ = cli(*argv)  # a re-run retries only the failed cell (and it fails again)
    assert rc == 1 and "6 cells: trained 0, reused 5 finished, 1 failed" in out


def test_failed_teacher_blocks_only_its_students(tmp_path, cli):
    rc, out, err = cli(
        "run",
        "--out",
        str(tmp_path),
        "--alphas",
        "0.1",
        "--temperatures",
        "1,2",
        "--epochs",
        "2",
        "--seeds",
        "0",
        "--set",
        "teacher.lr=1e30",
        "--no-progress",
    )
    assert rc == 1
    assert "4 cells: trained 1, reused 0 finished, 1 failed, 2 not run (teacher failed)" in out
    assert "not run: student_kd_cnn_tiny_a0.1_T1_s0: its teacher teacher_cnn_wide_a0.1_s0 failed" in err
    assert list(results_by_cell(tmp_path)) == ["baseline_cnn_tiny_s0"]
